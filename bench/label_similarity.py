"""Label similarity at the scale of a full SAE: nearest labels, query ranking, NPMI label columns.

    python bench/label_similarity.py [--latents 16384] [--dim 384] [--k 20] [--repeat 5]
                                     [--seed 0] [--dir DIR]

Builds a store in a temporary directory with ``--latents`` labelled latents (rows of
``latent_labels``) and a random unit ``--dim``-dimensional embedding per label (rows of
``label_embeddings``, model all-MiniLM-L6-v2's name: MiniLM itself is not run, only its shape
matters here), plus 2,000 documents with 40 latents each for the NPMI rows. Then times, as the
median of ``--repeat`` runs after one warm-up:

  refresh_label_neighbors       every latent's ``--k`` nearest labels (blocked numpy), written
                                to label_neighbors; against a plain numpy brute force of the
                                same (full similarity matrix, argsort per row) on the same data
  latents_for_embedding k=20    the SQL ranking of all labels for one query vector; against
                                numpy (matrix-vector product, argpartition)
  latents_for_query k=20        the same through the query_embeddings cache
  label_similarity x 1000 pairs the scalar macro on a column of pairs
  npmi_targets (5 targets)      with the label columns, and the same query with them dropped
                                (its label-free CTEs copied), to show what the columns cost

Peak memory of the refresh is the Python process's (tracemalloc: numpy's allocations).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa

import saedb
from saedb import catalog, migrations
from saedb.label_neighbors import refresh_label_neighbors
from saedb.labels import EMBEDDING_MODEL


def build(path: Path, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    import duckdb

    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
        ids = np.arange(n)
        labels = pa.table(
            {
                "label_id": pa.array(ids + 1, pa.int64()),
                "latent_id": pa.array(ids, pa.int32()),
                "label": [f"label {i}" for i in ids],
            }
        )
        con.register("l", labels)
        con.execute(
            "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, labeler, n_examples) "
            "SELECT label_id, 1, latent_id, label, 'bench', 0 FROM l"
        )
        emb = pa.table(
            {
                "label_id": pa.array(ids + 1, pa.int64()),
                "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
            }
        )
        con.register("e", emb)
        con.execute(
            "INSERT INTO label_embeddings (label_id, model, embedding) "
            "SELECT label_id, ?, embedding FROM e",
            [EMBEDDING_MODEL],
        )
        # documents for npmi_targets: 2,000 documents, 40 latents each (Zipf-like)
        n_docs, per_doc = 2000, 40
        p = 1.0 / (np.arange(n) + 10.0)
        p /= p.sum()
        rows = [np.sort(rng.choice(n, per_doc, replace=False, p=p)) for _ in range(n_docs)]
        doc = np.repeat(np.arange(1, n_docs + 1), per_doc)
        lat = np.concatenate(rows)
        con.execute("INSERT INTO datasets VALUES (1, 'bench', NULL, current_timestamp)")
        con.execute(
            "INSERT INTO documents (doc_id, dataset_id, external_id, text, text_sha256, "
            "n_tokens, metadata, run_id) SELECT i, 1, CAST(i AS VARCHAR), 'x', '', 1, '{}', 1 "
            "FROM range(1, ?) t(i)",
            [n_docs + 1],
        )
        con.execute(
            "INSERT INTO doc_encodings (doc_id, sae_id, run_id, n_latents) "
            "SELECT i, 1, 1, ? FROM range(1, ?) t(i)",
            [per_doc, n_docs + 1],
        )
        dl = pa.table({"doc_id": pa.array(doc, pa.int64()), "latent_id": pa.array(lat, pa.int32())})
        con.register("dl", dl)
        con.execute(
            "INSERT INTO doc_latents SELECT doc_id, 1, latent_id, 1.0, 1.0, 1, 0, 1 FROM dl"
        )
        con.execute(
            "INSERT INTO query_embeddings (query, model, embedding) VALUES ('bench', ?, ?)",
            [EMBEDDING_MODEL, vectors[0].tolist()],
        )
    return vectors


def timed(fn, repeat: int) -> tuple[float, object]:
    fn()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def numpy_neighbors(v: np.ndarray, k: int) -> np.ndarray:
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latents", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="saedb-bench-labels-"))
    path = work / "labels.duckdb"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    vectors = build(path, args.latents, args.dim, args.seed)
    print(
        f"# {args.latents} labels x {args.dim} dims, k={args.k}; built in "
        f"{time.perf_counter() - t0:.1f}s; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, median of {args.repeat}\n"
    )
    rows = []
    with saedb.open(path) as store:
        store.con.execute("SET enable_progress_bar = false")
        tracemalloc.start()
        sec, _ = timed(lambda: refresh_label_neighbors(store, k=args.k), args.repeat)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ours = store.arrow(
            "SELECT neighbor_latent FROM label_neighbors ORDER BY latent_id, rank"
        ).column(0)
        got = np.asarray(ours.to_numpy()).reshape(args.latents, args.k)
        note = ""
        if args.latents <= 20000:
            tracemalloc.start()
            t1 = time.perf_counter()
            want = numpy_neighbors(vectors.astype(np.float64), args.k)
            ref_sec = time.perf_counter() - t1
            ref_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            agree = float((got == want).mean())
            note = f"numpy full matrix: {ref_sec * 1000:.0f} ms, peak {ref_peak / 2**20:.0f} MiB"
            note += f"; same neighbours at {agree:.2%} of ranks"
        rows.append(("refresh_label_neighbors", sec * 1000, f"peak {peak / 2**20:.0f} MiB; {note}"))

        q = vectors[0].tolist()
        sec, res = timed(
            lambda: store.arrow(
                "SELECT latent_id FROM latents_for_embedding($v::FLOAT[], k := 20)", {"v": q}
            ),
            args.repeat,
        )
        sims = vectors.astype(np.float64) @ vectors[0].astype(np.float64)
        t1 = time.perf_counter()
        top = np.argpartition(-sims, 20)[:20]
        top = top[np.lexsort((top, -sims[top]))]
        ref = (time.perf_counter() - t1) * 1000
        same = res.column(0).to_pylist() == top.tolist()
        rows.append(
            ("latents_for_embedding k=20", sec * 1000, f"numpy {ref:.2f} ms; same order: {same}")
        )
        sec, _ = timed(
            lambda: store.arrow("SELECT latent_id FROM latents_for_query('bench', k := 20)"),
            args.repeat,
        )
        rows.append(("latents_for_query k=20", sec * 1000, "cached query"))
        pairs = np.random.default_rng(1).integers(0, args.latents, size=(1000, 2))
        store.con.register("pairs", pa.table({"a": pairs[:, 0], "b": pairs[:, 1]}))
        sec, _ = timed(
            lambda: store.arrow("SELECT label_similarity(a, b) AS s FROM pairs"), args.repeat
        )
        rows.append(("label_similarity x 1000 pairs", sec * 1000, ""))
        targets = "[0, 1, 2, 3, 4]"
        sec, res = timed(
            lambda: store.arrow(f"SELECT * FROM npmi_targets({targets}, min_count := 1)"),
            args.repeat,
        )
        sec_nolab, _ = timed(
            lambda: store.arrow(
                f"SELECT * EXCLUDE (label_i, label_j, label_similarity) FROM "
                f"npmi_targets({targets}, min_count := 1, embedding_model := 'none')"
            ),
            args.repeat,
        )
        rows.append(
            (
                "npmi_targets (5 targets), label columns",
                sec * 1000,
                f"{res.num_rows} rows; with no embeddings to join: {sec_nolab * 1000:.1f} ms",
            )
        )
    print("| what | median ms | notes |\n|---|---:|---|")
    for name, ms, note in rows:
        print(f"| {name} | {ms:.1f} | {note} |")


if __name__ == "__main__":
    main()
