"""What `saedb export` and `saedb sql-export` cost: time, size on disk, rows per second.

    python bench/export.py [--docs 100000] [--per-doc 64] [--latents 16384] [--datasets 4]
                           [--format parquet] [--dir DIR]

Builds a synthetic store with ``bench/synthetic.build_bulk_store`` (saedb's schema and
catalog, bulk-filled), exports it (one timed run: an export writes a fresh directory), and
prints a markdown table per table (rows, files, MiB, seconds) plus the store's own size and
the time of ``sql-export`` for each dialect. The row counts are verified by the export itself.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from synthetic import build_bulk_store

from saedb.export import export
from saedb.sql_export import DIALECTS, sql_export


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--per-doc", type=float, default=64)
    ap.add_argument("--latents", type=int, default=16_384)
    ap.add_argument("--datasets", type=int, default=4)
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Path(tmp) / "store.duckdb"
        built = time.perf_counter()
        build_bulk_store(
            store,
            docs=args.docs,
            per_doc=args.per_doc,
            latents=args.latents,
            datasets=args.datasets,
        )
        built = time.perf_counter() - built
        started = time.perf_counter()
        manifest = export(store, Path(tmp) / "export", fmt=args.format, progress=False)
        total = time.perf_counter() - started
        rows = sum(t["rows"] for t in manifest["tables"].values())
        size = sum(f["bytes"] for t in manifest["tables"].values() for f in t["files"])
        print(
            f"# saedb export: {args.docs:,} documents, ~{args.per_doc:g} latents each, "
            f"{args.datasets} datasets, {args.format}"
        )
        print(
            f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; store built in {built:.1f}s, "
            f"{store.stat().st_size / 2**20:.1f} MiB\n"
        )
        print("| table | rows | files | MiB |")
        print("|---|---:|---:|---:|")
        for name, t in manifest["tables"].items():
            if t["rows"]:
                mib = sum(f["bytes"] for f in t["files"]) / 2**20
                print(f"| {name} | {t['rows']:,} | {len(t['files'])} | {mib:.1f} |")
        print(
            f"\nexport: {total:.1f}s for {rows:,} rows ({rows / total:,.0f} rows/s), "
            f"{size / 2**20:.1f} MiB written, row counts verified\n"
        )
        print("| sql-export dialect | objects | not transpiled | seconds |")
        print("|---|---:|---:|---:|")
        for dialect in DIALECTS:
            started = time.perf_counter()
            result = sql_export(store, dialect)
            took = time.perf_counter() - started
            print(f"| {dialect} | {len(result.exported)} | {len(result.failed)} | {took:.2f} |")


if __name__ == "__main__":
    main()
