"""Schema migrations: numbered files applied once each, recorded in schema_migrations."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from saedb import migrations
from saedb.errors import MigrationError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    yield con
    con.close()


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def test_shipped_migrations_are_found() -> None:
    found = migrations.discover()
    assert found, "no migrations found under sql/schema"
    assert found[0].name == "0001_core"
    assert [m.version for m in found] == sorted({m.version for m in found})
    assert migrations.latest_version() == found[-1].version


def test_fresh_store_gets_every_version(store: duckdb.DuckDBPyConnection) -> None:
    assert migrations.current_version(store) == 0
    applied = migrations.migrate(store)
    assert applied == [m.name for m in migrations.discover()]
    assert migrations.current_version(store) == migrations.latest_version()
    rows = store.execute(
        "SELECT version, name, applied_at IS NOT NULL FROM schema_migrations ORDER BY version"
    ).fetchall()
    assert rows == [(m.version, m.name, True) for m in migrations.discover()]
    tables = {r[0] for r in store.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert {"datasets", "documents", "doc_latents", "doc_encodings", "settings"} <= tables


def test_rerun_applies_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "store.duckdb")
    with duckdb.connect(path) as con:
        assert migrations.migrate(con)
        assert migrations.migrate(con) == []
    with duckdb.connect(path) as con:  # recorded in the file, not in memory
        assert migrations.migrate(con) == []
        assert migrations.current_version(con) == migrations.latest_version()


def test_up_to_date_store_migrates_read_only(tmp_path: Path) -> None:
    path = str(tmp_path / "store.duckdb")
    with duckdb.connect(path) as con:
        migrations.migrate(con)
    with duckdb.connect(path, read_only=True) as con:
        assert migrations.migrate(con) == []


def test_future_version_says_upgrade_saedb(store: duckdb.DuckDBPyConnection) -> None:
    migrations.migrate(store)
    latest = migrations.latest_version()
    future = latest + 7
    store.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [future, "9999_future"]
    )
    with pytest.raises(MigrationError) as info:
        migrations.migrate(store)
    message = str(info.value)
    assert str(future) in message and str(latest) in message
    assert "upgrade saedb" in message
    with pytest.raises(MigrationError):
        migrations.check_version(store)


def test_broken_migration_rolls_back_and_names_the_file(
    store: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    schema = write(
        tmp_path / "schema",
        {
            "0001_first.sql": "CREATE TABLE first_table (i INTEGER);",
            "0002_broken.sql": (
                "CREATE TABLE half_done (i INTEGER);\n"
                "INSERT INTO first_table VALUES (1);\n"
                "SELECT * FROM no_such_table;\n"
            ),
        },
    )
    with pytest.raises(MigrationError) as info:
        migrations.migrate(store, schema)
    message = str(info.value)
    assert "0002_broken.sql" in message
    assert "no_such_table" in message  # DuckDB's own message passes through
    assert migrations.current_version(store) == 1  # the first migration stays applied
    tables = {r[0] for r in store.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "first_table" in tables and "half_done" not in tables
    assert store.execute("SELECT count(*) FROM first_table").fetchone() == (0,)

    (schema / "0002_broken.sql").write_text("CREATE TABLE half_done (i INTEGER);")
    assert migrations.migrate(store, schema) == ["0002_broken"]
    assert migrations.current_version(store) == 2


def test_shipped_directory_can_be_swapped(
    store: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "sql"
    write(root / "schema", {"0001_one.sql": "CREATE TABLE one (i INTEGER);"})
    monkeypatch.setattr(migrations, "sql_root", lambda: root)
    assert migrations.latest_version() == 1
    assert migrations.migrate(store) == ["0001_one"]

    write(root / "schema", {"0002_two.sql": "SELECT broken syntax here FROM;"})
    with pytest.raises(MigrationError, match="0002_two.sql"):
        migrations.migrate(store)
    assert migrations.current_version(store) == 1


@pytest.mark.parametrize(
    "files, complaint",
    [
        ({"1_core.sql": "SELECT 1;"}, "1_core.sql"),
        ({"0001_Core-x.sql": "SELECT 1;"}, "0001_Core-x.sql"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "same version 1"),
    ],
)
def test_badly_named_migrations_are_refused(
    tmp_path: Path, files: dict[str, str], complaint: str
) -> None:
    schema = write(tmp_path / "schema", files)
    with pytest.raises(MigrationError, match=complaint):
        migrations.discover(schema)


def test_other_files_in_schema_dir_are_ignored(tmp_path: Path) -> None:
    schema = write(tmp_path / "schema", {"README.md": "notes", "0003_x.sql": "SELECT 1;"})
    assert [m.name for m in migrations.discover(schema)] == ["0003_x"]
    assert migrations.latest_version(schema) == 3


def test_sql_root_falls_back_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    assert migrations.sql_root().joinpath("schema").is_dir()

    def missing(name: str) -> None:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    root = migrations.sql_root()
    assert root == Path(migrations.__file__).resolve().parent.parent / "sql"
    assert root.joinpath("schema", "0001_core.sql").is_file()
