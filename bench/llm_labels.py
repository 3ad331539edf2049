"""Throughput and cost of labelling latents (issue 4): the LLM labeler against an endpoint with
latency, its cache, injected failures, the offline labeler, and example selection at scale.

    python bench/llm_labels.py [--latents 40] [--docs 2000] [--delay 0.2]
                               [--concurrency 1,4,16] [--price-in 0.15] [--price-out 0.60]
                               [--scale-docs 1000000] [--scale-per-doc 50]

**Labelling** (first table). Builds a synthetic store (``--docs`` documents of filler words,
``--latents`` latents each peaking on its own planted word, plus co-firing partner latents so
near misses exist) and starts the test suite's OpenAI-compatible server (tests/openai_server.py)
on 127.0.0.1 with ``--delay`` seconds of latency per request (a stand-in for a remote model's
answer time; the server's own work is negligible). Then, each from a fresh store unless said:

- ``LLM, concurrency c``: label and score every latent at each concurrency;
- ``LLM, from llm_cache``: the labels and scores deleted, the cache kept, labelled again: every
  answer comes from ``llm_cache`` (speedup against the uncached run at that concurrency);
- ``LLM, already labelled``: run again on that store: every latent is skipped;
- ``LLM, failures injected``: 5 x 500, 5 x 429 (Retry-After 1 s) and 2 timeouts (2 s) among
  the first requests, with the default backoff (1 s, doubling): what retries cost in time;
- ``offline (log-odds)``: the offline labeler on every latent that fired.

Columns: wall time, HTTP requests, answers from the cache, latents labelled per second, the
share of the wall time spent waiting on the endpoint (requests x delay / concurrency / wall,
ideal 1.0), tokens per latent and the estimated cost of 1,000 latents at ``--price-in`` /
``--price-out`` dollars per 1M tokens (default: gpt-4o-mini's list price). The test server
counts words as tokens, so tokens and cost say what saedb's prompts weigh (about 0.75 of a
real tokenizer's count for English), not any real model's bill; latents/s says how much of a
remote model's latency saedb's own work (examples SQL, parsing, per-call commits) leaves
hidden, nothing about a real model's speed or label quality.

**Example selection at scale** (second table, skipped with ``--scale-docs 0``). A store of
``--scale-docs`` documents with about ``--scale-per-doc`` latents each (bench/synthetic.py:
Zipf-like popularity, 16,384 latents), DuckDB held to ``memory_limit = 512MB``: the time per
latent of ``latent_examples`` and ``latent_near_misses`` as the LLM labeler calls them, for the
most common latent, one of median frequency and a rare one, and the LLM labeler end to end on
8 latents (test server, no latency, concurrency 4).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (drops bench/ from sys.path)
import duckdb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic import build_bulk_store  # noqa: E402
from saedb import catalog, migrations  # noqa: E402
from saedb import llm_labels as L  # noqa: E402, N812
from saedb.labels import label_offline_run  # noqa: E402
from saedb.llm import LLMConfig  # noqa: E402
from saedb.llm_labels import label_llm_run  # noqa: E402
from saedb.store import Store  # noqa: E402
from tests.openai_server import FakeOpenAI  # noqa: E402
from tests.test_sql_analyses import insert  # noqa: E402

FILLER = "the a of and river market window green table walk music paper stone cloud".split()


def build(path: Path, n_docs: int, n_latents: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}x" for i in range(n_latents)]
    docs, rows = [], []
    for doc_id in range(1, n_docs + 1):
        ws = list(rng.choice(FILLER, size=int(rng.integers(15, 40))))
        planted = rng.choice(n_latents, size=2, replace=False)
        for latent in planted:
            ws.insert(int(rng.integers(0, len(ws) + 1)), vocab[latent])
        starts = np.cumsum([0] + [len(w) + 1 for w in ws[:-1]])
        docs.append((doc_id, 1 + doc_id % 2, f"d{doc_id}", " ".join(ws)))
        for latent in planted:
            j = ws.index(vocab[latent])
            act = float(rng.uniform(0.5, 5))
            for lat in (int(latent), n_latents + int(latent) // 2):  # partner latent co-fires
                rows.append((doc_id, 1, lat, act, act, 1, int(starts[j]), int(starts[j]) + 4))
    documents = pd.DataFrame(docs, columns=["doc_id", "dataset_id", "external_id", "text"])
    documents = documents.assign(
        metadata="{}", text_sha256="0" * 64, n_tokens=np.int32(5), run_id=np.int32(1)
    ).astype({"dataset_id": np.int32})
    cols = ["doc_id", "sae_id", "latent_id", "max_act", "sum_act", "n_active", "s", "e"]
    dl = pd.DataFrame(rows, columns=cols).drop_duplicates(["doc_id", "latent_id"])
    dl = dl.rename(columns={"s": "max_char_start", "e": "max_char_end"}).astype(
        {c: np.int32 for c in ("sae_id", "latent_id", "n_active", "max_char_start", "max_char_end")}
        | {"max_act": np.float32, "sum_act": np.float32}
    )
    enc = dl.groupby("doc_id").size().reset_index(name="n_latents")
    enc = enc.assign(sae_id=np.int32(1), run_id=np.int32(1)).astype({"n_latents": np.int32})
    enc = enc[["doc_id", "sae_id", "run_id", "n_latents"]]
    datasets = pd.DataFrame({"dataset_id": np.array([1, 2], np.int32), "name": ["a", "b"]})
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        insert(con, "datasets", datasets)
        insert(con, "documents", documents)
        insert(con, "doc_encodings", enc)
        insert(con, "doc_latents", dl)
        con.execute(
            "INSERT INTO saes (sae_id, name, reader_model, hook_name, layer, architecture, d_in, "
            "d_sae, weights_sha256, path, config) VALUES (1, 'bench', 'none', 'h', 0, 'topk', 4, "
            "?, '', '', '{}')",
            [2 * n_latents],
        )
        con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")


class Bench:
    def __init__(self, args: argparse.Namespace, server: FakeOpenAI, work: Path) -> None:
        self.args, self.server, self.work = args, server, work
        self.latents = list(range(args.latents))

    def config(self, concurrency: int, **kw: float) -> LLMConfig:
        return LLMConfig(
            base_url=self.server.base_url,
            model="bench",
            concurrency=concurrency,
            price_in=self.args.price_in,
            price_out=self.args.price_out,
            **kw,
        )

    def fresh(self, name: str) -> Path:
        path = self.work / f"{name}.duckdb"
        build(path, self.args.docs, self.args.latents)
        return path

    def llm(self, path: Path, concurrency: int, reset: bool = True, **kw: float) -> dict:
        if reset:  # (clears queued failures too)
            self.server.reset()
        t0 = time.perf_counter()
        with Store(path) as store:
            run = label_llm_run(store, self.config(concurrency, **kw), self.latents, progress=False)
        wall = time.perf_counter() - t0
        s = run.stats
        n = len(run.labelled) or 1
        return {
            "wall": wall,
            "requests": len(self.server.requests),
            "cached": s.cached,
            "retried": s.retried,
            "labelled": len(run.labelled),
            "failed": len(run.failed),
            "per_s": len(run.labelled) / wall if run.labelled else 0.0,
            "share": len(self.server.requests) * self.args.delay / concurrency / wall,
            "tokens": (s.prompt_tokens + s.completion_tokens) / n if run.labelled else None,
            "cost_1k": s.cost / n * 1000 if run.labelled else None,
        }


def row(name: str, c: object, r: dict, note: str = "") -> str:
    tokens = "" if r.get("tokens") is None else f"{r['tokens']:.0f}"
    cost = "" if r.get("cost_1k") is None else f"{r['cost_1k']:.3f}"
    share = "" if r.get("share") is None else f"{r['share']:.2f}"
    return (
        f"| {name} | {c} | {r['wall']:.2f} | {r.get('requests', '')} | {r.get('cached', '')} "
        f"| {r['per_s']:.1f} | {share} | {tokens} | {cost} | {r['failed']} | {note} |"
    )


def labelling_table(args: argparse.Namespace, work: Path) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    top = levels[-1]
    print(
        f"{args.docs} documents, {args.latents} latents labelled and scored (2 calls each), "
        f"{args.delay:.3f} s endpoint latency per request; prices ${args.price_in:g} / "
        f"${args.price_out:g} per 1M tokens in / out; tokens are the test server's word counts"
    )
    print()
    print(
        "| run | concurrency | wall s | requests | cached | latents/s | latency share "
        "| tokens/latent | $ per 1k latents | failed | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    with FakeOpenAI() as server:
        server.delay = args.delay
        bench = Bench(args, server, work)
        by_c = {}
        path = None
        for c in levels:
            path = bench.fresh(f"c{c}")
            by_c[c] = r = bench.llm(path, c)
            print(row(f"LLM, concurrency {c}", c, r), flush=True)
        assert path is not None
        with Store(path) as store:
            store.con.execute("DELETE FROM label_scores")
            store.con.execute("DELETE FROM latent_labels")
        r = bench.llm(path, top)
        speedup = by_c[top]["wall"] / r["wall"]
        note = f"{speedup:.1f}x faster than uncached at concurrency {top}"
        if levels[0] != top:
            note += f", {by_c[levels[0]]['wall'] / r['wall']:.1f}x than at {levels[0]}"
        r["tokens"] = r["cost_1k"] = r["share"] = None  # nothing was spent
        print(row("LLM, from llm_cache", top, r, note))
        r = bench.llm(path, top)
        r["tokens"] = r["cost_1k"] = r["share"] = None
        r["per_s"] = args.latents / r["wall"]
        print(row("LLM, already labelled", top, r, "every latent checked and skipped"))
        path = bench.fresh("failures")
        server.reset()
        for _ in range(5):
            server.fail("500")
            server.fail("429", retry_after=1.0)
        server.fail("timeout", times=2, seconds=3.0)
        r = bench.llm(path, top, reset=False, timeout=2.0)
        r["share"] = None  # the waits are the backoff's, not the endpoint's latency
        print(row("LLM, failures injected", top, r, f"{r['retried']} retried requests"))
    path = bench.fresh("offline")
    t0 = time.perf_counter()
    with Store(path) as store:
        store.con.execute("SET enable_progress_bar = false")
        run = label_offline_run(store, all_firing=True, progress=False)
    wall = time.perf_counter() - t0
    r = {"wall": wall, "per_s": len(run.labelled) / wall, "failed": 0, "tokens": 0, "cost_1k": 0.0}
    r["requests"] = r["cached"] = 0
    print(row("offline (log-odds)", "1", r, f"{len(run.labelled)} latents, no endpoint"))


def scale_table(args: argparse.Namespace, work: Path) -> None:
    path = work / "scale.duckdb"
    t0 = time.perf_counter()
    info = build_bulk_store(path, docs=args.scale_docs, per_doc=args.scale_per_doc, latents=16384)
    print()
    print(
        f"example selection at scale: {args.scale_docs:,} documents, {info['rows']:,} "
        f"doc_latents rows (built in {time.perf_counter() - t0:.0f} s), DuckDB memory_limit "
        "512MB, median of 3 runs per latent"
    )
    print()
    print("| latent | documents where it fired | latent_examples ms | latent_near_misses ms |")
    print("|---|---:|---:|---:|")
    with Store(path) as store:
        con = store.con
        con.execute("SET enable_progress_bar = false")
        con.execute("SET memory_limit = '512MB'")
        counts = con.execute(
            "SELECT latent_id, sum(n_fired) AS n FROM latent_counts GROUP BY latent_id "
            "ORDER BY n DESC, latent_id"
        ).fetchall()
        picks = {
            "most common": counts[0],
            "median": counts[len(counts) // 2],
            "rare": counts[int(len(counts) * 0.99)],
        }
        # the two queries the LLM labeler runs per latent (saedb.llm_labels.latent_examples)
        examples = (
            "SELECT count(*) FROM latent_examples(?, sae := 1, n_pos := ?, top := ?, "
            "n_neg := ?, context := ?, seed := 0)",
            [L.N_POS + L.S_POS, L.TOP, L.N_NEG + L.S_NEG + L.N_NEAR + L.S_NEAR, L.CONTEXT],
        )
        near = (
            "SELECT count(*) FROM latent_near_misses(?, sae := 1, n := ?, top := ?, "
            "context := ?, seed := 0)",
            [L.N_NEAR + L.S_NEAR, L.TOP, L.CONTEXT],
        )
        for name, (latent, n) in picks.items():
            ms = []
            for sql, params in (examples, near):
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    con.execute(sql, [latent, *params]).fetchall()
                    times.append(time.perf_counter() - t)
                ms.append(statistics.median(times) * 1000)
            print(f"| {name} ({latent}) | {int(n):,} | {ms[0]:.0f} | {ms[1]:.0f} |", flush=True)
        with FakeOpenAI() as server:
            cfg = LLMConfig(base_url=server.base_url, model="bench", concurrency=4)
            chosen = [int(lat) for lat, _ in counts[:: max(len(counts) // 8, 1)][:8]]
            t = time.perf_counter()
            run = label_llm_run(store, cfg, chosen, progress=False)
            wall = time.perf_counter() - t
    print()
    print(
        f"LLM labeler end to end on this store: {len(run.labelled)} latents labelled and "
        f"scored in {wall:.1f} s ({wall / max(len(chosen), 1):.2f} s per latent, concurrency "
        f"4, no endpoint latency), {len(run.failed)} failed"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latents", type=int, default=40)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--price-in", type=float, default=0.15)
    ap.add_argument("--price-out", type=float, default=0.60)
    ap.add_argument("--scale-docs", type=int, default=1_000_000)
    ap.add_argument("--scale-per-doc", type=float, default=50)
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}, duckdb {duckdb.__version__}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        labelling_table(args, Path(tmp))
        if args.scale_docs:
            scale_table(args, Path(tmp))


if __name__ == "__main__":
    main()
