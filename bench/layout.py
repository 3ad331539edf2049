"""Physical layout of doc_latents: what ingestion order, `saedb optimize` and an index cost and buy.

    python bench/layout.py [--docs 100000] [--latents 16384] [--per-doc 64] [--datasets 4]
                           [--zipf 1.0] [--text-chars 400] [--repeat 7] [--append-batches 20]
                           [--seed 0] [--dir DIR]

The default run takes under 3 minutes on 2 busy cores and ~1 GB of disk; docs/design.md quotes it.

Builds a synthetic store in a temporary directory through saedb's own write path
(``saedb.open``, ``register_sae``, ``dataset_id``, ``start_run``, ``write_batch`` with batches
of 256 documents, one dataset after the other, as ``saedb ingest`` does). Each document fires
about ``--per-doc`` latents drawn from a Zipf-like distribution over the latents (rank r fires
with probability proportional to 1 / (r + 10) ** zipf; every dataset boosts a few latents of
its own so that ``diff`` has something to find). The store is then copied into the layouts
compared:

  ingested   as ``write_batch`` leaves it: batches in arrival order, each sorted by latent
  optimized  after ``store.optimize()``: the whole table clustered by (sae_id, latent_id, doc_id)
  opt+tail   as if ``optimize()`` had run before the last 10% of the documents were ingested:
             the head clustered by latent, the tail as ``write_batch`` left it
  art(s,l)   ingested + ``CREATE INDEX ... ON doc_latents (sae_id, latent_id)`` (benchmark only)
  art(l)     ingested + an index on latent_id alone (benchmark only)
  doc-order  reference: doc_latents rewritten in (doc_id, latent_id) order, i.e. ingestion
             without the per-batch sort

and every query is timed on each: the median of ``--repeat`` runs after one warm-up run, the
layouts taking turns, the whole result fetched as Arrow. Row counts are checked to agree
across layouts. A profiled run of each query says how it read doc_latents: how many row groups
it scanned (zone maps and dynamic filters skip the others) or whether it used an index. Finally
``--append-batches`` more batches are written into each full store to measure what one batch
costs once the table is large (and the index has to be maintained). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from synthetic import synthetic_sae

import saedb
from saedb.store import Store

BATCH_DOCS = 256
"""Documents per ``write_batch`` call, as ingestion commits them."""

LAYOUTS = ("ingested", "optimized", "opt+tail", "art(s,l)", "art(l)", "doc-order")


# -- synthetic data --------------------------------------------------------------------------


def latent_probabilities(args: argparse.Namespace, rng: np.random.Generator) -> list[np.ndarray]:
    """Per dataset, the probability that each latent fires in a document."""
    ranks = np.arange(1, args.latents + 1, dtype=np.float64)
    weight = 1.0 / (ranks + 10.0) ** args.zipf
    p = weight * args.per_doc / weight.sum()
    for _ in range(50):  # rescale until the clipped probabilities sum to per_doc again
        p = np.minimum(p * args.per_doc / np.minimum(p, 0.9).sum(), 0.9)
    p_by_latent = np.empty(args.latents)
    p_by_latent[rng.permutation(args.latents)] = p  # frequent latents anywhere in the id range
    probs = []
    for _ in range(args.datasets):
        q = p_by_latent.copy()
        boosted = rng.choice(args.latents, size=64, replace=False)
        q[boosted] = np.minimum(q[boosted] * 4.0 + 0.01, 0.9)
        probs.append((q * args.per_doc / q.sum()).astype(np.float32))
    return probs


class BatchMaker:
    """Builds the Arrow tables ``Store.write_batch`` takes, as ingestion would hand them."""

    def __init__(self, args: argparse.Namespace, rng: np.random.Generator) -> None:
        self.rng = rng
        self.text_chars = args.text_chars
        words = ["".join(rng.choice(list("etaoinshrdlucmfw"), size=n)) for n in range(2, 10)]
        pool = rng.choice(words * 8, size=400_000)
        self.corpus = " ".join(pool.tolist())

    def make(
        self, probs: np.ndarray, dataset: str, first: int, n_docs: int
    ) -> tuple[pa.Table, pa.Table]:
        rng = self.rng
        starts = rng.integers(0, len(self.corpus) - self.text_chars, size=n_docs)
        texts = [self.corpus[s : s + self.text_chars] for s in starts.tolist()]
        documents = pa.table(
            {
                "doc_id": pa.nulls(n_docs, pa.int64()),
                "external_id": [f"{dataset}-{first + i}" for i in range(n_docs)],
                "text": texts,
                "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
                "n_tokens": pa.array(np.full(n_docs, self.text_chars // 4), pa.int32()),
                "metadata": pa.nulls(n_docs, pa.string()),
            }
        )
        fired = rng.random((n_docs, len(probs)), dtype=np.float32) < probs
        doc_index, latent_id = np.nonzero(fired)
        n = len(doc_index)
        max_act = rng.exponential(2.0, n).astype(np.float32) + np.float32(0.01)
        n_active = 1 + rng.geometric(0.3, n).astype(np.int32)
        sum_act = max_act * (1.0 + (n_active - 1) * rng.random(n, dtype=np.float32))
        char_start = rng.integers(0, self.text_chars - 8, n).astype(np.int32)
        latents = pa.table(
            {
                "doc_index": pa.array(doc_index.astype(np.int64)),
                "latent_id": pa.array(latent_id.astype(np.int32)),
                "max_act": pa.array(max_act),
                "sum_act": pa.array(sum_act.astype(np.float32)),
                "n_active": pa.array(n_active),
                "max_char_start": pa.array(char_start),
                "max_char_end": pa.array(char_start + rng.integers(1, 8, n).astype(np.int32)),
            }
        )
        return documents, latents


def build_store(path: Path, args: argparse.Namespace) -> tuple[list[float], BatchMaker, list]:
    """Ingest the synthetic corpus; return the seconds of each ``write_batch`` call."""
    rng = np.random.default_rng(args.seed)
    probs = latent_probabilities(args, rng)
    maker = BatchMaker(args, rng)
    per_dataset = args.docs // args.datasets
    seconds = []
    with saedb.open(path) as store:
        sae_id = store.register_sae(synthetic_sae(args.latents, {"bench": "layout"}))
        for k in range(args.datasets):
            name = f"d{k + 1}"
            dataset_id = store.dataset_id(name, create=True)
            run_id = store.start_run({"bench": "layout", "dataset": name})
            for first in range(0, per_dataset, BATCH_DOCS):
                n = min(BATCH_DOCS, per_dataset - first)
                documents, latents = maker.make(probs[k], name, first, n)
                t0 = time.perf_counter()
                store.write_batch(
                    run_id=run_id,
                    dataset_id=dataset_id,
                    sae_id=sae_id,
                    documents=documents,
                    latents=latents,
                )
                seconds.append(time.perf_counter() - t0)
            store.finish_run(run_id, "done")
        store.con.execute("CHECKPOINT")
    return seconds, maker, probs


# -- the workload ----------------------------------------------------------------------------


@dataclass
class Picks:
    """The latents and document the queries ask about, chosen from the data."""

    frequent: int
    frequent_docs: int
    rare: int
    rare_docs: int
    doc_id: int
    doc_rows: int
    doc_latent: int
    weights: list[tuple[int, float]]


def pick(store: Store, seed: int) -> Picks:
    counts = store.con.execute(
        "SELECT latent_id, count(*) AS n FROM doc_latents GROUP BY latent_id ORDER BY n DESC, "
        "latent_id"
    ).fetchall()
    rare_latent, rare_n = counts[int(len(counts) * 0.95)]  # 5th percentile of those that fired
    rng = np.random.default_rng(seed + 1)
    n_docs = store.con.execute("SELECT max(doc_id) FROM documents").fetchall()[0][0]
    doc_id = int(n_docs // 2 + 17)
    doc_rows, doc_latent = store.con.execute(
        "SELECT count(*), max(latent_id) FROM doc_latents WHERE doc_id = ?", [doc_id]
    ).fetchall()[0]
    chosen = rng.choice(len(counts), size=10, replace=False)
    weights = [(int(counts[i][0]), round(float(rng.uniform(0.1, 1.0)), 3)) for i in chosen]
    return Picks(
        frequent=counts[0][0],
        frequent_docs=counts[0][1],
        rare=rare_latent,
        rare_docs=rare_n,
        doc_id=doc_id,
        doc_rows=doc_rows,
        doc_latent=doc_latent,
        weights=weights,
    )


def queries(p: Picks) -> dict[str, tuple[str, str]]:
    """Group -> name -> SQL, as an analyst (or saedb's own commands) would write them."""
    values = ", ".join(f"({lat}, {w})" for lat, w in p.weights)
    return {
        "diff('d1', 'd2'), full result": (
            "dataset-wide",
            "SELECT * FROM diff('d1', 'd2')",
        ),
        "latent_frequency of d1": (
            "dataset-wide",
            "SELECT * FROM latent_frequency WHERE dataset = 'd1'",
        ),
        f"top_documents(frequent {p.frequent}, k := 100)": (
            "per-latent",
            f"SELECT * FROM top_documents({p.frequent}, k := 100)",
        ),
        f"top_documents(rare {p.rare}, k := 100)": (
            "per-latent",
            f"SELECT * FROM top_documents({p.rare}, k := 100)",
        ),
        "weighted retrieval, 10 latents, top 100": (
            "per-latent",
            f"""
            WITH q(latent_id, weight) AS (VALUES {values})
            SELECT dl.doc_id, sum(q.weight * dl.max_act) AS score
            FROM doc_latents AS dl JOIN q ON q.latent_id = dl.latent_id
            WHERE dl.sae_id = 1
            GROUP BY dl.doc_id
            ORDER BY score DESC, dl.doc_id
            LIMIT 100
            """,
        ),
        f"rows of rare {p.rare}, filter on latent_id only": (
            "per-latent",
            f"SELECT * FROM doc_latents WHERE latent_id = {p.rare}",
        ),
        f"all rows of document {p.doc_id}": (
            "per-document",
            f"SELECT * FROM doc_latents WHERE doc_id = {p.doc_id} ORDER BY sae_id, latent_id",
        ),
        f"highlight({p.doc_id}, {p.doc_latent})": (
            "per-document",
            f"SELECT * FROM highlight({p.doc_id}, {p.doc_latent})",
        ),
    }


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, int]:
    """Seconds to run ``sql`` and fetch the whole result as Arrow, and its row count."""
    t0 = time.perf_counter()
    rows = con.sql(sql).to_arrow_table().num_rows
    return time.perf_counter() - t0, rows


