"""``saedb sql-export`` for Spark (run for real with pyspark in local mode) and Trino (no Trino
server exists here: its output is parsed back with sqlglot's Trino dialect only), plus the
command line and the per-object report."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sqlglot

from saedb.cli import main
from saedb.export import export
from saedb.sql_export import sql_export
from tests.export_store import build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("enginestore") / "store.duckdb")


def test_trino_output_parses_as_trino(store: Path) -> None:
    result = sql_export(store, "trino")
    assert {"diff", "npmi", "latent_frequency"} <= {o.name for o in result.exported}
    for obj in result.exported:
        statements = [s for s in sqlglot.parse(obj.sql, read="trino") if s is not None]
        assert statements, obj.name
        if obj.kind == "table_macro":
            body = obj.sql.split(";\n", 1)[0]  # the query; a view of the defaults may follow
            code = "\n".join(ln for ln in body.splitlines() if not ln.startswith("--"))
            assert code.count("?") == len(obj.params) > 0, obj.name  # one name per marker


def test_every_object_is_reported(store: Path, tmp_path: Path, capsys) -> None:
    from saedb import catalog

    names = {o.name for o in catalog.load_catalog()}
    for dialect in ("postgres", "spark", "trino"):
        out = tmp_path / dialect
        assert main(["sql-export", str(store), "--dialect", dialect, "--out", str(out)]) == 0
        err = capsys.readouterr().err
        reported = {line.split(":")[0] for line in err.splitlines() if ":" in line}
        assert reported == names, dialect
        failed = (out / "NOT_TRANSPILED.txt").read_text()
        for line in err.splitlines():
            if "NOT transpiled" in line:
                assert line.split(":")[0] in failed
        assert (out / "diff.sql").exists() and (out / "all.sql").exists()
    assert main(["sql-export", str(store), "--dialect", "postgres", "-q"]) == 0
    script = capsys.readouterr().out
    assert 'CREATE OR REPLACE FUNCTION "diff"' in script and "CREATE TABLE" in script


# Spark: (arguments other than the defaults, the same call in DuckDB)
SPARK_CALLS = {
    "diff": ({"a": "alpha", "b": "beta"}, "diff('alpha', 'beta')"),
    "diff_sae2": (
        {"a": "beta", "b": "gamma's dëlta", "sae": 2, "min_freq": 0.2, "threshold": 0.3},
        "diff('beta', 'gamma''s dëlta', sae := 2, min_freq := 0.2, threshold := 0.3)",
    ),
    "diff_one_vs_rest": ({"dataset": "alpha"}, "diff_one_vs_rest('alpha')"),
    "diff_metadata": (
        {"key": "parity", "value_a": "even", "value_b": "odd"},
        "diff_metadata('parity', 'even', 'odd')",
    ),
    "npmi": ({"min_count": 3}, "npmi(min_count := 3)"),
    "npmi_datasets": (
        {"datasets": ["alpha", "beta"], "sae": 2, "min_count": 2, "threshold": 0.5},
        "npmi(datasets := ['alpha', 'beta'], sae := 2, min_count := 2, threshold := 0.5)",
    ),
    "npmi_targets": (
        {"targets": [0, 1, 5], "min_count": 2},
        "npmi_targets([0, 1, 5], min_count := 2)",
    ),
    "top_documents": (
        {"latent": 0, "k": 7, "context": 5},
        "top_documents(0, k := 7, context := 5)",
    ),
    "highlight": ({"doc": 4, "latent": 0}, "highlight(4, 0)"),
}
SPARK_VIEWS = ("latent_frequency", "current_labels", "latent_npmi")


@pytest.fixture(scope="module")
def spark(store: Path, tmp_path_factory):
    """A local Spark session with the exported Parquet files as tables and the views of
    sql-export --dialect spark created over them."""
    from pyspark.sql import SparkSession  # the dev extra installs pyspark

    root = tmp_path_factory.mktemp("spark")
    out = root / "export"
    manifest = export(store, out, progress=False)
    result = sql_export(store, "spark")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("saedb-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    try:
        for table, entry in manifest["tables"].items():
            session.sql(f"CREATE TABLE `{table}` USING parquet LOCATION '{out / entry['path']}'")
            if entry["partition_by"]:  # register the hive partitions found under LOCATION
                session.sql(f"MSCK REPAIR TABLE `{table}`")
            assert session.table(table).count() == entry["rows"], table
        by_name = {o.name: o for o in result.exported}
        for view in SPARK_VIEWS:
            session.sql(by_name[view].sql.rstrip().rstrip(";"))
        # npmi with its defaults, as a view (the statement after the parameterised query)
        session.sql(by_name["npmi"].sql.split(";\n")[1].strip().rstrip(";"))
        yield session, by_name
    finally:
        session.stop()


def _key(row: tuple) -> tuple:
    """The row's non-float values: rows whose floats tie up to rounding may come in another
    order from Spark, so rows are matched by these."""
    return tuple(repr(v) for v in row if not isinstance(v, float))


def _same(got: list[tuple], want: list[tuple], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} rows in Spark, {len(want)} in DuckDB"
    assert want, f"{what}: the example gives no rows, it tests nothing"
    got, want = sorted(got, key=_key), sorted(want, key=_key)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w), what
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float):
                assert a == pytest.approx(b, rel=1e-6, abs=1e-9), (what, g, w)
            else:
                assert a == b, (what, g, w)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPARK_CALLS))
def test_spark_table_macro_matches_duckdb(spark, store: Path, name: str) -> None:
    session, by_name = spark
    args, duck_call = SPARK_CALLS[name]
    obj = by_name[duck_call.split("(")[0]]
    query = obj.sql.split(";\n")[0]  # the query; a view of the defaults may follow
    query = "\n".join(ln for ln in query.splitlines() if not ln.startswith("--"))
    bound = {**obj.defaults, **args}
    assert set(bound) == set(obj.params)
    rows = session.sql(query, args=bound).collect()
    with duckdb.connect(str(store), read_only=True) as duck:
        want = duck.execute(f"SELECT * FROM {duck_call}").fetchall()
        columns = [d[0] for d in duck.description]
    assert rows and list(rows[0].asDict()) == columns
    _same([tuple(r) for r in rows], want, name)


@pytest.mark.slow
@pytest.mark.parametrize("view", SPARK_VIEWS)
def test_spark_view_matches_duckdb(spark, store: Path, view: str) -> None:
    session, _ = spark
    with duckdb.connect(str(store), read_only=True) as duck:
        described = duck.execute(f"DESCRIBE {view}").fetchall()
        stamp = {r[0] for r in described if r[1].startswith("TIMESTAMP")}
        columns = [r[0] for r in described]
        order = ", ".join(str(i + 1) for i in range(len(columns)))
        duck_cols = ", ".join(f"epoch({c})" if c in stamp else c for c in columns)
        want = duck.execute(f"SELECT {duck_cols} FROM {view} ORDER BY {order}").fetchall()
    spark_cols = ", ".join(f"CAST({c} AS DOUBLE)" if c in stamp else c for c in columns)
    assert session.table(view).columns == columns
    rows = session.sql(f"SELECT {spark_cols} FROM {view} ORDER BY {order}").collect()
    _same([tuple(r) for r in rows], want, view)


@pytest.mark.slow
def test_spark_view_of_defaults_matches_duckdb(spark, store: Path) -> None:
    session, _ = spark
    with duckdb.connect(str(store), read_only=True) as duck:
        want = duck.execute("SELECT * FROM npmi()").fetchall()
    _same([tuple(r) for r in session.sql("SELECT * FROM npmi").collect()], want, "npmi view")
