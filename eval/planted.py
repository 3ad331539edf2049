"""Study 2: planted differences and correlations.

The fortunes about computers and about people are split (seeded, stratified) into halves A
and B. A fixed closing phrase is appended to a random share of A's documents, chosen among
A's computers fortunes only, so the topic "computers" is the trigger of the phrase (as in the
paper's "I hope it is correct", which followed maths questions). For each rate: where does
the phrase latent rank in the diff of A (planted) vs B, and does NPMI over A's documents tie
it to the computers latents (the trigger) rather than to the people latents?
"""

from __future__ import annotations

import random
import time

import numpy as np

from eval.common import pyplot, sae_id, savefig
from eval.config import EvalConfig
from eval.corpora import ensure_store, sae_key, subset_rows
from eval.metrics import permutation_p, phrase_latents, planted_rank
from eval.report import StudyResult, Table, fmt

PHRASE = "I hope it is correct."
TRIGGER, OTHER = "computers", "people"
MIN_SHARE = 0.5
"""A latent fires on the phrase when its peak token is inside it in this share of the
planted documents."""
MIN_INDUCED = 0.8
"""A phrase latent fires in at least this share more of the planted copies than of their
originals (latents that peak at a text's last tokens anyway are not phrase latents)."""
LINK_ALPHA = 0.05
"""NPMI "links" the phrase latent to the trigger when its mean NPMI with the computers
latents is positive and exceeds its mean NPMI with the people latents by more than a random
regrouping of those latents does: one-sided permutation p below this."""
LINK_PERMUTATIONS = 10_000
"""Random regroupings of the computers and people latents in the link's permutation test."""
TRIGGER_LATENTS = 10
"""Computers latents: the top of diff(B's computers fortunes, B's people fortunes)."""
NPMI_MIN_COUNT = 5
"""Partners ranked by NPMI must co-fire with the phrase latent in this many documents (rare
latents that co-fire once or twice get extreme NPMI by chance)."""

NPMI_DOCS_SQL = """
WITH nd_docs AS (SELECT unnest($docs::BIGINT[]) AS doc_id),
nd_fired AS (
    SELECT dl.doc_id, dl.latent_id FROM doc_latents dl
    SEMI JOIN nd_docs d ON d.doc_id = dl.doc_id
    WHERE dl.sae_id = $sae
),
nd_counts AS (SELECT latent_id, count(*) AS n FROM nd_fired GROUP BY latent_id),
nd_target AS (SELECT doc_id FROM nd_fired WHERE latent_id = $target),
nd_pairs AS (
    SELECT f.latent_id, count(*) AS n_both FROM nd_fired f
    SEMI JOIN nd_target t ON t.doc_id = f.doc_id
    WHERE f.latent_id <> $target GROUP BY f.latent_id HAVING count(*) >= $min_count
)
SELECT p.latent_id, p.n_both, c.n,
       npmi_score(p.n_both, (SELECT n FROM nd_counts WHERE latent_id = $target), c.n,
                  (SELECT count(*) FROM nd_docs)) AS npmi
FROM nd_pairs p JOIN nd_counts c USING (latent_id)
ORDER BY npmi DESC, p.latent_id
"""
"""NPMI of one target latent with every other latent over a list of documents: the formula
and definitions of ``npmi_targets`` (shared ``npmi_score``), on a document list instead of
datasets, since the planted sets are document lists, not datasets."""


def split_pool(cfg: EvalConfig) -> tuple[list[dict], list[dict]]:
    """Halves A and B, each holding half of each subset's sample (seeded)."""
    a, b = [], []
    for name in (TRIGGER, OTHER):
        rows = subset_rows("fortunes", name, cfg)
        random.Random(f"{cfg.seed}:split:{name}").shuffle(rows)
        half = len(rows) // 2
        a += rows[:half]
        b += rows[half:]
    return a, b


def planted_copy(row: dict) -> dict:
    return {**row, "id": row["id"] + "+phrase", "text": f"{row['text']} {PHRASE}"}


