"""saedb serve with real clients: psql, psycopg 3, pgJDBC (java), SQLAlchemy, pandas.

One server process (``saedb serve --port 0``) on a small synthetic store for the module; the
answers are compared with DuckDB's on a copy of the store made before the server took it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import psycopg
import pytest

from saedb.server import pgcatalog
from saedb.server import types as pgt
from tests.export_store import build_store
from tests.serve_util import PASSWORD, serve

FIXTURES = Path(__file__).parent / "fixtures" / "pg_driver_queries"
JAR = Path("/usr/share/java/postgresql.jar")
VIEWS = (
    "current_label_embeddings",
    "current_labels",
    "latent_frequency",
    "latent_label_neighbors",
    "latent_npmi",
    "llm_spend",
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    path = build_store(base / "store.duckdb")
    ref = base / "reference.duckdb"
    shutil.copy(path, ref)
    return path, ref


@pytest.fixture(scope="module")
def server(stores):
    with serve(stores[0], "--max-rows", "5000") as s:
        yield s


def psql(server, *commands: str) -> str:
    args = [
        "psql",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-U",
        "saedb",
        "-d",
        "store",
    ]
    for c in commands:
        args += ["-c", c]
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PGPASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_driver_fixture_queries_run_on_duckdb(stores):
    """Every catalog query the captured drivers send, rewritten, runs on the store."""
    con = duckdb.connect(str(stores[1]), read_only=True)
    pgcatalog.build(con, user="saedb", settings={}, version="PostgreSQL 15.0", pid=1)
    n = 0
    for fixture in sorted(FIXTURES.glob("*.json")):
        for st in json.loads(fixture.read_text()):
            if not pgcatalog.looks_like_catalog_query(st["sql"]):
                continue
            con.execute(pgcatalog.rewrite(st["sql"]), st["params"] or None).fetchall()
            n += 1
    assert n >= 25


def test_psql_lists_and_describes(server):
    out = psql(server, r"\dt", r"\dv", r"\d documents")
    for table in ("documents", "doc_latents", "datasets", "saes", "latent_labels"):
        assert f"| {table} " in out
    for view in VIEWS:
        assert f"| {view} " in out
    assert re.search(r"\|\s*table\s*\|", out) and re.search(r"\|\s*view\s*\|", out)
    described = out[out.index('Table "main.documents"') :]
    assert "doc_id      | bigint" in described
    assert "metadata    | json" in described
    assert "timestamp with time zone" in described


def test_psql_queries_every_view(server, stores):
    ref = duckdb.connect(str(stores[1]), read_only=True)
    nonempty = 0
    for view in VIEWS:
        out = psql(server, f"SELECT count(*) AS n FROM {view}", f"SELECT * FROM {view} LIMIT 3")
        expected = ref.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0]
        assert out.split("\n")[2].strip() == str(expected), (view, out)
        nonempty += expected > 0
    assert nonempty >= 4


def test_psycopg_parameters_and_types(server):
    q = (
        "SELECT %s::INTEGER + 1 AS i, %s AS t, [1, 2, NULL]::INTEGER[] AS a, "
        "['x', 'y z', NULL] AS s, {'k': 1, 'v': 'w'} AS st, 0.1::REAL AS r, 0.1::DOUBLE AS d, "
        "170141183460469231731687303715884105727::HUGEINT AS h, 12.345::DECIMAL(10,3) AS n, "
        "'\\x00\\xff'::BLOB AS b, DATE '2024-02-29' AS dt, "
        "TIMESTAMPTZ '2024-01-02 03:04:05.5+00' AS tz, '{\"a\": [1]}'::JSON AS j, true AS bo"
    )
    import datetime as dt
    import decimal

    expect = [
        42,
        "x",
        [1, 2, None],
        ["x", "y z", None],
        {"k": 1, "v": "w"},
        None,
        0.1,
        decimal.Decimal("170141183460469231731687303715884105727"),
        decimal.Decimal("12.345"),
        b"\x00\xff",
        dt.date(2024, 2, 29),
        dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC),
        {"a": [1]},
        True,
    ]
    oids = [
        pgt.INT4,
        pgt.TEXT,
        1007,
        1009,
        pgt.JSON,
        pgt.FLOAT4,
        pgt.FLOAT8,
        pgt.NUMERIC,
        pgt.NUMERIC,
        pgt.BYTEA,
        pgt.DATE,
        pgt.TIMESTAMPTZ,
        pgt.JSON,
        pgt.BOOL,
    ]
    with psycopg.connect(server.dsn()) as con:
        for binary in (False, True):
            cur = con.cursor(binary=binary)
            row = cur.execute(q, [41, "x"]).fetchone()
            assert [d.type_code for d in cur.description] == oids
            for got, want, name in zip(row, expect, [d.name for d in cur.description], strict=True):
                if name == "r":
                    assert got == pytest.approx(0.1, rel=1e-6)
                else:
                    assert got == want, (binary, name)
            assert cur.description[0].name == "i"


def test_psycopg_prepared_and_server_side_cursor(server, stores):
    ref = duckdb.connect(str(stores[1]), read_only=True)
    want = ref.execute(
        "SELECT doc_id, external_id FROM documents WHERE dataset_id = ? ORDER BY doc_id", [2]
    ).fetchall()
    with psycopg.connect(server.dsn()) as con:
        for _ in range(7):  # psycopg prepares the statement from the 5th execution on
            got = con.execute(
                "SELECT doc_id, external_id FROM documents WHERE dataset_id = %s ORDER BY doc_id",
                [2],
                binary=True,
            ).fetchall()
            assert got == want
        with con.cursor(name="docs") as cur:
            cur.itersize = 7
            cur.execute(
                "SELECT doc_id, external_id FROM documents WHERE dataset_id = %s ORDER BY doc_id",
                [2],
            )
            assert cur.fetchmany(3) == want[:3]
            assert cur.fetchone() == want[3]
            assert list(cur) == want[4:]


def test_psycopg_analysis_macros_match_duckdb(server, stores):
    ref = duckdb.connect(str(stores[1]), read_only=True)
    q = "SELECT latent_id, n_a, n_b, q_value FROM diff('alpha', 'beta') ORDER BY latent_id"
    want = ref.execute(q).fetchall()
    with psycopg.connect(server.dsn()) as con:
        got = con.execute(q, binary=True).fetchall()
        assert got == want and len(got) > 5
        top = con.execute("SELECT * FROM top_documents(%s::INTEGER, k := 3)", [0]).fetchall()
        assert top == ref.execute("SELECT * FROM top_documents(0, k := 3)").fetchall()


def test_errors_carry_sqlstate_and_transactions_recover(server):
    with psycopg.connect(server.dsn()) as con:
        with pytest.raises(psycopg.errors.UndefinedTable):
            con.execute("SELECT * FROM no_such_table")
        con.rollback()
        with pytest.raises(psycopg.errors.SyntaxError):
            con.execute("SELEC 1")
        con.rollback()
        assert con.execute("SELECT 1").fetchone() == (1,)
        assert con.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        con.rollback()
        assert con.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_result_size_limit_is_an_error(server):
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        assert len(con.execute("SELECT * FROM range(5000)").fetchall()) == 5000
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="more than 5,000 rows"):
            con.execute("SELECT * FROM range(5001)")
        assert con.execute("SELECT 2").fetchone() == (2,)


def test_cancel_interrupts_the_running_query(server):
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        timer = threading.Timer(1.0, con.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="user request"):
            con.execute("SELECT count(*) FROM range(1000000000000) a, range(10) b")
        assert time.monotonic() - started < 30
        assert con.execute("SELECT 3").fetchone() == (3,)


def test_statement_timeout(stores, tmp_path):
    path = tmp_path / "timeout.duckdb"
    shutil.copy(stores[1], path)
    with (
        serve(path, "--statement-timeout", "1") as s,
        psycopg.connect(s.dsn(), autocommit=True) as con,
    ):
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            con.execute("SELECT count(*) FROM range(1000000000000) a, range(10) b")
        assert con.execute("SELECT 4").fetchone() == (4,)


REFUSED = [
    "INSERT INTO datasets (dataset_id, name) VALUES (99, 'x')",
    "UPDATE documents SET text = 'x'",
    "DELETE FROM documents",
    "CREATE TABLE t (a INTEGER)",
    "CREATE TEMP TABLE t AS SELECT 1",
    "DROP TABLE documents",
    "ALTER TABLE documents ADD COLUMN x INTEGER",
    "ATTACH '/tmp/other.duckdb' AS other",
    "COPY documents TO '/tmp/leak.csv'",
    "EXPORT DATABASE '/tmp/leak'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CHECKPOINT",
    "PRAGMA enable_profiling",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv_auto('/etc/passwd')",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM read_json('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM query('DELETE FROM documents')",
    "EXPLAIN ANALYZE DELETE FROM documents",
    "SELECT 1; DELETE FROM documents",
    "WITH x AS (SELECT 1) DELETE FROM documents",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_reader_is_refused(server, sql):
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            con.execute(sql)
        assert con.execute("SELECT count(*) FROM documents").fetchone()[0] > 0


def test_file_access_is_off_in_duckdb_too(server):
    """Beneath the classifier: a path as a table name finds no file (external access off)."""
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        with pytest.raises(psycopg.Error):
            con.execute("SELECT * FROM '/etc/passwd'")
        with pytest.raises(psycopg.Error):
            con.execute("SET enable_external_access = true; SELECT * FROM read_csv('/etc/x')")


def test_authentication(server):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn(password="wrong"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn(user="nobody"))


def test_sqlalchemy_inspect_and_pandas(server, stores):
    import pandas as pd
    import sqlalchemy as sa

    url = f"postgresql+psycopg://saedb:{PASSWORD}@127.0.0.1:{server.port}/store"
    engine = sa.create_engine(url)
    ref = duckdb.connect(str(stores[1]), read_only=True)
    with engine.connect() as con:
        inspector = sa.inspect(con)
        assert {"documents", "doc_latents", "datasets"} <= set(inspector.get_table_names())
        assert set(VIEWS) <= set(inspector.get_view_names())
        columns = {c["name"]: c for c in inspector.get_columns("documents")}
        assert isinstance(columns["doc_id"]["type"], sa.BigInteger)
        assert isinstance(columns["metadata"]["type"], sa.JSON)
        assert columns["ingested_at"]["type"].timezone is True
        freq = {c["name"]: c for c in inspector.get_columns("latent_frequency")}
        assert freq["sae_id"]["comment"]  # COMMENT ON COLUMN from the sql/ headers
        df = pd.read_sql(sa.text("SELECT * FROM latent_frequency ORDER BY ALL"), con)
    want = ref.execute("SELECT * FROM latent_frequency ORDER BY ALL").df()
    assert list(df.columns) == list(want.columns)
    assert len(df) == len(want) > 0
    assert (df["n_fired"].to_numpy() == want["n_fired"].to_numpy()).all()
    engine.dispose()


JAVA = (Path(__file__).parent / "fixtures" / "serve" / "SaedbJdbc.java").read_text()


def test_pgjdbc_metadata_prepared_statements_arrays(server, stores, tmp_path):
    if not JAR.exists():
        pytest.fail(f"{JAR} is missing: apt-get install libpostgresql-jdbc-java (see .ci/run)")
    (tmp_path / "SaedbJdbc.java").write_text(JAVA)
    subprocess.run(
        ["javac", "-cp", str(JAR), "SaedbJdbc.java"], cwd=tmp_path, check=True, timeout=120
    )
    out = subprocess.run(
        [
            "java",
            "-cp",
            f"{JAR}:.",
            "SaedbJdbc",
            f"jdbc:postgresql://127.0.0.1:{server.port}/store",
            "saedb",
            PASSWORD,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    tables = {(t[1], t[2]) for t in lines if t[0] == "TABLE"}
    assert ("documents", "TABLE") in tables and ("doc_latents", "TABLE") in tables
    assert {(v, "VIEW") for v in VIEWS} <= tables
    columns = {t[1]: (int(t[2]), t[3]) for t in lines if t[0] == "COLUMN"}
    assert columns["doc_id"] == (-5, "int8")  # java.sql.Types.BIGINT
    assert columns["text"] == (12, "text")  # VARCHAR
    assert columns["metadata"][1] == "json"
    assert columns["ingested_at"] == (93, "timestamptz")  # TIMESTAMP
    ref = duckdb.connect(str(stores[1]), read_only=True)
    counts = [t for t in lines if t[0] == "COUNT"]
    assert len(counts) == 6
    for _, dataset, n in counts:
        want = ref.execute(
            "SELECT count(*) FROM documents WHERE dataset_id = ?", [int(dataset)]
        ).fetchall()[0][0]
        assert int(n) == want
    array = next(t for t in lines if t[0] == "ARRAY")
    assert array[1:] == ["[1, 2, 3]", "[x, y]", "float4", "1.5"]


def test_tls_and_users_file(stores, tmp_path):
    """With a certificate clients can require TLS; a user added with --add-user logs in, and
    the users file holds a salted verifier, not the password."""
    path = tmp_path / "tls.duckdb"
    shutil.copy(stores[1], path)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            tmp_path / "key.pem",
            "-out",
            tmp_path / "cert.pem",
        ],
        check=True,
        capture_output=True,
    )
    import os
    import sys

    env = dict(os.environ, SAEDB_SERVE_PASSWORD="analyst-pw")
    subprocess.run(
        [sys.executable, "-m", "saedb.cli", "serve", str(path), "--add-user", "analyst"],
        check=True,
        env=env,
        capture_output=True,
    )
    users = (tmp_path / "tls.duckdb.users.json").read_text()
    assert "analyst-pw" not in users and "SCRAM-SHA-256$4096:" in users
    with serve(
        path, "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")
    ) as s:
        with psycopg.connect(s.dsn(sslmode="require")) as con:
            assert con.pgconn.ssl_in_use
            assert con.execute("SELECT count(*) FROM datasets").fetchone()[0] == 3
        with psycopg.connect(
            s.dsn(user="analyst", password="analyst-pw", sslmode="disable")
        ) as con:
            assert not con.pgconn.ssl_in_use
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute("DELETE FROM documents")
    with serve(path) as s, pytest.raises(psycopg.OperationalError):
        psycopg.connect(s.dsn(sslmode="require"))


def test_psqlodbc_tables_columns_parameters(server, stores):
    import pyodbc

    if "PostgreSQL Unicode" not in pyodbc.drivers():
        pytest.fail("psqlODBC is missing: apt-get install odbc-postgresql unixodbc (.ci/run)")
    con = pyodbc.connect(
        "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;"
        f"PORT={server.port};DATABASE=store;UID=saedb;PWD={PASSWORD}",
        timeout=30,
    )
    try:
        cur = con.cursor()
        tables = {r.table_name for r in cur.tables(tableType="TABLE").fetchall()}
        assert {"documents", "doc_latents", "datasets"} <= tables
        views = {r.table_name for r in cur.tables(tableType="VIEW").fetchall()}
        assert set(VIEWS) <= views
        columns = {r.column_name: r.type_name for r in cur.columns(table="documents")}
        assert columns["doc_id"] == "int8" and columns["metadata"] == "json"
        assert columns["ingested_at"] == "timestamptz"
        got = cur.execute("SELECT external_id FROM documents WHERE doc_id = ?", 5).fetchall()
        ref = duckdb.connect(str(stores[1]), read_only=True)
        want = ref.execute("SELECT external_id FROM documents WHERE doc_id = 5").fetchall()
        assert [tuple(r) for r in got] == want
    finally:
        con.close()


def test_writer_role_can_write_but_not_reach_files(stores, tmp_path):
    import os
    import sys

    path = tmp_path / "writer.duckdb"
    shutil.copy(stores[1], path)
    env = dict(os.environ, SAEDB_SERVE_PASSWORD="writer-pw")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "saedb.cli",
            "serve",
            str(path),
            "--add-user",
            "loader",
            "--role",
            "writer",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    with (
        serve(path) as s,
        psycopg.connect(s.dsn(user="loader", password="writer-pw"), autocommit=True) as con,
    ):
        cur = con.execute("CREATE TABLE notes (id INTEGER, note VARCHAR)")
        cur = con.execute("INSERT INTO notes VALUES (%s, %s), (%s, %s)", [1, "a", 2, "b"])
        assert cur.rowcount == 2 and cur.description is None
        assert con.execute("SELECT note FROM notes ORDER BY id").fetchall() == [("a",), ("b",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("COPY notes TO '/tmp/saedb-writer-leak.csv'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            con.execute("SELECT * FROM read_csv('/etc/passwd')")
