"""Ingest throughput and where the time goes, for the default reader and SAE on a real corpus.

    python bench/ingest.py [--corpus data/fortunes] [--sae builtin:default] [--threads N]
                           [--repeat 1] [--batch-tokens 8192]

Ingests every JSONL file of the corpus directory into a fresh temporary store (one dataset
per file) and prints tokens/s and the share of wall time per stage: read (parse the file),
tokenize (incl. windows and batching), reader forward (stops at the SAE's layer), SAE encode,
pooling, store write (incl. the skip-existing lookup). The model load is reported apart and
not counted in the shares. The target is a forward share >= 90%: saedb adds < 10% on top of
the reader model.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (drops bench/ from sys.path: see _paths.py)
import torch

import saedb
from ingest.config import IngestConfig
from ingest.pipeline import STAGES, init_store, run_ingest

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "fortunes")
    ap.add_argument("--sae", default=None, help="SAE directory (default: the builtin SAE)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(args.corpus.glob("*.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "bench.duckdb"
        t0 = time.perf_counter()
        rec = init_store(store_path, sae=args.sae)
        load_s = time.perf_counter() - t0
        totals = dict.fromkeys(STAGES, 0.0)
        n_docs = n_tok = 0
        wall = 0.0
        with saedb.open(store_path) as store:
            for f in files:
                res = run_ingest(
                    store,
                    IngestConfig(
                        source=str(f),
                        dataset=f.stem,
                        batch_tokens=args.batch_tokens,
                        progress=False,
                    ),
                )
                for k, v in res.stage_seconds.items():
                    totals[k] += v
                n_docs += res.n_docs
                n_tok += res.n_tokens
                wall += res.seconds
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}"
    )
    print(
        f"reader {rec.reader_model} ({rec.hook_name}), SAE {rec.architecture} "
        f"{rec.d_in}->{rec.d_sae}; corpus {args.corpus.name}: {n_docs} documents, "
        f"{n_tok:,} tokens; store + model load {load_s:.1f}s (not in the shares)\n"
    )
    print("| stage | seconds | share of wall time |")
    print("|---|---:|---:|")
    for k in STAGES:
        print(f"| {k} | {totals[k]:.2f} | {totals[k] / wall:.1%} |")
    other = wall - sum(totals.values())
    print(f"| (untimed) | {other:.2f} | {other / wall:.1%} |")
    print(f"| **total** | {wall:.2f} | 100% |\n")
    print(
        f"throughput: {n_tok / wall:,.0f} tokens/s, {n_docs / wall:,.1f} documents/s; "
        f"reader forward share {totals['forward'] / wall:.1%} (target >= 90%)"
    )


if __name__ == "__main__":
    main()
