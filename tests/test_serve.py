"""saedb serve with real clients: psql, psycopg 3, pgJDBC (java), SQLAlchemy, pandas.

One server process (``saedb serve --port 0``) on a small synthetic store for the module; the
answers are compared with DuckDB's on a copy of the store made before the server took it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zoneinfo
from pathlib import Path

import duckdb
import psycopg
import pytest

from saedb.server import pgcatalog
from saedb.server import types as pgt
from tests.export_store import build_store
from tests.serve_util import PASSWORD, serve, serve_in_process

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


def test_binary_parameters_of_every_decoded_type(server):
    """%b sends parameters in Postgres's binary formats: numeric, time, interval and jsonb
    are decoded as such (they were read as text), others are refused by name."""
    from psycopg.types.json import Jsonb

    values = [
        decimal.Decimal("12.345"),
        decimal.Decimal("-0.000120"),
        decimal.Decimal("123456789012345678.9"),
        decimal.Decimal("10000"),
        decimal.Decimal("0"),
        dt.time(1, 2, 3, 400000),
        dt.time(23, 59, 59, 999999),
        dt.timedelta(days=2, seconds=5, microseconds=7),
        dt.timedelta(days=-1, seconds=3),
    ]
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        for v in values:
            got, kind = con.execute("SELECT %b AS v, typeof(%b) AS t", [v, v]).fetchone()
            assert got == v and str(got) == str(v), (v, got, kind)
            assert kind.split("(")[0] in ("DECIMAL", "TIME", "INTERVAL"), kind
        got = con.execute(
            "SELECT CAST(%b AS JSON) AS j, CAST(%b AS JSON)->>'a' AS a",
            [Jsonb({"a": [1, "ü"]}), Jsonb({"a": "x"})],
        ).fetchone()
        assert got == ({"a": [1, "ü"]}, "x")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="OID 869"):
            con.execute("SELECT %b AS ip", [ipaddress.ip_address("127.0.0.1")])
        assert con.execute("SELECT 6").fetchone() == (6,)


def test_binary_interval_keeps_months():
    """A month is not 30 days: an interval's months reach DuckDB as months."""
    value = pgt.decode_param(pgt.INTERVAL, struct.pack("!qii", 5, 2, 1), True)
    with duckdb.connect() as con:
        assert con.execute(
            "SELECT CAST(? AS VARCHAR), DATE '2024-01-31' + ?", [value, value]
        ).fetchall() == [("1 month 2 days 00:00:00.000005", dt.datetime(2024, 3, 2, 0, 0, 0, 5))]
    numeric = struct.pack("!hhHh3h", 3, 1, 0x4000, 6, 12, 3456, 7800)  # 12|3456.|7800, 6 places
    assert str(pgt.decode_param(pgt.NUMERIC, numeric, True)) == "-123456.780000"


def test_internal_errors_are_error_responses_and_the_session_goes_on(server):
    """A failure that is no PgError (a value no binary format holds, bytes that are not
    UTF-8) comes back as an ErrorResponse; the connection stays open and usable."""
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        with pytest.raises(psycopg.Error) as err:
            con.execute("SELECT '294247-01-01'::TIMESTAMP AS t", binary=True)
        assert err.value.sqlstate == "XX000" and "internal error" in str(err.value)
        assert con.execute("SELECT 7").fetchone() == (7,)
        for binary in (False, True):  # simple query, then Parse
            with pytest.raises(psycopg.Error) as err:
                con.execute(b"SELECT '\xff' AS b", binary=binary)
            assert err.value.sqlstate == "22021", binary
            assert con.execute("SELECT 8").fetchone() == (8,)
    with psycopg.connect(server.dsn()) as con:  # inside a transaction: aborted, as Postgres
        con.execute("SELECT 1")
        with pytest.raises(psycopg.Error):
            con.execute("SELECT '294247-01-01'::TIMESTAMP AS t", binary=True)
        assert con.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            con.execute("SELECT 1")
        con.rollback()
        assert con.execute("SELECT 9").fetchone() == (9,)


