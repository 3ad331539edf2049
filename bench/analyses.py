"""Speed and memory of saedb's analyses against the straightforward numpy/scipy code (issue 3).

    python bench/analyses.py [--docs 100000,1000000] [--per-doc 200] [--latents 16384]
                             [--datasets 4] [--zipf 1.0] [--seed 0] [--repeat 3]
                             [--min-count 5] [--full-npmi-max 100000] [--mem-cap-gb 14]
                             [--keep DIR [--reuse]] [--analyses diff,retrieve,...]

For each size in ``--docs`` it builds a synthetic store with ``bench/synthetic.py`` (Zipf-like
latent popularity, ~``--per-doc`` latents per document, 4 datasets, positive max_act,
doc_latents in the latent-clustered order ``Store.optimize()`` leaves, latent_counts
recomputed as ``optimize`` does) and measures, each in a
fresh Python process (its peak memory is that process's VmHWM; ``ru_maxrss`` would carry
over the parent's peak through fork + exec), saedb's SQL and the
same computation in numpy/scipy:

  diff         ``diff('d1', 'd2')`` | counts per latent per dataset, pooled z-test, BH
  npmi_targets ``npmi_targets`` of 100 latents | ``X[:, targets].T @ X`` and NPMI
  full NPMI    ``refresh_cooccurrence(min_count)`` | ``X.T @ X``, upper triangle, NPMI
               (only for sizes up to ``--full-npmi-max``; the refresh also writes its pairs
               into the store, the scipy code keeps them in memory)
  retrieve     ``retrieve`` top 100 for 10 weighted latents | scores by bincount, top 100
  doc_vectors  ``doc_vectors`` of 50 latents | a documents x 50 CSR matrix

The baselines load what they need from the store first and that time is reported apart
("load"): the dataset-wide ones (diff, npmi_targets, full NPMI) the whole binary document x
latent matrix as scipy CSR (the fired cells via DuckDB ``fetchnumpy``), the per-latent ones
(retrieve, doc_vectors) only the rows of the listed latents. SQL results are fetched whole as
Arrow. Times are the median of ``--repeat`` runs in the process (one run for full NPMI);
memory is the process's peak, Python, duckdb, numpy and scipy included (the "imports only"
row is that floor). A process whose memory passes ``--mem-cap-gb`` is killed and reported as
aborted. The results of the two sides are compared (same latents, counts, top documents...)
and a line per size says whether they agree. The latents asked about are drawn at random
with log-uniform popularity rank, so frequent and rare latents both appear.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import build_bulk_store  # noqa: E402

SLOW_S = 10.0
"""A run slower than this is not repeated."""

ANALYSES = ("diff", "npmi_targets", "full_npmi", "retrieve", "doc_vectors")


# -- the measured code (runs in a child process) ----------------------------------------------


def _open(spec: dict, read_only: bool = True):
    import saedb

    store = saedb.open(spec["store"], read_only=read_only)
    store.con.execute("SET enable_progress_bar = false")
    return store


def _load_binary_csr(con: duckdb.DuckDBPyConnection, n_latents: int):
    """The encoded documents (sorted doc_ids) and the binary document x latent CSR matrix."""
    from scipy import sparse

    doc_ids = con.sql("SELECT doc_id FROM doc_encodings WHERE sae_id = 1 ORDER BY doc_id")
    doc_ids = doc_ids.fetchnumpy()["doc_id"]
    fired = con.sql(
        "SELECT doc_id, latent_id FROM doc_latents WHERE sae_id = 1 AND max_act > 0"
    ).fetchnumpy()
    rows = np.searchsorted(doc_ids, fired["doc_id"]).astype(np.int32)
    cols = np.asarray(fired["latent_id"], dtype=np.int32)
    del fired
    x = sparse.csr_matrix(
        (np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(doc_ids.size, n_latents)
    )
    return doc_ids, x


def _npmi(both, n_i, n_j, n_docs):
    both = both.astype(np.float64)
    log_n = np.log(n_docs)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (np.log(both) + log_n - np.log(n_i) - np.log(n_j)) / (log_n - np.log(both))
    return np.where(both >= n_docs, 1.0, np.clip(value, -1.0, 1.0))


def measure(name: str, spec: dict, out: Path) -> dict:
    """Run one measurement; save its result arrays to ``out`` (npz); return the timings."""
    analysis, impl = name.split(":")
    load_s = 0.0
    times: list[float] = []
    result: dict[str, np.ndarray] = {}
    repeat = 1 if analysis == "full_npmi" else spec["repeat"]
    if impl == "imports":
        import scipy.sparse  # noqa: F401
        import scipy.stats  # noqa: F401

        import saedb  # noqa: F401
    elif impl == "sql":
        store = _open(spec, read_only=analysis != "full_npmi")
        con = store.con
        if analysis == "full_npmi":
            from saedb.cooccurrence import refresh_cooccurrence

            t0 = time.perf_counter()
            summary = refresh_cooccurrence(store, min_count=spec["min_count"], progress=False)
            times.append(time.perf_counter() - t0)
            result["n_pairs"] = np.array([summary["n_pairs"]])
        else:
            sql = {
                "diff": "SELECT * FROM diff('d1', 'd2')",
                "npmi_targets": f"SELECT * FROM npmi_targets({spec['targets']}, "
                f"min_count := {spec['min_count']})",
                "retrieve": "SELECT * FROM retrieve("
                + "["
                + ", ".join(f"{{'latent_id': {i}, 'weight': {w}}}" for i, w in spec["weights"])
                + "], k := 100)",
                "doc_vectors": f"SELECT * FROM doc_vectors({spec['vector_latents']})",
            }[analysis]
            for _ in range(repeat):
                t0 = time.perf_counter()
                table = con.sql(sql).to_arrow_table()
                times.append(time.perf_counter() - t0)
                if times[-1] > SLOW_S:
                    break
            cols = {
                "diff": ["latent_id", "n_a", "n_b", "p_value", "q_value"],
                "npmi_targets": ["target_latent", "latent_id", "n_both", "npmi"],
                "retrieve": ["doc_id", "score"],
                "doc_vectors": ["doc_id", "n_active"],
            }[analysis]
            result = {c: table.column(c).to_numpy() for c in cols}
        store.close()
    else:
        import scipy.sparse  # noqa: F401  (imported before any timing)
        import scipy.stats  # noqa: F401

        store = _open(spec)
        con = store.con
        n_latents = spec["latents"]
        if analysis in ("diff", "npmi_targets", "full_npmi"):
            t0 = time.perf_counter()
            doc_ids, x = _load_binary_csr(con, n_latents)
            labels = (
                con.sql(
                    "SELECT d.dataset_id FROM doc_encodings AS e JOIN documents AS d USING "
                    "(doc_id) WHERE e.sae_id = 1 ORDER BY e.doc_id"
                ).fetchnumpy()["dataset_id"]
                if analysis == "diff"
                else None
            )
            load_s = time.perf_counter() - t0
        elif analysis == "retrieve":
            ids = [i for i, _ in spec["weights"]]
            t0 = time.perf_counter()
            rows = con.sql(
                "SELECT doc_id, latent_id, max_act FROM doc_latents "
                f"WHERE sae_id = 1 AND latent_id IN ({', '.join(map(str, ids))})"
            ).fetchnumpy()
            load_s = time.perf_counter() - t0
        else:  # doc_vectors
            t0 = time.perf_counter()
            doc_ids = con.sql(
                "SELECT doc_id FROM doc_encodings WHERE sae_id = 1 ORDER BY doc_id"
            ).fetchnumpy()["doc_id"]
            rows = con.sql(
                "SELECT doc_id, latent_id FROM doc_latents WHERE sae_id = 1 AND max_act > 0 "
                f"AND latent_id IN ({', '.join(map(str, spec['vector_latents']))})"
            ).fetchnumpy()
            load_s = time.perf_counter() - t0
        store.close()
        for _ in range(repeat):
            t0 = time.perf_counter()
            if analysis == "diff":
                result = _diff_numpy(x, labels)
            elif analysis == "npmi_targets":
                result = _npmi_targets_scipy(x, spec["targets"], spec["min_count"])
            elif analysis == "full_npmi":
                result = _full_npmi_scipy(x, spec["min_count"])
            elif analysis == "retrieve":
                result = _retrieve_numpy(rows, dict(spec["weights"]))
            else:
                result = _doc_vectors_scipy(doc_ids, rows, spec["vector_latents"])
            times.append(time.perf_counter() - t0)
            if times[-1] > SLOW_S:
                break
        if analysis == "full_npmi":  # keep a fingerprint, not 30M pairs
            result = _pairs_fingerprint(**result)
    np.savez(out, **result)
    return {
        "load_s": load_s,
        "compute_s": statistics.median(times) if times else 0.0,
        "peak_mib": peak_rss_kib() / 1024,
    }


def peak_rss_kib() -> int:
    """This process's peak resident memory. VmHWM belongs to the address space exec made, while
    ru_maxrss carries over the parent's peak through fork + exec on Linux."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _diff_numpy(x, labels) -> dict[str, np.ndarray]:
    from scipy import stats

    in_a, in_b = labels == 1, labels == 2
    size_a, size_b = int(in_a.sum()), int(in_b.sum())
    n_a = np.asarray(x[in_a].sum(axis=0)).ravel()
    n_b = np.asarray(x[in_b].sum(axis=0)).ravel()
    latent = np.flatnonzero((n_a + n_b) > 0)
    n_a, n_b = n_a[latent], n_b[latent]
    freq_a, freq_b = n_a / size_a, n_b / size_b
    pooled = (n_a + n_b) / (size_a + size_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(freq_a - freq_b) / np.sqrt(pooled * (1 - pooled) * (1 / size_a + 1 / size_b))
    p = np.where(pooled >= 1.0, 1.0, np.minimum(1.0, 2.0 * stats.norm.sf(z)))
    order = np.lexsort((latent, p))  # BH over the p-values, ascending
    m = p.size
    q_sorted = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    out = np.lexsort((latent, -(freq_a - freq_b)))
    return {
        "latent_id": latent[out],
        "n_a": n_a[out],
        "n_b": n_b[out],
        "p_value": p[out],
        "q_value": q[out],
    }


def _npmi_targets_scipy(x, targets: list[int], min_count: int) -> dict[str, np.ndarray]:
    counts = np.bincount(x.indices, minlength=x.shape[1])
    targets = np.unique(np.asarray(targets))
    product = (x[:, targets].T @ x).tocoo()  # targets x latents, documents where both fired
    t, j, both = targets[product.row], product.col, product.data
    keep = (j != t) & (both >= min_count)
    t, j, both = t[keep], j[keep], both[keep]
    npmi = _npmi(both, counts[t], counts[j], x.shape[0])
    order = np.lexsort((j, -npmi, t))
    return {
        "target_latent": t[order],
        "latent_id": j[order],
        "n_both": both[order],
        "npmi": npmi[order],
    }


def _full_npmi_scipy(x, min_count: int) -> dict[str, np.ndarray]:
    from scipy import sparse

    counts = np.bincount(x.indices, minlength=x.shape[1])
    product = sparse.triu(x.T @ x, k=1).tocoo()  # pair (i, j), i < j: documents where both fired
    keep = product.data >= min_count
    i, j, both = product.row[keep], product.col[keep], product.data[keep]
    del product, keep
    return {"i": i, "j": j, "n_both": both, "npmi": _npmi(both, counts[i], counts[j], x.shape[0])}


def _pairs_fingerprint(i, j, n_both, npmi) -> dict[str, np.ndarray]:
    """Pair count, sums, and the 1000 pairs of highest NPMI (ties by i, j)."""
    top = np.argpartition(-npmi, min(1000, npmi.size - 1))[:1000] if npmi.size > 1000 else None
    sel = np.arange(npmi.size) if top is None else top
    order = sel[np.lexsort((j[sel], i[sel], -npmi[sel]))]
    return {
        "n_pairs": np.array([npmi.size]),
        "sum_n_both": np.array([int(n_both.sum())]),
        "sum_npmi": np.array([float(npmi.sum())]),
        "top_i": i[order],
        "top_j": j[order],
    }


def _retrieve_numpy(rows: dict, weights: dict[int, float]) -> dict[str, np.ndarray]:
    lookup = np.zeros(int(rows["latent_id"].max()) + 1 if rows["latent_id"].size else 1)
    for latent, w in weights.items():
        if latent < lookup.size:
            lookup[latent] += w
    docs, inverse = np.unique(rows["doc_id"], return_inverse=True)
    score = np.bincount(
        inverse, weights=lookup[rows["latent_id"]] * rows["max_act"].astype(np.float64)
    )
    top = np.lexsort((docs, -score))[:100]
    return {"doc_id": docs[top], "score": score[top]}


def _doc_vectors_scipy(doc_ids, rows: dict, latents: list[int]) -> dict[str, np.ndarray]:
    from scipy import sparse

    column = np.full(max(latents) + 1, -1, dtype=np.int32)
    column[np.asarray(latents)] = np.arange(len(latents), dtype=np.int32)
    matrix = sparse.csr_matrix(
        (
            np.ones(rows["doc_id"].size, dtype=np.int8),
            (np.searchsorted(doc_ids, rows["doc_id"]), column[rows["latent_id"]]),
        ),
        shape=(doc_ids.size, len(latents)),
    )
    return {"doc_id": doc_ids, "n_active": np.diff(matrix.indptr)}


# -- the driver --------------------------------------------------------------------------------


def run_child(name: str, spec_path: Path, out: Path, cap_bytes: float, timeout: float) -> dict:
    """Run ``measure(name)`` in a fresh interpreter; kill it past ``cap_bytes`` of RSS."""
    cmd = [sys.executable, __file__, "--measure", name, "--spec", str(spec_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    killed = None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            rss = 0
        if rss > cap_bytes:
            killed = f"aborted: RSS passed {cap_bytes / 2**30:.0f} GiB"
        elif time.perf_counter() - started > timeout:
            killed = f"aborted: ran past {timeout:.0f} s"
        if killed:
            proc.kill()
            proc.wait()
            return {"error": killed}
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"error": f"failed (exit {proc.returncode}): {stderr.strip().splitlines()[-1:]}"}
    return json.loads(stdout.strip().splitlines()[-1])


def pick_latents(con: duckdb.DuckDBPyConnection, seed: int) -> dict:
    """Targets drawn with log-uniform popularity rank among the latents that fired."""
    ranked = con.sql(
        "SELECT latent_id FROM doc_latents GROUP BY latent_id ORDER BY count(*) DESC, latent_id"
    ).fetchnumpy()["latent_id"]
    rng = np.random.default_rng(seed + 1)

    def draw(k: int) -> list[int]:
        chosen: set[int] = set()
        while len(chosen) < k:
            rank = int(np.exp(rng.uniform(0, np.log(ranked.size))))
            chosen.add(int(ranked[min(rank, ranked.size - 1)]))
        return sorted(chosen)

    return {
        "targets": draw(100),
        "weights": [[i, round(float(rng.uniform(0.1, 1.0)), 3)] for i in draw(10)],
        "vector_latents": draw(50),
    }


def compare(analysis: str, sql: dict, base: dict) -> str:
    """'' when the two results agree, else what differs."""
    if analysis == "diff":
        if not (
            np.array_equal(sql["latent_id"], base["latent_id"])
            and np.array_equal(sql["n_a"], base["n_a"])
            and np.array_equal(sql["n_b"], base["n_b"])
        ):
            return "latents or counts differ"
        dp = np.max(np.abs(sql["p_value"] - base["p_value"]), initial=0)
        dq = np.max(np.abs(sql["q_value"] - base["q_value"]), initial=0)
        return "" if dp < 1e-6 and dq < 1e-6 else f"p/q differ by {dp:.2g}/{dq:.2g}"
    if analysis == "npmi_targets":
        for c in ("target_latent", "latent_id", "n_both"):
            if not np.array_equal(sql[c], base[c]):
                return f"{c} differs ({sql[c].size} vs {base[c].size} rows)"
        d = np.max(np.abs(sql["npmi"] - base["npmi"]), initial=0)
        return "" if d < 1e-9 else f"npmi differs by {d:.2g}"
    if analysis == "full_npmi":
        for c in ("n_pairs", "sum_n_both", "top_i", "top_j"):
            if not np.array_equal(sql[c], base[c]):
                return f"{c} differs"
        d = abs(float(sql["sum_npmi"][0]) - float(base["sum_npmi"][0]))
        return "" if d < 1e-6 * max(1.0, float(base["n_pairs"][0])) else f"sum npmi off by {d}"
    if analysis == "retrieve":
        if not np.array_equal(sql["doc_id"], base["doc_id"]):
            return "top documents differ"
        d = np.max(np.abs(sql["score"] - base["score"]), initial=0)
        return "" if d < 1e-9 else f"scores differ by {d:.2g}"
    for c in ("doc_id", "n_active"):
        if not np.array_equal(sql[c], base[c]):
            return f"{c} differs"
    return ""


def sql_fingerprint(store_path: Path) -> dict[str, np.ndarray]:
    """The full-NPMI fingerprint of what refresh_cooccurrence wrote."""
    con = duckdb.connect(str(store_path), read_only=True)
    try:
        n, s_both, s_npmi = con.execute(
            "SELECT count(*), sum(n_both), sum(npmi) FROM latent_cooccurrence"
        ).fetchall()[0]
        top = con.sql(
            "SELECT latent_i, latent_j FROM latent_cooccurrence "
            "ORDER BY npmi DESC, latent_i, latent_j LIMIT 1000"
        ).fetchnumpy()
    finally:
        con.close()
    return {
        "n_pairs": np.array([n]),
        "sum_n_both": np.array([int(s_both or 0)]),
        "sum_npmi": np.array([float(s_npmi or 0.0)]),
        "top_i": top["latent_i"],
        "top_j": top["latent_j"],
    }


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def reuse_store(store_path: Path) -> dict:
    """What ``build_bulk_store`` reports, for a store kept by an earlier run (``--reuse``):
    opened read-write once, so an older one is upgraded (its latent_counts backfilled)."""
    import saedb

    started = time.perf_counter()
    saedb.open(store_path).close()
    con = duckdb.connect(str(store_path), read_only=True)
    try:
        rows, fired = con.execute(
            "SELECT count(*), count(DISTINCT latent_id) FROM doc_latents"
        ).fetchall()[0]
    finally:
        con.close()
    return {
        "rows": int(rows),
        "latents_fired": int(fired),
        "bytes": store_path.stat().st_size,
        "seconds": time.perf_counter() - started,
    }


def run_size(n_docs: int, args: argparse.Namespace, work: Path) -> None:
    store_path = work / f"analyses-{n_docs}.duckdb"
    if args.reuse and store_path.exists():
        built = reuse_store(store_path)
    else:
        if store_path.exists():
            store_path.unlink()
        built = build_bulk_store(
            store_path,
            docs=n_docs,
            per_doc=args.per_doc,
            latents=args.latents,
            datasets=args.datasets,
            zipf=args.zipf,
            seed=args.seed,
            memory_limit=args.build_memory_limit,
        )
    shutil.rmtree(work / f"{store_path.name}.tmp", ignore_errors=True)
    con = duckdb.connect(str(store_path), read_only=True)
    try:
        picks = pick_latents(con, args.seed)
        touched = con.execute(
            f"SELECT count(*) FROM doc_latents WHERE latent_id IN "
            f"({', '.join(str(i) for i, _ in picks['weights'])})"
        ).fetchall()[0][0]
    finally:
        con.close()
    spec = {
        "store": str(store_path),
        "latents": args.latents,
        "min_count": args.min_count,
        "repeat": args.repeat,
        **picks,
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cap = args.mem_cap_gb * 2**30

    analyses = [a for a in args.analyses if a != "full_npmi" or n_docs <= args.full_npmi_max]
    # full NPMI last: the refresh writes its pairs into the store
    analyses = [a for a in analyses if a != "full_npmi"] + (
        ["full_npmi"] if "full_npmi" in analyses else []
    )
    floor = run_child("none:imports", spec_path, work / "imports.npz", cap, args.timeout)
    measured: dict[str, dict[str, dict]] = {}
    agree: list[str] = []
    for analysis in analyses:
        measured[analysis] = {}
        results = {}
        for impl in ("base", "sql"):  # the baseline first: the refresh changes the store
            out = work / f"{analysis}-{impl}.npz"
            measured[analysis][impl] = run_child(
                f"{analysis}:{impl}", spec_path, out, cap, args.timeout
            )
            if "error" not in measured[analysis][impl]:
                results[impl] = dict(np.load(out))
        if analysis == "full_npmi" and "sql" in results:
            results["sql"] = sql_fingerprint(store_path)
        if len(results) == 2:
            diff = compare(analysis, results["sql"], results["base"])
            agree.append(f"{analysis}: {'agree' if not diff else 'DISAGREE: ' + diff}")
        else:
            agree.append(f"{analysis}: not compared (a side did not finish)")

    print(f"\n## {n_docs:,} documents\n")
    print(
        f"- finished at {time.strftime('%H:%M UTC', time.gmtime())}, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        f"- store: {built['rows']:,} doc_latents rows ({built['rows'] / n_docs:.1f} per "
        f"document), {built['latents_fired']:,} of {args.latents:,} latents fired, "
        f"{built['bytes'] / 2**20:,.0f} MiB; "
        + (
            f"kept from an earlier run (--reuse), opened in {built['seconds']:.1f} s"
            if args.reuse
            else f"built in {built['seconds']:.1f} s (bulk SQL)"
        )
    )
    print(
        f"- retrieve's 10 latents cover {touched:,} rows; npmi_targets: 100 targets, "
        f"min_count {args.min_count}; doc_vectors: 50 latents"
    )
    if "error" not in floor:
        print(
            f"- imports only (python + duckdb + numpy + scipy + saedb): "
            f"{floor['peak_mib']:,.0f} MiB peak"
        )
    if "full_npmi" not in analyses:
        print(f"- full NPMI: not measured at this size (--full-npmi-max {args.full_npmi_max:,})")
    print("- results: " + "; ".join(agree))
    print()
    header = [
        "analysis",
        "saedb SQL",
        "SQL peak MiB",
        "numpy/scipy load",
        "compute",
        "total",
        "numpy/scipy peak MiB",
        "target",
        "met?",
    ]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * 6 + "---|---|")
    labels = {
        "diff": "diff('d1', 'd2')",
        "npmi_targets": "npmi_targets, 100 targets",
        "full_npmi": f"full NPMI (refresh_cooccurrence, min_count {args.min_count})",
        "retrieve": "retrieve, 10 latents, top 100",
        "doc_vectors": "doc_vectors, 50 latents",
    }
    for analysis in analyses:
        sql, base = measured[analysis]["sql"], measured[analysis]["base"]
        sql_t = None if "error" in sql else sql["compute_s"]
        base_total = None if "error" in base else base["load_s"] + base["compute_s"]
        target, met = "-", "-"
        if analysis == "diff":
            target = "< 1 s at 1M docs"
            if n_docs >= 1_000_000:
                met = "-" if sql_t is None else ("yes" if sql_t < 1 else "no")
            else:
                met = f"(1M only; {'under' if sql_t is not None and sql_t < 1 else 'over'} here)"
        elif analysis == "retrieve":
            target = "< 50 ms at 1M docs"
            if n_docs >= 1_000_000:
                met = "-" if sql_t is None else ("yes" if sql_t < 0.05 else "no")
            else:
                under = sql_t is not None and sql_t < 0.05
                met = f"(1M only; {'under' if under else 'over'} here)"
        elif analysis == "full_npmi":
            target = "time <= scipy total, peak <= scipy peak / 2"
            if sql_t is not None and base_total is not None:
                fast = sql_t <= base_total
                lean = sql["peak_mib"] <= base["peak_mib"] / 2
                met = (
                    f"time {'yes' if fast else 'no'} ({sql_t / base_total:.2f}x), "
                    f"memory {'yes' if lean else 'no'} "
                    f"({sql['peak_mib'] / base['peak_mib']:.2f}x)"
                )
        row = [
            labels[analysis],
            sql["error"] if "error" in sql else fmt_s(sql_t),
            "-" if "error" in sql else f"{sql['peak_mib']:,.0f}",
            base["error"] if "error" in base else fmt_s(base["load_s"]),
            "-" if "error" in base else fmt_s(base["compute_s"]),
            fmt_s(base_total),
            "-" if "error" in base else f"{base['peak_mib']:,.0f}",
            target,
            met,
        ]
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--docs", default="100000,1000000", help="comma-separated store sizes")
    ap.add_argument("--per-doc", type=float, default=200.0, help="mean latents fired per doc")
    ap.add_argument("--latents", type=int, default=16_384, help="SAE width (d_sae)")
    ap.add_argument("--datasets", type=int, default=4, help="datasets d1..dN, equal sizes")
    ap.add_argument("--zipf", type=float, default=1.0, help="skew of latent popularity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--min-count", type=int, default=5, help="min_count of the NPMI analyses")
    ap.add_argument(
        "--full-npmi-max",
        type=int,
        default=100_000,
        help="measure full NPMI only for sizes up to this many documents",
    )
    ap.add_argument(
        "--mem-cap-gb", type=float, default=14.0, help="kill a measurement whose memory passes this"
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="build the stores in DIR and keep them (default: a temp dir)",
    )
    ap.add_argument(
        "--build-memory-limit", default="8GB", help="DuckDB memory_limit while building a store"
    )
    ap.add_argument(
        "--analyses",
        default=",".join(ANALYSES),
        help=f"comma-separated analyses to measure (default: all of {', '.join(ANALYSES)})",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: measure the store an earlier run kept there instead of rebuilding it "
        "(full NPMI writes its pairs into the store; the other analyses only read)",
    )
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.measure:
        print(json.dumps(measure(args.measure, json.loads(args.spec.read_text()), args.out)))
        return

    import scipy

    sizes = [int(s) for s in args.docs.split(",") if s.strip()]
    args.analyses = [a.strip() for a in args.analyses.split(",") if a.strip()]
    unknown = sorted(set(args.analyses) - set(ANALYSES))
    if unknown:
        ap.error(f"unknown analyses {', '.join(unknown)}; choose from {', '.join(ANALYSES)}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        work, tmp = args.keep, None
    else:
        tmp = tempfile.TemporaryDirectory()
        work = Path(tmp.name)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0]
    print("## bench/analyses.py: saedb's analyses against numpy/scipy\n")
    print("`" + " ".join(["python", "bench/analyses.py", *sys.argv[1:]]) + "`\n")
    print(
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), {ram / 2**30:.0f} GiB RAM, "
        f"load average at start {os.getloadavg()[0]:.2f}; python {platform.python_version()}, "
        f"duckdb {duckdb.__version__} ({threads} threads), numpy {np.__version__}, "
        f"scipy {scipy.__version__}"
    )
    print(
        f"- stores: {args.per_doc:g} latents per document on average, d_sae {args.latents:,}, "
        f"{args.datasets} datasets, zipf {args.zipf}, seed {args.seed}; doc_latents clustered "
        "by (sae_id, latent_id, doc_id) and latent_counts recomputed, as after `saedb optimize`"
    )
    print(
        f"- each cell is its own Python process; times are the median of {args.repeat} runs "
        f"(one where the first took over {SLOW_S:g} s; full NPMI: one), peak memory is the "
        "process's VmHWM (peak RSS)"
    )
    sys.stdout.flush()
    try:
        for n_docs in sizes:
            run_size(n_docs, args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
