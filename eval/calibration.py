"""Study 3: calibration under the null.

Two random halves of one subset come from the same distribution, so any latent ``diff``
calls significant is a false discovery. For each subset of each corpus and each of
``null_splits`` seeded splits, run ``diff_doc_sets(half 1, half 2)`` and count the latents
with q < 0.05 (and p < 0.05, for the uncorrected test).
"""

from __future__ import annotations

import random
import time

import numpy as np

from eval.common import load_docs, pyplot, sae_id, savefig
from eval.config import EvalConfig
from eval.corpora import corpus_store
from eval.report import StudyResult, Table
from eval.truth import CORPORA


def run(cfg: EvalConfig) -> StudyResult:
    t0 = time.perf_counter()
    import saedb

    table = Table(
        f"Random halves of one subset, {cfg.null_splits} splits each: latents called "
        "significant (all are false discoveries)",
        [
            "subset",
            "docs",
            "latents tested (mean)",
            "share q<0.05 mean",
            "share q<0.05 max",
            "splits with any q<0.05",
            "share p<0.05 mean",
        ],
    )
    per_subset: dict[str, list[float]] = {}
    all_p: list[float] = []
    all_q_share: list[float] = []
    all_n: list[int] = []
    for corpus, subsets in CORPORA.items():
        path = corpus_store(corpus, cfg)
        with saedb.open(path, read_only=True) as store:
            sid = sae_id(store)
            for s in subsets:
                ids = [d.doc_id for d in load_docs(store, [s.name])]
                rng = random.Random(f"{cfg.seed}:null:{s.name}")
                q_share, p_share, tested, any_q = [], [], [], 0
                for _ in range(cfg.null_splits):
                    perm = ids[:]
                    rng.shuffle(perm)
                    half = len(perm) // 2
                    rows = store.con.execute(
                        "SELECT p_value, q_value, n_a + n_b FROM diff_doc_sets(?, ?, sae := ?)",
                        [perm[:half], perm[half : 2 * half], sid],
                    ).fetchall()
                    p = np.array([r[0] for r in rows], dtype=float)
                    q = np.array([r[1] for r in rows], dtype=float)
                    tested.append(len(rows))
                    q_share.append(float((q < 0.05).mean()) if len(q) else 0.0)
                    p_share.append(float((p < 0.05).mean()) if len(p) else 0.0)
                    any_q += bool((q < 0.05).any())
                    all_p += p.tolist()
                    all_n.extend(int(r[2]) for r in rows)
                per_subset[f"{corpus}:{s.name}"] = q_share
                all_q_share += q_share
                table.rows.append(
                    [
                        f"{corpus}:{s.name}",
                        len(ids),
                        float(np.mean(tested)),
                        float(np.mean(q_share)),
                        float(np.max(q_share)),
                        f"{any_q}/{cfg.null_splits}",
                        float(np.mean(p_share)),
                    ]
                )
    overall = Table(
        "All subsets together",
        ["splits", "share q<0.05 mean", "share q<0.05 max", "meets <= 5%"],
        [
            [
                len(all_q_share),
                float(np.mean(all_q_share)),
                float(np.max(all_q_share)),
                bool(np.max(all_q_share) <= 0.05),
            ]
        ],
    )

    worst = max(per_subset, key=lambda n: max(per_subset[n]))
    findings = (
        f"Over {len(all_q_share)} null splits the share of latents with q < 0.05 averages "
        f"{np.mean(all_q_share):.2%} and peaks at {np.max(all_q_share):.2%} ({worst}); "
        + (
            "the 5% limit holds in every split."
            if np.max(all_q_share) <= 0.05
            else "the 5% limit is exceeded, so diff's q-values are not trustworthy at this "
            "sample size."
        )
        + " The pooled p-values are "
        + (
            "conservative (fewer small p-values than uniform): "
            if np.mean(np.array(all_p) < 0.05) < 0.05
            else "at or above the nominal rate: "
        )
        + f"{np.mean(np.array(all_p) < 0.05):.2%} of them are below 0.05. "
        f"{np.mean(np.array(all_n) < 10):.0%} of the tested latents fired in fewer than 10 "
        f"documents of the split (median {np.median(all_n):.0f}); there the two-proportion "
        "z-test cannot reach small p-values, which makes it conservative for rare latents."
    )

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    names = list(per_subset)
    for i, n in enumerate(names):
        ax1.plot([i] * len(per_subset[n]), per_subset[n], "o", alpha=0.5, color="C0")
    ax1.axhline(0.05, color="C3", linestyle="--", label="5% limit")
    ax1.set_xticks(range(len(names)), [n.split(":")[1] for n in names], rotation=60, fontsize=7)
    ax1.set_ylabel("share of latents with q < 0.05")
    ax1.set_title("Null splits: false discoveries per split")
    ax1.legend(fontsize=8)
    ax2.hist(all_p, bins=20, range=(0, 1), color="C1")
    ax2.set_xlabel("p-value (all latents, all null splits)")
    ax2.set_title("p-values under the null")
    plot = savefig(fig, cfg.img_dir / "eval_calibration.png")

    method = f"""
For every subset of the three corpora ({cfg.per_subset} sampled documents each), the documents
are shuffled (seeded) and cut into two halves {cfg.null_splits} times; each split runs
`diff_doc_sets(half 1, half 2)` in SQL (all latents that fired in either half are tested,
`min_freq` 0). A latent with q < 0.05 (Benjamini-Hochberg) is a false discovery. The share of
tested latents with q < 0.05 must stay at or below 5%; "splits with any" counts the splits
with at least one (under a complete null, BH keeps that below 5% of splits in expectation).
The histogram pools the raw p-values of all splits: a calibrated test gives a flat histogram,
or one that is lower on the left for a conservative one (many latents fire in a handful of
documents, where the z-test's p-values are discrete and rarely small).
"""
    return StudyResult(
        "calibration",
        "3. Calibration under the null",
        method,
        [table, overall],
        [plot],
        findings=findings,
        seconds=time.perf_counter() - t0,
    )