def test_several_statements_in_one_extended_query(server):
    """Parse takes one statement, as in Postgres: a reader's hidden write is refused as
    such, and nothing runs (no transaction is left open behind the client's back)."""
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        before = con.execute("SELECT count(*) FROM documents").fetchone()[0]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="DELETE"):
            con.execute("BEGIN; DELETE FROM documents", binary=True)
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
            con.execute("BEGIN; SELECT 1", binary=True)
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
            con.execute("SELECT %s; SELECT 2", [1])
        assert con.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        con.execute("BEGIN")  # fails if DuckDB had been left inside a transaction
        con.execute("ROLLBACK")
        assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == before


def test_session_statement_timeout_and_timezone(server):
    """SET statement_timeout interrupts this session's long queries; SET TimeZone changes how
    its timestamptz values are written and is reported to the client (ParameterStatus)."""
    slow = "SELECT count(*) FROM range(1000000000000) a, range(10) b"
    instant = "TIMESTAMPTZ '2024-01-02 03:04:05.5+00'"
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        con.execute("SET statement_timeout = 300")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="SET statement_timeout"):
            con.execute(slow)
        assert time.monotonic() - started < 20
        con.execute("SET statement_timeout TO '1.5s'")
        assert con.execute("SHOW statement_timeout").fetchone() == ("1.5s",)
        with pytest.raises(psycopg.errors.QueryCanceled, match=r"1\.5 s"):
            con.execute(slow)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="statement_timeout"):
            con.execute("SET statement_timeout = 'soon'")
        con.execute("RESET statement_timeout")
        assert con.execute("SHOW statement_timeout").fetchone() == ("0",)

        assert con.info.parameter_status("TimeZone") == "UTC"
        con.execute("SET TimeZone = 'America/New_York'")
        assert con.info.parameter_status("TimeZone") == "America/New_York"
        assert con.execute("SHOW TimeZone").fetchone() == ("America/New_York",)
        want = dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC)
        for binary in (False, True):
            (got,) = con.execute(f"SELECT {instant} AS t", binary=binary).fetchone()
            assert got == want and got.utcoffset() == dt.timedelta(hours=-5), binary
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="TimeZone"):
            con.execute("SET TimeZone = 'Nowhere/Special'")
        con.execute("RESET TimeZone")
        assert con.info.parameter_status("TimeZone") == "UTC"
    out = psql(
        server,
        "SET TIME ZONE 'Asia/Kolkata'",
        f"SELECT {instant} AS t",
        "SET TIME ZONE -5",
        f"SELECT {instant} AS t, ARRAY[{instant}] AS a",
    )
    assert "2024-01-02 08:34:05.500000+05:30" in out
    assert '2024-01-01 22:04:05.500000-05 | {"2024-01-01 22:04:05.500000-05"}' in out
    options = "-c TimeZone=Europe/Paris -c statement_timeout=250"
    with psycopg.connect(server.dsn(options=f"'{options}'"), autocommit=True) as con:
        assert con.info.parameter_status("TimeZone") == "Europe/Paris"
        (got,) = con.execute(f"SELECT {instant} AS t").fetchone()
        assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(hours=1)
        assert got.astimezone(zoneinfo.ZoneInfo("Europe/Paris")).hour == 4
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            con.execute(slow)