def run(cfg: EvalConfig) -> StudyResult:
    t0 = time.perf_counter()
    import saedb

    a_rows, b_rows = split_pool(cfg)
    candidates = [r for r in a_rows if r["subset"] == TRIGGER]
    random.Random(f"{cfg.seed}:plant").shuffle(candidates)
    key = f"planted-n{cfg.per_subset}-sae{sae_key()}"
    path = ensure_store(
        key,
        {
            "A": lambda: a_rows,
            "B": lambda: b_rows,
            "A+phrase": lambda: [planted_copy(r) for r in candidates],
        },
        cfg,
        label=False,
    )
    table = Table(
        f'"{PHRASE}" appended to a share of half A (computers fortunes only): rank of the '
        "phrase latent in diff(A, B), and its NPMI with computers vs people latents over A",
        [
            "rate",
            "planted docs",
            "best phrase latent",
            "its rank in diff",
            "freq A",
            "freq B",
            "q",
            "NPMI with computers latents (mean)",
            "NPMI with people latents (mean)",
            "best computers latent: NPMI rank",
            "permutation p (computers > people)",
            "linked",
        ],
    )
    points = []
    with saedb.open(path, read_only=True) as store:
        sid = sae_id(store)
        ids = {
            (ds, ext): int(doc)
            for doc, ds, ext in store.con.execute(
                "SELECT d.doc_id, ds.name, d.external_id FROM documents d "
                "JOIN datasets ds USING (dataset_id)"
            ).fetchall()
        }
        a_ids = [ids["A", r["id"]] for r in a_rows]
        b_ids = [ids["B", r["id"]] for r in b_rows]
        planted_ids = {r["id"]: ids["A+phrase", r["id"] + "+phrase"] for r in candidates}
        starts = {planted_ids[r["id"]]: len(r["text"]) + 1 for r in candidates}
        peaks = store.con.execute(
            "SELECT doc_id, latent_id, max_char_start, max_char_end FROM doc_latents "
            "WHERE sae_id = ? AND list_contains(?, doc_id)",
            [sid, list(starts)],
        ).fetchall()
        on_phrase = phrase_latents(peaks, starts, MIN_SHARE)
        # Phrase latents: peaking in the phrase, and made to fire by it (much more frequent in
        # the planted copies than in their own originals).
        paired = {
            int(r[0]): (float(r[1]), float(r[2]))
            for r in store.con.execute(
                "SELECT latent_id, freq_a, freq_b FROM diff_doc_sets(?, ?, sae := ?)",
                [list(planted_ids.values()), [ids["A", r["id"]] for r in candidates], sid],
            ).fetchall()
        }
        induced = {
            lat: share
            for lat, share in on_phrase.items()
            if paired[lat][0] - paired[lat][1] >= MIN_INDUCED
        }
        if not induced:
            raise RuntimeError("no latent fires on the planted phrase: nothing to rank")

        def peak_tokens(lat: int) -> str:
            rows = store.con.execute(
                "SELECT lower(trim(substring(d.text, l.max_char_start + 1, "
                "l.max_char_end - l.max_char_start))) AS tok, count(*) AS n "
                "FROM doc_latents l JOIN documents d USING (doc_id) "
                "WHERE l.sae_id = ? AND l.latent_id = ? AND list_contains(?, l.doc_id) "
                "GROUP BY ALL ORDER BY n DESC, tok LIMIT 2",
                [sid, lat, list(starts)],
            ).fetchall()
            return ", ".join(f"{t!r}x{c}" for t, c in rows)

        b_comp = [ids["B", r["id"]] for r in b_rows if r["subset"] == TRIGGER]
        b_other = [ids["B", r["id"]] for r in b_rows if r["subset"] == OTHER]

        def top_latents(x: list[int], y: list[int]) -> list[int]:
            return [
                int(v)
                for (v,) in store.con.execute(
                    "SELECT latent_id FROM diff_doc_sets(?, ?, sae := ?) WHERE q_value < 0.05 "
                    "ORDER BY difference DESC, latent_id LIMIT ?",
                    [x, y, sid, TRIGGER_LATENTS],
                ).fetchall()
            ]

        trig, other = top_latents(b_comp, b_other), top_latents(b_other, b_comp)
        for rate in (0.0, *cfg.rates):
            n = min(round(rate * len(a_ids)), len(candidates))
            chosen = {ids["A", r["id"]]: planted_ids[r["id"]] for r in candidates[:n]}
            a_set = [chosen.get(d, d) for d in a_ids]
            diff = store.con.execute(
                "SELECT latent_id, freq_a, freq_b, q_value FROM diff_doc_sets(?, ?, sae := ?) "
                "ORDER BY difference DESC, latent_id",
                [a_set, b_ids, sid],
            ).fetchall()
            rank, phrase_lat = planted_rank([r[0] for r in diff], induced)
            row = next((r for r in diff if r[0] == phrase_lat), None)
            partners = store.con.execute(
                NPMI_DOCS_SQL,
                {"docs": a_set, "sae": sid, "target": phrase_lat, "min_count": 1},
            ).fetchall()
            npmi_of = {int(r[0]): float(r[3]) for r in partners}
            # a latent that never fired together with the phrase latent counts as NPMI -1
            v_trig = [npmi_of.get(t, -1.0) for t in trig]
            v_other = [npmi_of.get(t, -1.0) for t in other]
            m_trig = float(np.mean(v_trig)) if trig else None
            m_other = float(np.mean(v_other)) if other else None
            p_link = (
                permutation_p(v_trig, v_other, LINK_PERMUTATIONS, cfg.seed)
                if trig and other
                else None
            )
            frequent = [r for r in partners if r[1] >= NPMI_MIN_COUNT]
            trig_rank = next(
                (i for i, r in enumerate(frequent, start=1) if int(r[0]) in trig), None
            )
            linked = bool(p_link is not None and m_trig > 0 and p_link < LINK_ALPHA)
            table.rows.append(
                [
                    f"{rate:.0%}" if rate else "0% (control)",
                    n,
                    phrase_lat,
                    rank or "absent",
                    float(row[1]) if row else None,
                    float(row[2]) if row else None,
                    float(row[3]) if row else None,
                    m_trig,
                    m_other,
                    f"{trig_rank} of {len(frequent)}" if trig_rank else "—",
                    p_link,
                    linked,
                ]
            )
            if rate:
                points.append((rate, rank or None, m_trig, m_other))
        phrase_table = Table(
            f"Phrase latents: peak inside the phrase in >= {MIN_SHARE:.0%} of the planted copies "
            f"and fire in >= {MIN_INDUCED:.0%} more copies than originals: {len(induced)} "
            f"latents ({len(on_phrase)} pass the first test alone); the 10 most induced",
            [
                "latent",
                "peaks in the phrase (share of copies)",
                "freq in planted copies",
                "freq in their originals",
                "top peak tokens in copies",
            ],
            [
                [lat, share, paired[lat][0], paired[lat][1], peak_tokens(lat)]
                for lat, share in sorted(
                    induced.items(), key=lambda x: (paired[x[0]][1] - paired[x[0]][0], x[0])
                )[:10]
            ],
        )

    rows = [r for r in table.rows if "control" not in str(r[0])]
    top1 = [r[0] for r in rows if r[3] == 1]
    linked_at = [r[0] for r in rows if r[11]]
    control = table.rows[0]
    first = rows[0]
    findings = (
        (
            f"The phrase latent is the top difference at rates {', '.join(top1)}"
            if top1
            else "The phrase latent is never the top difference"
        )
        + f"; at the lowest rate ({first[0]}, {first[1]} documents) it ranks "
        + (f"#{first[3]}" if isinstance(first[3], int) else "nowhere")
        + (f" with q = {first[6]:.2g}" if first[6] is not None else "")
        + (
            " (not significant: a handful of documents is within the noise between two halves)"
            if first[6] is not None and first[6] >= 0.05
            else ""
        )
        + (
            f", against #{control[3]} in the unplanted control"
            if isinstance(control[3], int)
            else ""
        )
        + ". NPMI links the phrase to its trigger (mean NPMI with the computers latents "
        f"positive, and above that with the people latents at permutation p < {LINK_ALPHA}) "
        "at "
        + (f"rates {', '.join(linked_at)}" if linked_at else "no rate")
        + f" (control without planting: {fmt(control[7])} vs {fmt(control[8])}, p = "
        f"{fmt(control[10])}"
        + (", linked: a false link" if control[11] else ", not linked")
        + "). NPMI over a handful of co-occurrences is noisy, so the link needs enough "
        "planted documents to show."
    )

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = [p[0] * 100 for p in points]
    ranks = [p[1] if p[1] else float("nan") for p in points]
    ax1.plot(xs, ranks, "o-")
    for ax in (ax1, ax2):  # limits set, not autoscaled: a line of NaNs has none to log-scale
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    if any(r == r for r in ranks):
        ax1.set_yscale("log")
        ax1.invert_yaxis()
    else:
        ax1.text(
            0.5, 0.5, "absent from the diff at every rate", ha="center", transform=ax1.transAxes
        )
    ax1.set_xlabel("planting rate (% of half A)")
    ax1.set_ylabel("rank in diff(A, B) (1 = top)")
    ax1.set_title("Planted phrase: rank of its latent")
    for label, idx, style in (
        ("computers latents (trigger)", 2, "s-"),
        ("people latents", 3, "^-"),
    ):
        ax2.plot(
            xs, [p[idx] if p[idx] is not None else float("nan") for p in points], style, label=label
        )
    if not (trig and other):
        ax2.text(
            0.5,
            0.5,
            "no computers or people latents\n(q < 0.05) to compare",
            ha="center",
            transform=ax2.transAxes,
        )
    ax2.axhline(0, color="grey", linewidth=0.5)
    ax2.set_ylim(-1.05, 1)
    ax2.set_xlabel("planting rate (% of half A)")
    ax2.set_ylabel("mean NPMI with the phrase latent")
    ax2.set_title("Correlation with the trigger")
    ax2.legend(fontsize=7)
    plot = savefig(fig, cfg.img_dir / "eval_planted.png")

    method = f"""
The {TRIGGER} and {OTHER} fortune samples ({cfg.per_subset} each) are split, each in half
(seeded), into A ({len(a_rows)} documents) and B ({len(b_rows)}). Copies of A's
{len(candidates)} {TRIGGER} fortunes with `" {PHRASE}"` appended are ingested once (dataset
`A+phrase`); at rate r, round(r x {len(a_rows)}) of them (a seeded random order, nested:
the documents planted at 5% include those planted at 1%) replace their originals in A. The
phrase goes only into {TRIGGER} fortunes: the topic is the trigger. Everything runs in SQL on
document lists (`diff_doc_sets`, and NPMI with the shared `npmi_score` macro).

- *Phrase latents* (found once, from all copies): latents whose peak token
  (`max_char_start`) falls inside the appended phrase in at least {MIN_SHARE:.0%} of the
  planted copies and that fire in at least {MIN_INDUCED:.0%} more of the copies than of their
  own originals (`diff_doc_sets(copies, originals)`). The second test matters: many latents
  peak at whatever a text's last tokens are, so "peaks in the phrase" alone picks up latents
  that fire everywhere.
- *Rank in diff*: `diff_doc_sets(A planted, B)` ordered by difference, largest first (1 =
  the top difference); the best-ranked phrase latent, its frequencies and BH q-value. The
  0% row is the control: A unplanted.
- *Computers / people latents*: the top {TRIGGER_LATENTS} latents (q < 0.05) of
  `diff_doc_sets(B's {TRIGGER}, B's {OTHER})` and of the reverse, found on clean data
  (computers: {", ".join(str(t) for t in trig)}; people: {", ".join(str(t) for t in other)}).
- *NPMI*: over A's documents at that rate, the NPMI of the phrase latent with each of those
  latents (-1 for a latent that never fired together with it), averaged per group. "Linked"
  when both hold: the computers mean is positive (the phrase latent fires with the trigger's
  latents more often than if they were independent), and it is above the people mean by more
  than chance: a one-sided permutation test that regroups the {len(trig) + len(other)} NPMI
  values at random into groups of {len(trig)} and {len(other)} ({LINK_PERMUTATIONS:,} seeded
  regroupings, or all of them when fewer) gives p < {LINK_ALPHA}. A permutation test rather
  than a fixed margin: how far apart two groups' mean NPMI lie by chance depends on how many
  documents the latents fire in, which changes with the sample size and the rate, so no
  fixed number means "clearly above" at every rate; the 0% control shows whether the rule
  calls links where there are none. "NPMI rank": the place of
  the best computers latent among all latents co-firing with the phrase latent in at least
  {NPMI_MIN_COUNT} documents, by NPMI.
"""
    return StudyResult(
        "planted",
        "2. Planted differences and correlations",
        method,
        [table, phrase_table],
        [plot],
        findings=findings,
        seconds=time.perf_counter() - t0,
    )
