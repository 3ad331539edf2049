"""Numbered schema migrations, recorded in the store itself.

A saedb store carries its schema version in the table ``schema_migrations``. The migrations are
the files ``sql/schema/NNNN_<what>.sql`` shipped in the package ``saedb.sql``; :func:`migrate`
applies every file whose version is not yet recorded, in order, each inside its own transaction
together with the row that records it, so a store is always at a well-defined version.

Opening a store that a newer saedb has upgraded fails with a :class:`MigrationError` that says
both versions and to upgrade saedb; a migration that fails is rolled back and reported with the
file's name and DuckDB's own message.

This module also owns :func:`sql_root`, the one place that finds the shipped SQL files (used by
``saedb.catalog`` too).
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from saedb.errors import MigrationError

MIGRATIONS_TABLE = "schema_migrations"
"""The table that records which migrations a store has had."""

_MIGRATION_FILE = re.compile(r"^(?P<version>\d{4})_(?P<what>[a-z0-9_]+)\.sql$")

_CREATE_MIGRATIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
)
"""


def sql_root() -> Traversable:
    """The directory holding saedb's SQL files (``schema/``, ``views/``, ``macros/``).

    In an installed saedb (wheel or editable install) this is the package resource
    ``saedb.sql``. When saedb is imported straight from a source checkout without being
    installed, the package ``saedb.sql`` does not exist (it is a mapping of the top-level
    ``sql/`` directory made by the build), so the checkout's ``sql/`` directory is used.
    """
    try:
        root = importlib.resources.files("saedb.sql")
        if root.joinpath("schema").is_dir():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "sql"


@dataclass(frozen=True)
class Migration:
    """One schema migration file: ``NNNN_<what>.sql``."""

    version: int
    """The number at the start of the file name; migrations run in this order."""
    name: str
    """The file name without ``.sql`` (``0001_core``); recorded in ``schema_migrations``."""
    source: Traversable
    """The file itself."""

    def sql(self) -> str:
        """The SQL text of the migration."""
        return self.source.read_text(encoding="utf-8")


def discover(schema_dir: Traversable | Path | None = None) -> list[Migration]:
    """All migrations in ``schema_dir`` (default: the shipped ``sql/schema``), in order.

    Raises :class:`MigrationError` for a ``.sql`` file whose name is not ``NNNN_<what>.sql``
    and for two files with the same number.
    """
    directory = schema_dir if schema_dir is not None else sql_root().joinpath("schema")
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_<what>.sql "
                "(four digits, then lower-case letters, digits and underscores)"
            )
        version = int(match["version"])
        if version in found:
            raise MigrationError(
                f"migration files {found[version].source.name!r} and {entry.name!r} "
                f"have the same version {version}"
            )
        found[version] = Migration(version, entry.name.removesuffix(".sql"), entry)
    return [found[v] for v in sorted(found)]


def latest_version(schema_dir: Traversable | Path | None = None) -> int:
    """The version of the newest migration this saedb ships (0 if there are none)."""
    migrations = discover(schema_dir)
    return migrations[-1].version if migrations else 0


def _has_migrations_table(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = current_schema() "
        "AND table_name = ?",
        [MIGRATIONS_TABLE],
    ).fetchone()
    return bool(row and row[0])


def applied_versions(con: duckdb.DuckDBPyConnection) -> set[int]:
    """The versions recorded in the store's ``schema_migrations`` (empty for a new store)."""
    if not _has_migrations_table(con):
        return set()
    rows = con.execute(f"SELECT version FROM {MIGRATIONS_TABLE}").fetchall()
    return {int(r[0]) for r in rows}


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The store's schema version: the highest recorded migration, 0 for a new store."""
    versions = applied_versions(con)
    return max(versions) if versions else 0


def check_version(
    con: duckdb.DuckDBPyConnection, schema_dir: Traversable | Path | None = None
) -> int:
    """Return the store's version, or raise when it is newer than this saedb understands."""
    current = current_version(con)
    latest = latest_version(schema_dir)
    if current > latest:
        raise MigrationError(
            f"this store has schema version {current}, but this saedb only knows versions "
            f"up to {latest}: upgrade saedb to open it"
        )
    return current


def pending(
    con: duckdb.DuckDBPyConnection, schema_dir: Traversable | Path | None = None
) -> list[Migration]:
    """The migrations not yet applied to the store, in the order they will run."""
    check_version(con, schema_dir)
    done = applied_versions(con)
    return [m for m in discover(schema_dir) if m.version not in done]


def migrate(
    con: duckdb.DuckDBPyConnection, schema_dir: Traversable | Path | None = None
) -> list[str]:
    """Bring the store up to the newest schema; return the names of the migrations applied.

    Each migration runs in its own transaction together with the ``schema_migrations`` row
    that records it; a failing one is rolled back (earlier ones stay applied) and raised as a
    :class:`MigrationError` naming the file. A store that is up to date is only read, so this
    is safe to call on every open, read-only connections included.
    ``schema_dir`` overrides the shipped ``sql/schema`` directory (for tests).
    """
    applied: list[str] = []
    for migration in pending(con, schema_dir):
        sql = migration.sql()
        try:
            con.execute("BEGIN TRANSACTION")
        except duckdb.Error as exc:
            raise MigrationError(
                f"cannot start the transaction for migration {migration.source.name}: {exc}"
            ) from exc
        try:
            con.execute(_CREATE_MIGRATIONS_TABLE)
            con.execute(sql)
            con.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            con.execute("COMMIT")
        except duckdb.Error as exc:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:  # the transaction may already be aborted and gone
                pass
            raise MigrationError(
                f"migration {migration.source.name} failed and was rolled back: {exc}"
            ) from exc
        applied.append(migration.name)
    return applied
