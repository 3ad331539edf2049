"""The ``saedb export`` and ``saedb sql-export`` commands: the store for other engines.

``export`` writes the tables as Parquet (or CSV) files (:mod:`saedb.export`); ``sql-export``
writes the catalog's views and macros transpiled for Postgres, Spark or Trino
(:mod:`saedb.sql_export`). ``saedb.cli`` registers the parsers and turns errors into one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parsers(sub: Any) -> None:
    """Add ``export`` and ``sql-export`` to the ``saedb`` subparsers ``sub``."""
    from saedb.export import FORMATS, PARTITIONS
    from saedb.sql_export import DIALECTS

    parts = "; ".join(f"{t} partitioned by {', '.join(c)}" for t, c in PARTITIONS.items())
    p = sub.add_parser(
        "export",
        help="write the store's tables as Parquet (or CSV) for Spark, Trino, BigQuery, DuckDB",
        description="Write every table of the store into DIR, one directory per table "
        f"({parts}, hive style: sae_id=1/dataset_id=2/), with portable types (JSON as "
        "strings, timestamps in UTC, no DuckDB-only types), then read each table's row count "
        "back from the files and compare it with the store's. DIR/manifest.json, written "
        "last, lists tables, columns, row counts, files with sizes and SHA-256, the schema "
        "version and saedb's version. While saedb serve holds the store, the tables are read "
        "through it in one transaction (a snapshot in a temporary file next to the store). "
        "Pair it with saedb sql-export for the analyses.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument("dir", help="directory to write into (new or empty, unless --overwrite)")
    p.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default="parquet",
        help="file format (default: parquet; csv writes lists as [a, b] text)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous saedb export in DIR (refused if DIR holds anything else)",
    )
    p.add_argument(
        "--table",
        action="append",
        default=None,
        metavar="NAME",
        help="export only this table (repeatable; default: every table)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no per-table progress lines")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "sql-export",
        help="the views and macros transpiled for Postgres, Spark or Trino (with sqlglot)",
        description="Transpile the catalog's views and macros (sql/) with sqlglot for another "
        "engine, over the tables that saedb export writes (same names and columns). Postgres: "
        "views, scalar macros as SQL functions, table macros as SQL functions returning TABLE. "
        "Spark and Trino: views, and table macros as parameterised queries (Spark: named "
        ":param markers for spark.sql(query, args=...); Trino: ? markers for PREPARE/EXECUTE "
        "USING, in the order the file's header lists); scalar macros are inlined. Every object "
        "is reported on stderr with what it became, or why it could not be transpiled.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument("--dialect", "-d", choices=DIALECTS, required=True, help="target engine")
    p.add_argument(
        "--out",
        "-o",
        default=None,
        metavar="DIR",
        help="write one .sql file per object and all.sql into DIR (default: all to stdout)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no per-object report on stderr")
    p.set_defaults(func=cmd_sql_export)


def cmd_export(args: argparse.Namespace) -> int:
    from saedb.export import export

    manifest = export(
        args.store,
        args.dir,
        fmt=args.format,
        overwrite=args.overwrite,
        tables=args.table,
        progress=not args.quiet,
    )
    rows = sum(t["rows"] for t in manifest["tables"].values())
    files = sum(len(t["files"]) for t in manifest["tables"].values())
    print(
        f"{args.dir}: {len(manifest['tables'])} tables, {rows:,} rows in {files} "
        f"{args.format} files; manifest: {args.dir}/manifest.json"
    )
    return 0


def cmd_sql_export(args: argparse.Namespace) -> int:
    from saedb.sql_export import sql_export, write_out

    result = sql_export(args.store, args.dialect)
    if not args.quiet:
        for item in result.objects:
            line = f"{item.name}: {item.became}" if item.ok else f"{item.name}: NOT transpiled: "
            print(line + ("" if item.ok else item.reason), file=sys.stderr)
    if args.out:
        write_out(result, args.out)
        print(
            f"{args.out}: {len(result.exported)} objects for {args.dialect}, "
            f"{len(result.failed)} not transpiled"
        )
    else:
        sys.stdout.write(result.script())
    return 0
