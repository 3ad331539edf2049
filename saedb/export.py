"""Export a store's tables to Parquet (or CSV) files that other engines read.

``export(store, out_dir)`` writes every table of the store (``schema_migrations`` aside: its
content is the manifest's ``schema_version``) to ``out_dir/<table>/``, one directory per
table so that Spark, Trino, BigQuery and DuckDB can point an external table at it.
``doc_latents``, the big one, is hive-partitioned by SAE and dataset
(``doc_latents/sae_id=1/dataset_id=2/part_0.parquet``); its rows carry their document's
``dataset_id`` for that, taken from ``documents`` (a document's dataset never changes).

Types are made portable on the way out, column by column (:func:`portable_type`): JSON becomes
a string column, TIMESTAMPTZ a UTC-adjusted Parquet timestamp, unsigned integers the next wider
signed type; types other engines cannot read (HUGEINT, UNION, MAP, INTERVAL, ...) are refused
with the table and column named. Every table's row count is read back from the files written
and compared with the store's (``doc_latents`` per partition too): nothing is silently
dropped. ``manifest.json`` is written last and lists the tables, their columns, row counts
and files (size and SHA-256), the store's schema version and saedb's version; a directory
without it is an unfinished export.

While ``saedb serve`` holds the store (no other process may open the file), the export reads
a snapshot taken through the server in one transaction (:mod:`saedb.server.snapshot`), and
the manifest says so under ``read_from``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from saedb import __version__, migrations
from saedb.catalog import quote_identifier, quote_literal
from saedb.errors import ConfigError, StoreError

FORMATS = ("parquet", "csv")
"""The file formats ``export`` writes."""

MANIFEST = "manifest.json"

PARTITIONS = {"doc_latents": ("sae_id", "dataset_id")}
"""Tables written hive-partitioned, and their partition columns (in path order)."""

SKIPPED = {"schema_migrations": "its content is the manifest's schema_version"}
"""Tables of the store that are not exported, and why (the manifest lists them too)."""

_SIMPLE = {
    "BOOLEAN": "BOOLEAN",
    "TINYINT": "TINYINT",
    "SMALLINT": "SMALLINT",
    "INTEGER": "INTEGER",
    "BIGINT": "BIGINT",
    "UTINYINT": "SMALLINT",
    "USMALLINT": "INTEGER",
    "UINTEGER": "BIGINT",
    "FLOAT": "FLOAT",
    "DOUBLE": "DOUBLE",
    "VARCHAR": "VARCHAR",
    "JSON": "VARCHAR",
    "BLOB": "BLOB",
    "DATE": "DATE",
    "TIMESTAMP": "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP WITH TIME ZONE",
    "UUID": "VARCHAR",
}
_REFUSED = {
    "HUGEINT": "128-bit integers",
    "UHUGEINT": "unsigned 128-bit integers",
    "UBIGINT": "unsigned 64-bit integers",
    "INTERVAL": "intervals",
    "TIME": "times of day",
    "TIME WITH TIME ZONE": "times of day with a zone",
    "BIT": "bit strings",
    "VARINT": "arbitrary-precision integers",
    "BIGNUM": "arbitrary-precision integers",
    "TIMESTAMP_NS": "nanosecond timestamps",
    "TIMESTAMP_MS": "millisecond timestamps",
    "TIMESTAMP_S": "second timestamps",
}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


def portable_type(duckdb_type: str, where: str) -> str:
    """The type a column of ``duckdb_type`` is exported as, readable by Spark, Trino,
    BigQuery and DuckDB; raise :class:`StoreError` naming ``where`` for a type they cannot read.

    Lists keep their element type made portable (``FLOAT[]`` stays, ``JSON[]`` becomes
    ``VARCHAR[]``); structs keep their fields; ENUMs become strings.
    """
    t = duckdb_type.strip()
    if t.endswith("[]"):
        return portable_type(t[:-2], where) + "[]"
    if re.search(r"\[\d+\]$", t):  # fixed-size ARRAY: Parquet has only lists
        return portable_type(t[: t.rindex("[")], where) + "[]"
    if t in _SIMPLE:
        return _SIMPLE[t]
    if t.startswith("ENUM("):
        return "VARCHAR"
    decimal = _DECIMAL.match(t)
    if decimal:
        if int(decimal[1]) > 38:
            raise StoreError(f"{where}: {t} has more than 38 digits, which BigQuery cannot read")
        return t
    if t.startswith("STRUCT("):
        return "STRUCT(" + ", ".join(_struct_fields(t[7:-1], where)) + ")"
    what = _REFUSED.get(t) or next(
        (f"{kind} values" for kind in ("UNION", "MAP") if t.startswith(kind + "(")), None
    )
    raise StoreError(
        f"{where}: type {t} ({what or 'not a portable type'}) cannot be read by Spark, Trino "
        "and BigQuery alike; cast the column in a view and export that, or change the schema"
    )


def _struct_fields(body: str, where: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(body + ","):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            name, _, typ = body[start:i].strip().partition(" ")
            out.append(f"{name} {portable_type(typ, f'{where}.{name}')}")
            start = i + 1
    return out


@dataclass
class TableExport:
    """What was written for one table (one entry of the manifest)."""

    name: str
    rows: int
    columns: list[dict[str, str]]
    path: str
    partition_by: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.files)

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "partition_by": self.partition_by,
            "columns": self.columns,
            "files": self.files,
        }


def _tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = 'main' AND NOT temporary "
        "ORDER BY table_name"
    ).fetchall()
    return [r[0] for r in rows if r[0] not in SKIPPED and not r[0].startswith("_")]


def _select_list(con: duckdb.DuckDBPyConnection, table: str) -> tuple[str, list[dict[str, str]]]:
    described = con.execute(f"DESCRIBE {quote_identifier(table)}").fetchall()
    parts, columns = [], []
    for name, typ, *_ in described:
        out = portable_type(typ, f"table {table}, column {name}")
        col = quote_identifier(name)
        parts.append(f"t.{col}" if out == typ else f"CAST(t.{col} AS {out}) AS {col}")
        columns.append({"name": name, "type": out})
    return ", ".join(parts), columns


def _prepare_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ConfigError(
            f"{out} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); choose an empty "
            "or new directory, or pass --overwrite to replace a previous saedb export there"
        )
    manifest = out / MANIFEST
    if not manifest.is_file():
        raise ConfigError(
            f"{out} is not empty and holds no {MANIFEST}, so it is not a saedb export; "
            "--overwrite only replaces a previous export: choose an empty or new directory"
        )
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8"))
        ours = {MANIFEST, *(t["path"] for t in previous["tables"].values())}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{manifest} cannot be read ({exc}); remove {out} yourself") from exc
    stray = [e for e in entries if e not in ours]
    if stray:
        raise ConfigError(
            f"{out} holds entries that the previous export's {MANIFEST} does not list "
            f"({', '.join(stray[:5])}); --overwrite removes only a previous export: move them "
            "or choose another directory"
        )
    manifest.unlink()  # first: a directory without a manifest is an unfinished export
    for entry in entries:
        path = out / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reader(fmt: str, pattern: str, hive: bool) -> str:
    if fmt == "parquet":
        return f"read_parquet({quote_literal(pattern)}, hive_partitioning = {str(hive).lower()})"
    return (
        f"read_csv({quote_literal(pattern)}, header = true, hive_partitioning = "
        f"{str(hive).lower()}, all_varchar = true)"
    )


def _export_table(
    con: duckdb.DuckDBPyConnection,
    table: str,
    out: Path,
    fmt: str,
    announce: Callable[[int], None] | None = None,
) -> TableExport:
    started = time.perf_counter()
    select, columns = _select_list(con, table)
    source = f"{quote_identifier(table)} AS t"
    partition_by = list(PARTITIONS.get(table, ()))
    if table == "doc_latents":
        # the dataset of each row's document, for the partition path (a LEFT JOIN: a row whose
        # document is missing is still written, under dataset_id=NULL, and counted)
        select += ", d.dataset_id"
        source += " LEFT JOIN documents AS d ON d.doc_id = t.doc_id"
        columns.append({"name": "dataset_id", "type": "INTEGER"})
    expected = con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0]
    if announce is not None:
        announce(int(expected))
    target = out / table
    options = [f"FORMAT {fmt}"]
    if fmt == "csv":
        options.append("HEADER true")
    order = ""
    if partition_by and expected:
        target.mkdir()
        options += [
            "PARTITION_BY (" + ", ".join(quote_identifier(c) for c in partition_by) + ")",
            "FILENAME_PATTERN 'part_{i}'",
        ]
        destination = target
        order = " ORDER BY t.latent_id, t.doc_id"
    else:
        # one file; an empty partitioned table too (zero rows, every column, no partitions)
        target.mkdir()
        destination = target / f"{table}.{fmt}"
        partition_by = [] if not expected else partition_by
    con.execute(
        f"COPY (SELECT {select} FROM {source}{order}) TO {quote_literal(str(destination))} "
        f"({', '.join(options)})"
    )
    files = sorted(p for p in target.rglob(f"*.{fmt}") if p.is_file())
    pattern = str(target / ("**" if partition_by else "") / f"*.{fmt}")
    written = con.execute(
        f"SELECT count(*) FROM {_reader(fmt, pattern, bool(partition_by))}"
    ).fetchall()[0][0]
    if written != expected:
        raise StoreError(
            f"exporting {table}: the store has {expected} rows but the files in {target} hold "
            f"{written}; the export is incomplete (no {MANIFEST} was written)"
        )
    if partition_by:
        keys = ", ".join(f"CAST({quote_identifier(c)} AS VARCHAR)" for c in partition_by)
        source_keys = ", ".join(
            f"CAST({'d' if c == 'dataset_id' else 't'}.{quote_identifier(c)} AS VARCHAR)"
            for c in partition_by
        )
        mismatch = con.execute(
            f"""
            SELECT count(*) FROM (
                (SELECT {source_keys}, count(*) FROM {source} GROUP BY ALL
                 EXCEPT ALL
                 SELECT {keys}, count(*) FROM {_reader(fmt, pattern, True)} GROUP BY ALL)
                UNION ALL
                (SELECT {keys}, count(*) FROM {_reader(fmt, pattern, True)} GROUP BY ALL
                 EXCEPT ALL
                 SELECT {source_keys}, count(*) FROM {source} GROUP BY ALL)
            )
            """
        ).fetchall()[0][0]
        if mismatch:
            raise StoreError(
                f"exporting {table}: the row counts per partition of the files in {target} "
                f"differ from the store's in {mismatch} partitions; the export is incomplete"
            )
    return TableExport(
        name=table,
        rows=int(expected),
        columns=columns,
        path=table,
        partition_by=partition_by,
        files=[
            {"path": str(p.relative_to(out)), "bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in files
        ],
        seconds=time.perf_counter() - started,
    )


def export(
    store: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "parquet",
    overwrite: bool = False,
    tables: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Export the tables of ``store`` into ``out_dir`` and return the manifest (a dict).

    ``tables`` picks some tables (default: all but those in :data:`SKIPPED`). ``out_dir``
    must be empty or new; with ``overwrite`` a previous saedb export there (a directory with
    a ``manifest.json`` and nothing it does not list) is replaced. ``progress`` prints one
    line per table on stderr.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid formats are {', '.join(FORMATS)}")
    store = Path(store)
    if not store.exists():
        raise StoreError(f"no store at {store}; create it with: saedb init {store}")
    out = Path(out_dir)
    from saedb.server.snapshot import readable_store

    notify = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
    with readable_store(store, notify=notify) as (path, read_from):
        manifest = _export(store, path, out, fmt, overwrite, tables, progress)
    if read_from is not None:
        manifest["read_from"] = read_from
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _export(
    store: Path,
    path: Path,
    out: Path,
    fmt: str,
    overwrite: bool,
    tables: list[str] | None,
    progress: bool,
) -> dict[str, Any]:
    """Export the store readable at ``path`` (the store, or a snapshot of it); the manifest."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise StoreError(f"cannot open {store} read-only: {exc}") from exc
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute("SET TimeZone = 'UTC'")
        schema_version = migrations.current_version(con)
        available = _tables(con)
        chosen = available if tables is None else list(dict.fromkeys(tables))
        unknown = [t for t in chosen if t not in available]
        if unknown:
            raise ConfigError(
                f"no table {', '.join(map(repr, unknown))} in {store}; "
                f"tables: {', '.join(available)}"
            )
        _prepare_dir(out, overwrite)
        results: list[TableExport] = []
        con.execute("BEGIN TRANSACTION")  # one snapshot for every table
        for i, table in enumerate(chosen, 1):

            def announce(rows: int, i: int = i, table: str = table) -> None:
                print(
                    f"[{i}/{len(chosen)}] {table}: writing {rows:,} rows ...",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )

            result = _export_table(con, table, out, fmt, announce if progress else None)
            results.append(result)
            if progress:
                parts = f", partitioned by {', '.join(result.partition_by)}"
                files = f"{len(result.files)} file{'s' if len(result.files) != 1 else ''}"
                print(
                    f" {files}, {result.bytes / 2**20:.1f} MiB"
                    f"{parts if result.partition_by else ''}, row count verified "
                    f"({result.seconds:.1f}s)",
                    file=sys.stderr,
                )
        con.execute("COMMIT")
    except duckdb.Error as exc:
        raise StoreError(f"exporting {store} to {out} failed: {exc}") from exc
    finally:
        con.close()
    return {
        "saedb_version": __version__,
        "schema_version": schema_version,
        "format": fmt,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": str(store),
        "timestamps": "UTC (Parquet timestamps adjusted to UTC)",
        "not_exported": {t: why for t, why in SKIPPED.items()},
        "tables": {r.name: r.manifest_entry() for r in results},
    }
