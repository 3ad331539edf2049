"""Throughput of the LLM labeler against an endpoint with latency (issue 4).

    python bench/llm_labels.py [--latents 40] [--delay 0.2] [--concurrency 1,4,16] [--docs 2000]

Builds a synthetic store (``--docs`` documents of filler words, ``--latents`` latents each
peaking on its own planted word, plus co-firing partner latents so near misses exist), starts
the test suite's OpenAI-compatible server (tests/openai_server.py) on 127.0.0.1 with
``--delay`` seconds of latency per request (a stand-in for a remote model's answer time; the
server's own work is negligible), and labels every latent with scoring, once per concurrency.
Each run starts from a fresh store (no cache). It prints per run: wall time, requests, latents
per second, the share of time spent waiting on the endpoint (requests x delay / concurrency /
wall, ideal 1.0), and then one run again on the same store to show that the second run pays for
nothing. What it measures is saedb's overhead (examples SQL, parsing, per-call commits) and how
well concurrency hides latency; it says nothing about any real model's speed or label quality.
"""

from __future__ import annotations

import argparse
import platform
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

from saedb import catalog, migrations  # noqa: E402
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
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        insert(
            con,
            "datasets",
            pd.DataFrame({"dataset_id": np.array([1, 2], np.int32), "name": ["a", "b"]}),
        )  # noqa: E501
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


def run_once(path: Path, server: FakeOpenAI, latents: list[int], concurrency: int) -> dict:
    server.reset()
    cfg = LLMConfig(base_url=server.base_url, model="bench", concurrency=concurrency)
    t0 = time.perf_counter()
    with Store(path) as store:
        run = label_llm_run(store, cfg, latents, progress=False)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "labelled": len(run.labelled),
        "failed": len(run.failed),
        "requests": len(server.requests),
        "cached": run.stats.cached,
        "latents_per_s": len(run.labelled) / wall if run.labelled else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latents", type=int, default=40)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--concurrency", default="1,4,16")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, python "
          f"{platform.python_version()}, duckdb {duckdb.__version__}")  # fmt: skip
    print(f"# {args.docs} documents, {args.latents} latents labelled and scored, "
          f"{args.delay:.3f} s endpoint latency per request")  # fmt: skip
    print(f"{'concurrency':>11} {'wall s':>8} {'requests':>8} {'cached':>6} {'latents/s':>9} "
          f"{'latency share':>13} {'failed':>6}")  # fmt: skip
    latents = list(range(args.latents))
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as server:
        server.delay = args.delay
        path = None
        for c in levels:
            path = Path(tmp) / f"c{c}.duckdb"
            build(path, args.docs, args.latents)
            r = run_once(path, server, latents, c)
            share = r["requests"] * args.delay / c / r["wall_s"]
            print(f"{c:>11} {r['wall_s']:>8.2f} {r['requests']:>8} {r['cached']:>6} "
                  f"{r['latents_per_s']:>9.2f} {share:>13.2f} {r['failed']:>6}")  # fmt: skip
        assert path is not None
        r = run_once(path, server, latents, levels[-1])
        print(f"second run on the same store: {r['requests']} requests, {r['labelled']} "
              f"labelled (all {args.latents} already labelled), {r['wall_s']:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
