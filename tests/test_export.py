"""``saedb export``: every table written to Parquet (or CSV) and read back, compared with the
store, with DuckDB and with pyarrow; the partition layout; types other engines read; refusals.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from saedb.cli import main
from saedb.errors import ConfigError, StoreError
from saedb.export import export, portable_type
from saedb.sql_export import sql_export
from tests.export_store import build_store
from tests.serve_util import ROOT, serve


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("exportstore") / "store.duckdb")


@pytest.fixture(scope="module")
def exported(store: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "out"
    manifest = export(store, out, progress=False)
    return out, manifest


def _store_rows(store: Path, table: str, columns: list[dict]) -> list[tuple]:
    """The store's rows in the exported column order, with the export's portable types and
    timestamps as epoch seconds (so no time zone library is involved)."""
    with duckdb.connect(str(store), read_only=True) as con:
        parts = []
        for c in columns:
            name = c["name"]
            src = (
                "d.dataset_id" if (table, name) == ("doc_latents", "dataset_id") else f't."{name}"'
            )
            parts.append(_comparable(src, c["type"]))
        join = " LEFT JOIN documents d ON d.doc_id = t.doc_id" if table == "doc_latents" else ""
        return sorted(
            con.execute(f'SELECT {", ".join(parts)} FROM "{table}" t{join}').fetchall(), key=repr
        )


def _comparable(expr: str, typ: str) -> str:
    if typ.startswith("TIMESTAMP"):
        return f"epoch({expr})"
    return f"CAST({expr} AS {typ})"


def test_manifest(store: Path, exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    with duckdb.connect(str(store), read_only=True) as con:
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
            ).fetchall()
        }
        version = con.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0]
    assert set(manifest["tables"]) == tables - {"schema_migrations"}
    assert "schema_migrations" in manifest["not_exported"]
    assert manifest["schema_version"] == version
    assert manifest["saedb_version"]
    for entry in manifest["tables"].values():
        assert entry["files"]
        for f in entry["files"]:
            data = (out / f["path"]).read_bytes()
            assert len(data) == f["bytes"]
            assert hashlib.sha256(data).hexdigest() == f["sha256"]


def test_every_table_round_trips_through_duckdb(store: Path, exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    with duckdb.connect() as con:
        for table, entry in manifest["tables"].items():
            hive = bool(entry["partition_by"])
            glob = str(out / entry["path"] / ("**/*.parquet" if hive else "*.parquet"))
            cols = ", ".join(_comparable(f'"{c["name"]}"', c["type"]) for c in entry["columns"])
            got = sorted(
                con.execute(
                    f"SELECT {cols} FROM read_parquet('{glob}', hive_partitioning = {hive})"
                ).fetchall(),
                key=repr,
            )
            want = _store_rows(store, table, entry["columns"])
            assert len(got) == entry["rows"] == len(want), table
            assert got == want, table


def test_every_table_round_trips_through_pyarrow(store: Path, exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    for table, entry in manifest["tables"].items():
        data = pads.dataset(
            out / entry["path"],
            format="parquet",
            partitioning="hive" if entry["partition_by"] else None,
        ).to_table()
        names = [c["name"] for c in entry["columns"]]
        assert sorted(data.column_names) == sorted(names), table
        assert data.num_rows == entry["rows"], table
        for c in entry["columns"]:
            field = data.schema.field(c["name"])
            assert not pa.types.is_large_string(field.type)
            if c["type"] == "TIMESTAMP WITH TIME ZONE":
                assert field.type.tz == "UTC", (table, c["name"])
        # values through pyarrow, against DuckDB's reading of the store
        with duckdb.connect() as con:
            con.register("arrow_rows", data)
            cols = ", ".join(
                _comparable(f'"{n}"', c["type"])
                for n, c in zip(names, entry["columns"], strict=True)
            )
            got = sorted(con.execute(f"SELECT {cols} FROM arrow_rows").fetchall(), key=repr)
        assert got == _store_rows(store, table, entry["columns"]), table


def test_portable_types(exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    documents = manifest["tables"]["documents"]["columns"]
    assert {"name": "metadata", "type": "VARCHAR"} in documents  # JSON as a string
    schema = pq.read_schema(next((out / "documents").glob("*.parquet")))
    assert pa.types.is_string(schema.field("metadata").type)
    assert schema.field("ingested_at").type == pa.timestamp("us", tz="UTC")
    embedding = pq.read_schema(next((out / "label_embeddings").glob("*.parquet")))
    assert embedding.field("embedding").type == pa.list_(pa.float32())
    forbidden = ("HUGEINT", "UBIGINT", "UINTEGER", "UNION", "MAP", "JSON", "INTERVAL")
    for entry in manifest["tables"].values():
        for c in entry["columns"]:
            assert not any(c["type"].startswith(f) for f in forbidden), c


def test_partition_layout(store: Path, exported: tuple[Path, dict]) -> None:
    out, manifest = exported
    entry = manifest["tables"]["doc_latents"]
    assert entry["partition_by"] == ["sae_id", "dataset_id"]
    dirs = {
        p.parent.relative_to(out / "doc_latents").as_posix()
        for p in (out / "doc_latents").rglob("*.parquet")
    }
    with duckdb.connect(str(store), read_only=True) as con:
        want = {
            f"sae_id={s}/dataset_id={d}"
            for s, d in con.execute(
                "SELECT DISTINCT dl.sae_id, d.dataset_id FROM doc_latents dl "
                "JOIN documents d USING (doc_id)"
            ).fetchall()
        }
    assert dirs == want and len(want) == 6
    # the partition columns live in the paths, not in the files (Spark refuses duplicates)
    one = pq.read_schema(next((out / "doc_latents").rglob("*.parquet")))
    assert "sae_id" not in one.names and "dataset_id" not in one.names


def test_csv_format(store: Path, tmp_path: Path) -> None:
    manifest = export(store, tmp_path / "csv", fmt="csv", progress=False)
    with duckdb.connect() as con:
        n = con.execute(
            f"SELECT count(*) FROM read_csv('{tmp_path}/csv/doc_latents/**/*.csv', "
            "hive_partitioning = true)"
        ).fetchall()[0][0]
        docs = con.execute(
            f"SELECT count(*) FROM read_csv('{tmp_path}/csv/documents/*.csv')"
        ).fetchall()[0][0]
    assert n == manifest["tables"]["doc_latents"]["rows"] > 0
    assert docs == manifest["tables"]["documents"]["rows"] == 90


def test_refuses_non_empty_dir_and_overwrites_an_export(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        export(store, target, progress=False)
    with pytest.raises(ConfigError, match="not a saedb export"):
        export(store, target, overwrite=True, progress=False)
    assert (target / "notes.txt").read_text() == "mine"  # nothing of the user's was removed

    again = tmp_path / "again"
    export(store, again, tables=["datasets"], progress=False)
    with pytest.raises(ConfigError, match="--overwrite"):
        export(store, again, progress=False)
    manifest = export(store, again, overwrite=True, progress=False)
    assert "doc_latents" in manifest["tables"]
    (again / "stray.txt").write_text("x")
    with pytest.raises(ConfigError, match="stray.txt"):
        export(store, again, overwrite=True, progress=False)


def test_bad_arguments(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no table 'nope'"):
        export(store, tmp_path / "x", tables=["nope"], progress=False)
    with pytest.raises(ConfigError, match="unknown export format"):
        export(store, tmp_path / "y", fmt="orc", progress=False)
    with pytest.raises(StoreError, match="no store"):
        export(tmp_path / "missing.duckdb", tmp_path / "z", progress=False)


def test_unportable_types_are_refused() -> None:
    assert portable_type("JSON", "t.c") == "VARCHAR"
    assert portable_type("UINTEGER", "t.c") == "BIGINT"
    assert portable_type("FLOAT[]", "t.c") == "FLOAT[]"
    assert portable_type("STRUCT(a JSON, b INTEGER[])", "t.c") == "STRUCT(a VARCHAR, b INTEGER[])"
    for bad in ("HUGEINT", "UBIGINT", "INTERVAL", "MAP(VARCHAR, INTEGER)", "UNION(a INTEGER)"):
        with pytest.raises(StoreError, match="t.c"):
            portable_type(bad, "t.c")


def test_cli(store: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(store), str(tmp_path / "cli"), "--table", "documents"]) == 0
    captured = capsys.readouterr()
    assert "documents: writing 90 rows ... 1 file" in captured.err  # progress on stderr
    assert "1 tables, 90 rows" in captured.out
    assert main(["export", str(store), str(tmp_path / "cli")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_empty_store(tmp_path: Path) -> None:
    """A store with no documents exports every table with zero rows and all its columns."""
    from saedb.store import Store

    path = tmp_path / "empty.duckdb"
    Store(path).close()
    manifest = export(path, tmp_path / "out", progress=False)
    entry = manifest["tables"]["doc_latents"]
    assert entry["rows"] == 0 and entry["partition_by"] == []
    (only,) = entry["files"]
    schema = pq.read_schema(tmp_path / "out" / only["path"])
    assert {"doc_id", "latent_id", "sae_id", "dataset_id"} <= set(schema.names)
    assert all(t["rows"] == 0 for n, t in manifest["tables"].items() if n != "settings")


def test_export_and_sql_export_while_served(
    store: Path, exported: tuple[Path, dict], tmp_path: Path, capsys
) -> None:
    """While saedb serve holds the store (no other process may open the file), export reads a
    snapshot through the server, in one transaction even while an ingest commits; sql-export
    asks it for the schema version. Both give what they give without a server."""
    path = tmp_path / "served.duckdb"
    shutil.copy(store, path)
    reference_out, reference = exported
    with serve(path):
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(path), read_only=True)
        manifest = export(path, tmp_path / "quiet", progress=False)
        assert manifest["read_from"].startswith("a snapshot read through saedb serve (pid ")
        assert set(manifest["tables"]) == set(reference["tables"])
        for table, entry in manifest["tables"].items():
            want = reference["tables"][table]
            assert (entry["rows"], entry["columns"]) == (want["rows"], want["columns"]), table
            hive = bool(entry["partition_by"])
            pattern = "**/*.parquet" if hive else "*.parquet"
            cols = ", ".join(_comparable(f'"{c["name"]}"', c["type"]) for c in entry["columns"])
            with duckdb.connect() as con:
                got, expected = (
                    sorted(
                        con.execute(
                            f"SELECT {cols} FROM read_parquet('{root / entry['path'] / pattern}', "
                            f"hive_partitioning = {hive})"
                        ).fetchall(),
                        key=repr,
                    )
                    for root in (tmp_path / "quiet", reference_out)
                )
            assert got == expected, table

        assert main(["sql-export", str(path), "--dialect", "postgres", "-q"]) == 0
        assert capsys.readouterr().out == sql_export(store, "postgres").script()

        writer = subprocess.Popen(  # batches of 20 documents, 4 latent rows each
            [sys.executable, "tests/serve_util.py", str(path), "synth", "200", "20", "0.01"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout.readline().startswith("committed")
            assert main(["export", str(path), str(tmp_path / "busy")]) == 0
            assert "held by saedb serve" in capsys.readouterr().err
        finally:
            writer.kill()
            writer.wait()
    busy = tmp_path / "busy"
    with duckdb.connect() as con:
        n_docs, n_latents = con.execute(
            f"""
            SELECT count(DISTINCT d.doc_id), count(l.doc_id)
            FROM read_parquet('{busy}/documents/*.parquet') d
            JOIN read_parquet('{busy}/datasets/*.parquet') s USING (dataset_id)
            LEFT JOIN read_parquet('{busy}/doc_latents/**/*.parquet', hive_partitioning = true)
                l ON l.doc_id = d.doc_id
            WHERE s.name = 'synth'
            """
        ).fetchall()[0]
    assert n_docs > 0 and n_docs % 20 == 0 and n_latents == 4 * n_docs
    assert not list(tmp_path.glob(".served.duckdb.snapshot-*"))  # the snapshot is removed