def time_queries(
    stores: dict[str, Store], workload: dict[str, tuple[str, str]], repeat: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Median seconds per query and layout, and the row counts. After one warm-up run of
    everything, the layouts take turns (in a rotating order) on each query, so that a change
    in the machine's load during the run lands on every layout alike."""
    names = list(stores)
    counts: dict[str, dict[str, int]] = {q: {} for q in workload}
    for q, (_, sql) in workload.items():
        for name in names:
            counts[q][name] = run_query(stores[name].con, sql)[1]
        if len(set(counts[q].values())) != 1:
            raise SystemExit(f"layouts disagree on the row count of {q}: {counts[q]}")
    samples: dict[str, dict[str, list[float]]] = {q: {n: [] for n in names} for q in workload}
    for r in range(repeat):
        for q, (_, sql) in workload.items():
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[q][name].append(run_query(stores[name].con, sql)[0])
    medians = {q: {n: statistics.median(v) for n, v in by.items()} for q, by in samples.items()}
    return medians, counts


def scan_profile(con: duckdb.DuckDBPyConnection, sql: str, profile: Path) -> str:
    """How the query read doc_latents, from DuckDB's JSON profile: row groups read of those
    in the table, or the rows an index scan returned."""
    con.execute("SET enable_profiling = 'json'")
    con.execute("SET profiling_output = '" + str(profile).replace("'", "''") + "'")
    try:
        con.sql(sql).to_arrow_table()
    finally:
        con.execute("PRAGMA disable_profiling")
    scans = []

    def walk(node: dict) -> None:
        info = node.get("extra_info", {})
        if node.get("type") == "TABLE_SCAN" and str(info.get("Table", "")).endswith(".doc_latents"):
            scans.append((info.get("Type", ""), node))
        for child in node.get("children", []):
            walk(child)

    for root in json.loads(profile.read_text()).get("operator", []):
        walk(root)
    cells = []
    for kind, node in scans:
        if "Index" in kind:
            cells.append(f"index, {node.get('rows_scanned', '?')} rows")
        else:
            cells.append(
                f"{node.get('row_groups_scanned', '?')}/{node.get('total_row_groups_to_scan', '?')}"
            )
    return " + ".join(cells) or "-"


# -- layouts ---------------------------------------------------------------------------------


def make_layout(base: Path, path: Path, layout: str) -> float:
    """Copy the ingested store to ``path`` and bring it into ``layout``; return the seconds
    that took (the copy not counted)."""
    shutil.copyfile(base, path)
    with saedb.open(path) as store:
        con = store.con
        t0 = time.perf_counter()
        if layout == "optimized":
            store.optimize()
        elif layout == "art(s,l)":
            con.execute("CREATE INDEX bench_latent ON doc_latents (sae_id, latent_id)")
            con.execute("CHECKPOINT")
        elif layout == "art(l)":
            con.execute("CREATE INDEX bench_latent ON doc_latents (latent_id)")
            con.execute("CHECKPOINT")
        elif layout == "opt+tail":
            # As if optimize had run before the last 10% of the documents were ingested: the
            # same rows (so the same answers), the head clustered, the tail as write_batch left it.
            cutoff = con.execute("SELECT max(doc_id) * 9 // 10 FROM documents").fetchall()[0][0]
            rewrite(
                con,
                [
                    "SELECT * FROM doc_latents WHERE doc_id <= ? "
                    "ORDER BY sae_id, latent_id, doc_id",
                    "SELECT * FROM doc_latents WHERE doc_id > ?",
                ],
                [cutoff],
            )
        elif layout == "doc-order":
            rewrite(con, ["SELECT * FROM doc_latents ORDER BY doc_id, latent_id"], [])
        return time.perf_counter() - t0


def rewrite(con: duckdb.DuckDBPyConnection, selects: list[str], params: list) -> None:
    """Replace doc_latents' rows by the rows of ``selects`` (each over doc_latents, each run with
    ``params``), stored in that order, the way ``Store.optimize`` does it."""
    con.execute("BEGIN TRANSACTION")
    con.execute(f"CREATE TEMP TABLE _rewrite AS {selects[0]}", params)
    for select in selects[1:]:
        con.execute(f"INSERT INTO _rewrite {select}", params)
    con.execute("DELETE FROM doc_latents")
    con.execute("INSERT INTO doc_latents SELECT * FROM _rewrite")
    con.execute("DROP TABLE _rewrite")
    con.execute("COMMIT")
    con.execute("CHECKPOINT")


def append_cost(
    path: Path, maker: BatchMaker, probs: np.ndarray, n_batches: int, first: int
) -> list[float]:
    """Seconds per ``write_batch`` for ``n_batches`` more batches into a full store."""
    seconds = []
    with saedb.open(path) as store:
        dataset_id = store.dataset_id("d-append", create=True)
        run_id = store.start_run({"bench": "append"})
        for b in range(n_batches):
            documents, latents = maker.make(probs, "d-append", first + b * BATCH_DOCS, BATCH_DOCS)
            t0 = time.perf_counter()
            store.write_batch(
                run_id=run_id, dataset_id=dataset_id, sae_id=1, documents=documents, latents=latents
            )
            seconds.append(time.perf_counter() - t0)
    return seconds


# -- output ----------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]], text_columns: int = 1) -> None:
    """A markdown table; the first ``text_columns`` columns left-aligned, numbers right."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 1 else f"{seconds * 1000:.0f}"


def mib(path: Path) -> str:
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".wal"))
    return f"{size / 2**20:.0f}"


def rewritten_mib(path: Path) -> tuple[str, str]:
    """The size of the same store copied into a fresh file (COPY FROM DATABASE): what the data
    takes without the free blocks a rewrite leaves in the file; and what doc_latents alone
    takes, copied in its stored order into a fresh file (less the size of an empty one)."""
    sizes = []
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute("ATTACH ? AS src (READ_ONLY)", [str(path)])
        for name, sql in (
            ("store", "COPY FROM DATABASE src TO dst"),
            ("table", "CREATE TABLE dst.t AS SELECT * FROM src.doc_latents"),
            ("empty", "CREATE TABLE dst.t AS SELECT * FROM src.doc_latents LIMIT 0"),
        ):
            fresh = path.with_name(f"{path.stem}-{name}.duckdb")
            con.execute("ATTACH ? AS dst", [str(fresh)])
            con.execute(sql)
            con.execute("DETACH dst")
            sizes.append(fresh.stat().st_size)
            fresh.unlink()
    finally:
        con.close()
    return f"{sizes[0] / 2**20:.0f}", f"{(sizes[1] - sizes[2]) / 2**20:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--docs", type=int, default=100_000, help="documents in the store")
    ap.add_argument("--latents", type=int, default=16_384, help="SAE width (d_sae)")
    ap.add_argument("--per-doc", type=float, default=64.0, help="mean latents fired per document")
    ap.add_argument("--datasets", type=int, default=4, help="datasets d1..dN, equal sizes")
    ap.add_argument("--zipf", type=float, default=1.0, help="skew of the latent distribution")
    ap.add_argument("--text-chars", type=int, default=400, help="characters per document")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per query (median)")
    ap.add_argument("--append-batches", type=int, default=20, help="batches to time per layout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    work = Path(tmp.name)
    started = time.perf_counter()
    load = os.getloadavg()
    base = work / "ingested.duckdb"
    t0 = time.perf_counter()
    batch_s, maker, probs = build_store(base, args)
    ingest_wall = time.perf_counter() - t0

    paths = {
        name: work / f"{name.replace('(', '_').replace(')', '').replace(',', '')}.duckdb"
        for name in LAYOUTS
    }
    paths["ingested"] = base
    prepare_s = {"ingested": 0.0}
    for name in LAYOUTS[1:]:
        prepare_s[name] = make_layout(base, paths[name], name)

    with saedb.open(base) as store:
        picks = pick(store, args.seed)
        n_rows = store.con.execute("SELECT count(*) FROM doc_latents").fetchall()[0][0]
        n_fired = store.con.execute("SELECT count(DISTINCT latent_id) FROM doc_latents").fetchall()[
            0
        ][0]
    workload = queries(picks)
    sizes = {name: mib(paths[name]) for name in LAYOUTS}
    compact = {name: rewritten_mib(paths[name]) for name in LAYOUTS}

    stores = {name: saedb.open(paths[name]) for name in LAYOUTS}
    try:
        scans: dict[str, dict[str, str]] = {q: {} for q in workload}
        for name, store in stores.items():
            store.con.execute("SET enable_progress_bar = false")
            for q, (_, sql) in workload.items():
                scans[q][name] = scan_profile(store.con, sql, work / "profile.json")
        timings, counts = time_queries(stores, workload, args.repeat)
    finally:
        for store in stores.values():
            store.close()

    appended = {}
    if args.append_batches:
        for name in ("ingested", "optimized", "art(s,l)", "art(l)"):
            appended[name] = append_cost(paths[name], maker, probs[0], args.append_batches, first=0)

    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0]
    print("## bench/layout.py: doc_latents layouts\n")
    print("`" + " ".join(["python", "bench/layout.py", *sys.argv[1:]]) + "`\n")
    print(
        f"- machine: {os.cpu_count()} cores ({platform.machine()}, {platform.system()}), "
        f"duckdb {duckdb.__version__}, python {platform.python_version()}, "
        f"load average at start {load[0]:.2f}"
    )
    print(
        f"- store: {args.docs:,} documents in {args.datasets} datasets, {n_rows:,} doc_latents "
        f"rows ({n_rows / args.docs:.1f} per document), {n_fired:,} of {args.latents:,} latents "
        f"fired (zipf {args.zipf})"
    )
    print(
        f"- frequent latent {picks.frequent}: {picks.frequent_docs:,} documents; rare latent "
        f"{picks.rare}: {picks.rare_docs:,} documents; document {picks.doc_id}: "
        f"{picks.doc_rows} rows"
    )
    print(
        f"- query times: median of {args.repeat} runs after a warm-up, the layouts taking turns, "
        "whole result fetched as Arrow; DuckDB's default settings "
        f"({threads} threads)"
    )

    table(
        "Ingest: write_batch, 256 documents per transaction (layout: ingested)",
        [
            "batches",
            "total s",
            "mean s/batch",
            "median s/batch",
            "p95 s/batch",
            "max s/batch",
            "first 10% median",
            "last 10% median",
            "wall incl. data generation s",
        ],
        [
            [
                f"{len(batch_s)}",
                f"{sum(batch_s):.1f}",
                f"{statistics.mean(batch_s):.4f}",
                f"{statistics.median(batch_s):.4f}",
                f"{np.percentile(batch_s, 95):.4f}",
                f"{max(batch_s):.4f}",
                f"{statistics.median(batch_s[: max(1, len(batch_s) // 10)]):.4f}",
                f"{statistics.median(batch_s[-max(1, len(batch_s) // 10) :]):.4f}",
                f"{ingest_wall:.1f}",
            ]
        ],
    )
    rows = []
    for name in LAYOUTS:
        step = {
            "ingested": "-",
            "optimized": "store.optimize()",
            "art(s,l)": "CREATE INDEX (sae_id, latent_id)",
            "art(l)": "CREATE INDEX (latent_id)",
            "opt+tail": "optimize, then 10% more ingested (simulated)",
            "doc-order": "rewrite ORDER BY doc_id",
        }[name]
        extra = appended.get(name)
        rows.append(
            [
                name,
                step,
                sizes[name],
                compact[name][0],
                compact[name][1],
                "-" if name in ("ingested", "opt+tail") else f"{prepare_s[name]:.1f}",
                f"{statistics.median(extra):.4f}" if extra else "-",
                f"{statistics.mean(extra):.4f}" if extra else "-",
            ]
        )
    table(
        f"Maintenance and storage (append: {args.append_batches} more batches into the full store)",
        [
            "layout",
            "step",
            "file MiB",
            "rewritten MiB",
            "doc_latents MiB",
            "step s",
            "append median s/batch",
            "append mean s/batch",
        ],
        rows,
        text_columns=2,
    )
    for group in ("dataset-wide", "per-latent", "per-document"):
        names = [q for q, (g, _) in workload.items() if g == group]
        table(
            f"Queries, {group}: median ms",
            ["query", "rows", *LAYOUTS],
            [
                [q, f"{counts[q]['ingested']:,}", *(ms(timings[q][n]) for n in LAYOUTS)]
                for q in names
            ],
        )
    table(
        "How each query read doc_latents: row groups read / row groups in the table "
        "(zone maps and dynamic filters skip the rest), or an ART index scan",
        ["query", *LAYOUTS],
        [[q, *(scans[q][n] for n in LAYOUTS)] for q in workload],
        text_columns=1 + len(LAYOUTS),
    )
    print(
        f"\nload average at end {os.getloadavg()[0]:.2f}; "
        f"whole run {time.perf_counter() - started:.0f} s"
    )
    tmp.cleanup()


if __name__ == "__main__":
    main()
