"""``saedb sql-export --dialect postgres`` run for real on PostgreSQL 15.

A throwaway cluster (initdb in a temp directory owned by the postgres user, a free port on
127.0.0.1, stopped and removed afterwards) gets the tables of ``saedb export``'s Parquet files
(read back with pyarrow, loaded with psycopg's COPY), then the transpiled DDL; every
transpiled view and table macro is queried there and compared with DuckDB's answer on the
same store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import duckdb
import psycopg
import pyarrow.dataset as pads
import pytest

from saedb.export import export
from saedb.sql_export import sql_export
from tests.export_store import build_store

PG_BIN = Path("/usr/lib/postgresql/15/bin")

# name -> (DuckDB call, Postgres call, sort key columns); named arguments differ (:= in both
# works, but lists are ['a'] in DuckDB and ARRAY['a'] in Postgres)
CALLS = {
    "diff": ("diff('alpha', 'beta')", "diff('alpha', 'beta')"),
    "diff_min_freq": (
        "diff('beta', 'gamma''s dëlta', sae := 2, min_freq := 0.2, threshold := 0.3)",
        "diff('beta', 'gamma''s dëlta', sae := 2, min_freq := 0.2, threshold := 0.3)",
    ),
    "diff_doc_sets": (
        "diff_doc_sets([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [40, 41, 42, 43, 44, 45, 46, 47])",
        "diff_doc_sets(ARRAY[1,2,3,4,5,6,7,8,9,10,11,12], ARRAY[40,41,42,43,44,45,46,47])",
    ),
    "diff_one_vs_rest": ("diff_one_vs_rest('alpha')", "diff_one_vs_rest('alpha')"),
    "diff_metadata": (
        "diff_metadata('parity', 'even', 'odd')",
        "diff_metadata('parity', 'even', 'odd')",
    ),
    "npmi": ("npmi(min_count := 3)", "npmi(min_count := 3)"),
    "npmi_datasets": (
        "npmi(datasets := ['alpha', 'beta'], sae := 2, min_count := 2, threshold := 0.5)",
        "npmi(datasets := ARRAY['alpha', 'beta'], sae := 2, min_count := 2, threshold := 0.5)",
    ),
    "npmi_targets": (
        "npmi_targets([0, 1, 5], min_count := 2)",
        "npmi_targets(ARRAY[0, 1, 5], min_count := 2)",
    ),
    "top_documents": (
        "top_documents(0, k := 7, context := 5)",
        "top_documents(0, k := 7, context := 5)",
    ),
    "highlight": ("highlight(4, 0)", "highlight(4, 0)"),
    "doc_vectors": (
        "doc_vectors([0, 1, 2], datasets := ['beta'])",
        "doc_vectors(ARRAY[0, 1, 2], datasets := ARRAY['beta'])",
    ),
    "latents_for_embedding": (
        "latents_for_embedding([0.5, -0.25, 0.125], model := 'mini')",
        "latents_for_embedding(ARRAY[0.5, -0.25, 0.125], model := 'mini')",
    ),
    "latents_for_query": (
        "latents_for_query('cats   and dogs', model := 'mini')",
        "latents_for_query('cats   and dogs', model := 'mini')",
    ),
}
# views whose example store has rows (the others are compared too: both must be empty)
VIEWS_WITH_ROWS = ("latent_frequency", "current_labels", "latent_npmi", "current_label_embeddings")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL 15 cluster of our own on 127.0.0.1 (the server refuses to run as root,
    so it runs as the postgres user when we are root)."""
    if not (PG_BIN / "postgres").exists():
        pytest.fail(f"PostgreSQL 15 is not installed at {PG_BIN} (.ci/run installs postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="saedb-pg-"))
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    subprocess.run(
        [
            *prefix,
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run(
            [*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("pgstore") / "store.duckdb")


@pytest.fixture(scope="module")
def exported(store: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pgexport") / "export"
    export(store, out, progress=False)
    return out


@pytest.fixture(scope="module")
def pg(postgres: str, store: Path, exported: Path):
    result = sql_export(store, "postgres")
    manifest = json.loads((exported / "manifest.json").read_text())
    con = psycopg.connect(postgres, autocommit=True)
    con.execute(result.prelude)
    con.execute(result.tables)
    for table, entry in manifest["tables"].items():
        cols = [c["name"] for c in entry["columns"]]
        data = pads.dataset(
            exported / entry["path"],
            format="parquet",
            partitioning="hive" if entry["partition_by"] else None,
        ).to_table()
        names = ", ".join(f'"{c}"' for c in cols)
        with con.cursor().copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
            for row in data.select(cols).to_pylist():
                copy.write_row([row[c] for c in cols])
        (count,) = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        assert count == entry["rows"], table
    for obj in result.exported:
        con.execute(obj.sql)
    yield con, result
    con.close()


def _rows(rows: list[tuple]) -> list[tuple]:
    return [tuple(_norm(v) for v in r) for r in rows]


def _norm(v):
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if hasattr(v, "isoformat"):
        return v.isoformat() if v.tzinfo is None else v.astimezone().isoformat()
    if isinstance(v, str) and v.startswith("{") and v.endswith("}"):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _same(got: list[tuple], want: list[tuple], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} rows in postgres, {len(want)} in DuckDB"
    assert want, f"{what}: the example gives no rows, it tests nothing"
    for i, (g, w) in enumerate(zip(_rows(got), _rows(want), strict=True)):
        assert len(g) == len(w), what
        for a, b in zip(g, w, strict=True):
            if (
                isinstance(a, float | int)
                and isinstance(b, float | int)
                and not isinstance(a, bool)
            ):
                assert a == pytest.approx(b, rel=1e-6, abs=1e-9), f"{what} row {i}: {g} vs {w}"
            else:
                assert a == b, f"{what} row {i}: {g} vs {w}"


def _views() -> list[str]:
    from saedb import catalog

    return [o.name for o in catalog.load_catalog() if o.kind == "view"]


def test_every_transpiled_table_macro_has_an_example(pg) -> None:
    _, result = pg
    examples = {call[1].split("(")[0] for call in CALLS.values()}
    macros = {o.name for o in result.exported if o.kind == "table_macro"}
    assert macros == examples, "give each transpiled table macro an example in CALLS"
    assert {"diff", "npmi", "diff_doc_sets"} <= macros
    assert set(_views()) <= {o.name for o in result.exported}
    for obj in result.failed:  # what could not be transpiled is said, with a reason
        assert obj.reason


@pytest.mark.parametrize("name", sorted(CALLS))
def test_table_macro_matches_duckdb(pg, store: Path, name: str) -> None:
    con, _ = pg
    duck_call, pg_call = CALLS[name]
    with duckdb.connect(str(store), read_only=True) as duck:
        want = duck.execute(f"SELECT * FROM {duck_call}").fetchall()
        columns = [d[0] for d in duck.description]
    cur = con.execute(f"SELECT * FROM {pg_call}")
    assert [d.name for d in cur.description] == columns
    _same(cur.fetchall(), want, name)


@pytest.mark.parametrize("view", _views())
def test_view_matches_duckdb(pg, store: Path, view: str) -> None:
    con, _ = pg
    with duckdb.connect(str(store), read_only=True) as duck:
        duck.execute("SET TimeZone = 'UTC'")
        described = duck.execute(f"DESCRIBE {view}").fetchall()
        columns = [r[0] for r in described]
        # timestamps compared as seconds since the epoch (UTC instants)
        stamp = {r[0] for r in described if r[1].startswith("TIMESTAMP")}
        duck_cols = ", ".join(f"epoch({c})" if c in stamp else c for c in columns)
        order = ", ".join(str(i + 1) for i in range(len(columns)))
        want = duck.execute(f"SELECT {duck_cols} FROM {view} ORDER BY {order}").fetchall()
    pg_cols = ", ".join(
        f"CAST(extract(epoch FROM {c}) AS float8)" if c in stamp else c for c in columns
    )
    assert [d.name for d in con.execute(f"SELECT * FROM {view} LIMIT 0").description] == columns
    cur = con.execute(f"SELECT {pg_cols} FROM {view} ORDER BY {order}")
    got = cur.fetchall()
    if view in VIEWS_WITH_ROWS:
        _same(got, want, view)
    else:
        assert got == want == [], view


def test_scalar_functions_match_duckdb(pg) -> None:
    con, _ = pg
    with duckdb.connect(":memory:") as duck:
        from saedb import catalog, migrations

        migrations.migrate(duck)
        catalog.install(duck)
        for z in (-3.5, -0.2, 0.0, 1.0, 2.5, 8.0):
            (want,) = duck.execute("SELECT normal_sf(?)", [z]).fetchone()
            (got,) = con.execute("SELECT normal_sf(%s)", [z]).fetchone()
            assert got == pytest.approx(want, rel=1e-12)
        (want,) = duck.execute("SELECT npmi_score(3, 10, 12, 90)").fetchone()
        (got,) = con.execute("SELECT npmi_score(3, 10, 12, 90)").fetchone()
        assert got == pytest.approx(want, rel=1e-12)
        (want,) = duck.execute("SELECT mark_span('the naïve cat', 4, 9, 2)").fetchone()
        (got,) = con.execute("SELECT mark_span('the naïve cat', 4, 9, 2)").fetchone()
        assert got == want == "…e <<naïve>> c…"


def test_label_similarity_matches_duckdb(pg, store: Path) -> None:
    con, _ = pg
    with duckdb.connect(str(store), read_only=True) as duck:
        (want,) = duck.execute("SELECT label_similarity(0, 5, model := 'mini')").fetchone()
    (got,) = con.execute("SELECT label_similarity(0, 5, model := 'mini')").fetchone()
    assert want is not None and got == pytest.approx(want, rel=1e-6)


def test_errors_are_raised_in_postgres(pg) -> None:
    con, _ = pg
    with pytest.raises(psycopg.errors.RaiseException, match="no dataset named nope"):
        con.execute("SELECT * FROM diff('alpha', 'nope')").fetchall()
    with pytest.raises(psycopg.errors.RaiseException, match="no dataset named zzz"):
        con.execute("SELECT * FROM npmi(datasets := ARRAY['zzz'])").fetchall()