def _stalled_handshake(port: int) -> socket.socket:
    """A socket that sends a startup packet, reads the SASL request and then stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = struct.pack("!i", 196608) + b"user\0saedb\0database\0store\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    assert sock.recv(1) == b"R"
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def test_connections_in_handshake_count_and_time_out():
    """Sockets that never finish their handshake hold a connection slot only until the
    handshake timeout, and silent ones cannot pile up beyond twice max_connections."""
    with serve_in_process(max_connections=2, handshake_timeout=1.5) as s:
        dsn = s.dsn(connect_timeout="10")
        stalled = [_stalled_handshake(s.port) for _ in range(2)]
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(dsn)
        assert all(_closed_by_server(sock, 10) for sock in stalled)
        with psycopg.connect(dsn) as con:
            assert con.execute("SELECT 1").fetchone() == (1,)
        silent = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
        time.sleep(0.3)
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(dsn, sslmode="disable")  # refused before any SSLRequest is read
        assert all(_closed_by_server(sock, 10) for sock in silent)
        with psycopg.connect(dsn) as con:  # an authenticated session is not timed out
            time.sleep(2)
            assert con.execute("SELECT 2").fetchone() == (2,)
        for sock in stalled + silent:
            sock.close()


def test_connection_line_says_where_the_password_comes_from(stores, tmp_path):
    path = tmp_path / "banner.duckdb"
    shutil.copy(stores[1], path)
    env = dict(os.environ, SAEDB_SERVE_PASSWORD="from-the-file")
    subprocess.run(
        [sys.executable, "-m", "saedb.cli", "serve", str(path), "--add-user", "saedb"],
        check=True,
        env=env,
        capture_output=True,
    )
    with serve(path, password=None) as s:
        line = next(x for x in s.banner.splitlines() if x.strip().startswith("psql:"))
        assert "SAEDB_SERVE_PASSWORD" not in s.banner and "PGPASSWORD" not in line
        assert "password: the users file" in s.banner and "asks for" in line
        with psycopg.connect(s.dsn(password="from-the-file")) as con:
            assert con.execute("SELECT 1").fetchone() == (1,)
    with serve(path) as s:  # $SAEDB_SERVE_PASSWORD wins, and the printed command works
        line = next(x for x in s.banner.splitlines() if x.strip().startswith("psql:"))
        assert 'PGPASSWORD="$SAEDB_SERVE_PASSWORD" psql' in line
        command = line.split("psql:", 1)[1] + " -X -At -c 'SELECT 40 + 2'"
        out = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            env={"SAEDB_SERVE_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr


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


def test_file_access_is_off_in_duckdb_too(server, tmp_path):
    """Beneath the classifier: statements it lets through (a file path as a table name) are
    stopped by DuckDB itself, whose settings are locked; with access on they would read the
    file, which this test's process (the server's user) wrote."""
    secret = tmp_path / "secret.csv"
    secret.write_text("word\nswordfish\n")
    with psycopg.connect(server.dsn(), autocommit=True) as con:
        assert con.execute(
            "SELECT current_setting('enable_external_access'), "
            "current_setting('lock_configuration')"
        ).fetchone() == (False, True)
        denied = "file system operations are disabled by configuration"
        for path in (secret, tmp_path / "nowhere.parquet"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=denied):
                con.execute(f"SELECT * FROM '{path}'")
        # SET is the server's own (a session setting), never DuckDB's configuration
        con.execute("SET enable_external_access = true")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=denied):
            con.execute(f"SELECT * FROM '{secret}'")
        assert con.execute("SELECT current_setting('enable_external_access')").fetchone() == (
            False,
        )


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
    with serve(path) as s:
        con = psycopg.connect(s.dsn(user="loader", password="writer-pw"), autocommit=True)
        with con:
            cur = con.execute("CREATE TABLE notes (id INTEGER, note VARCHAR)")
            cur = con.execute("INSERT INTO notes VALUES (%s, %s), (%s, %s)", [1, "a", 2, "b"])
            assert cur.rowcount == 2 and cur.description is None
            assert con.execute("SELECT note FROM notes ORDER BY id").fetchall() == [("a",), ("b",)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute("COPY notes TO '/tmp/saedb-writer-leak.csv'")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute("SELECT * FROM read_csv('/etc/passwd')")
            # several statements in one Parse: refused whole, as Postgres; nothing ran
            with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
                con.execute("BEGIN; DELETE FROM notes WHERE id = %s", [1])
            assert con.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert con.execute("SELECT count(*) FROM notes").fetchone() == (2,)
        with psycopg.connect(s.dsn(user="loader", password="writer-pw")) as con:
            # BEGIN (simple query), then DELETE with a parameter (extended): one transaction
            cur = con.execute("DELETE FROM notes WHERE id = %s", [1])
            assert cur.rowcount == 1
            assert con.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            con.rollback()
            assert con.execute("SELECT count(*) FROM notes").fetchone() == (2,)
            con.execute("DELETE FROM notes WHERE id = %s", [1], binary=True)
            con.commit()
        with psycopg.connect(s.dsn(), autocommit=True) as reader:
            assert reader.execute("SELECT id FROM notes").fetchall() == [(2,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("BEGIN; DELETE FROM notes", binary=True)
