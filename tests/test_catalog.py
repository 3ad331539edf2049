"""The SQL object catalog: header parsing, installation, comments for BI tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from saedb import catalog, migrations
from saedb.catalog import SqlObject, load_catalog, quote_identifier
from saedb.errors import ConfigError, StoreError

GOOD_VIEW = """\
-- name: answer
-- kind: view
-- answers: What is the answer?
-- inputs: none
-- grain: one row
-- notes: a long note that goes on
--   onto a second line
-- column x: the answer
CREATE OR REPLACE VIEW answer AS SELECT 42 AS x;
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tmp_path / "store.duckdb"))
    migrations.migrate(con)
    yield con
    con.close()


def make_root(tmp_path: Path, views: dict[str, str], macros: dict[str, str] | None = None) -> Path:
    root = tmp_path / "sql"
    for folder, files in (("views", views), ("macros", macros or {})):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / folder / name).write_text(text, encoding="utf-8")
    return root


def by_name() -> dict[str, SqlObject]:
    return {o.name: o for o in load_catalog()}


# -- the shipped catalog -------------------------------------------------------------------


def test_shipped_catalog_parses() -> None:
    objects = by_name()
    assert {"latent_frequency", "diff", "highlight", "top_documents", "normal_sf"} <= set(objects)
    for obj in objects.values():
        assert obj.answers.endswith((".", "?")), obj.path
        if obj.kind != "macro":
            assert obj.inputs, obj.path
            assert obj.grain and obj.columns, f"{obj.path}: grain and columns are documented"
        if obj.kind != "view":
            assert set(obj.param_docs) == set(obj.param_names), obj.path


def test_depends_lists_every_catalog_object_used() -> None:
    objects = by_name()
    for obj in objects.values():
        body = obj.sql.split("CREATE OR REPLACE", 1)[1]
        used = {n for n in objects if n != obj.name and f"{n}(" in body}
        assert used <= set(obj.depends), f"{obj.path} uses {used - set(obj.depends)}"


def test_install_creates_everything_with_comments(store: duckdb.DuckDBPyConnection) -> None:
    installed = catalog.install(store)
    objects = by_name()
    assert sorted(installed) == sorted(objects)
    position = {name: i for i, name in enumerate(installed)}
    for obj in objects.values():
        assert all(position[d] < position[obj.name] for d in obj.depends)

    views = dict(
        store.execute("SELECT view_name, comment FROM duckdb_views() WHERE NOT internal").fetchall()
    )
    functions = {
        r[0]: (r[1], r[2], list(r[3]))
        for r in store.execute(
            "SELECT function_name, function_type, comment, parameters FROM duckdb_functions() "
            "WHERE function_type IN ('macro', 'table_macro') AND schema_name = 'main'"
        ).fetchall()
    }
    for obj in objects.values():
        if obj.kind == "view":
            assert views[obj.name] == obj.description
            columns = store.execute(
                "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = ? "
                "ORDER BY column_index",
                [obj.name],
            ).fetchall()
            assert columns == list(obj.columns.items()), f"{obj.path}: document every column"
        else:
            kind, comment, params = functions[obj.name]
            assert kind == obj.kind
            assert comment == obj.description
            assert params == list(obj.param_names), f"{obj.path}: -- params: is the signature"


def test_install_twice_is_idempotent(store: duckdb.DuckDBPyConnection) -> None:
    def snapshot() -> tuple[list[tuple], list[tuple], list[tuple]]:
        return (
            store.execute(
                "SELECT view_name, sql, comment FROM duckdb_views() WHERE NOT internal ORDER BY 1"
            ).fetchall(),
            store.execute(
                "SELECT function_name, macro_definition, comment FROM duckdb_functions() "
                "WHERE schema_name = 'main' ORDER BY 1"
            ).fetchall(),
            store.execute(
                "SELECT table_name, column_name, comment FROM duckdb_columns() ORDER BY 1, 2"
            ).fetchall(),
        )

    catalog.install(store)
    store.execute("INSERT INTO settings VALUES ('default_sae_id', '3')")
    first = snapshot()
    catalog.install(store)
    assert snapshot() == first
    assert store.execute("SELECT value FROM settings").fetchall() == [("3",)]


def test_failed_install_rolls_back(store: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    broken = (
        GOOD_VIEW.replace("name: answer", "name: zz_broken")
        .replace("VIEW answer AS", "VIEW zz_broken AS")
        .replace("SELECT 42", "SELECT nope FROM nah")
    )
    root = make_root(tmp_path, {"answer.sql": GOOD_VIEW, "zz_broken.sql": broken})
    with pytest.raises(StoreError, match=r"sql/views/zz_broken\.sql.*nah"):
        catalog.install(store, load_catalog(root))
    assert store.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone() == (
        0,
    )


def test_comments_may_hold_quotes(store: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    text = GOOD_VIEW.replace("What is the answer?", 'What\'s the "answer"?')
    catalog.install(store, load_catalog(make_root(tmp_path, {"answer.sql": text})))
    comment = store.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'answer'")
    assert comment.fetchone()[0].startswith('What\'s the "answer"?')


# -- parsing errors ------------------------------------------------------------------------


def test_good_file_parses(tmp_path: Path) -> None:
    (obj,) = load_catalog(make_root(tmp_path, {"answer.sql": GOOD_VIEW}))
    assert obj.name == "answer" and obj.kind == "view" and obj.inputs == ()
    assert obj.notes == "a long note that goes on onto a second line"
    assert obj.columns == {"x": "the answer"}


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (lambda t: t.replace("-- answers: What is the answer?\n", ""), "'-- answers:' is missing"),
        (lambda t: t.replace("-- kind: view\n", ""), "'-- kind:' is missing"),
        (lambda t: t.replace("-- grain: one row\n", ""), "'-- grain:' is missing"),
        (lambda t: t.replace("-- name: answer", "-- name: other"), "but '-- name:' says"),
        (lambda t: t.replace("-- notes:", "-- noets:"), "unknown header '-- noets:'"),
        (lambda t: t + "CREATE OR REPLACE VIEW answer2 AS SELECT 1;\n", "holds 2 SQL statements"),
        (lambda t: t.replace("VIEW answer AS", "VIEW answr AS"), "creates view 'answr'"),
        (lambda t: t.replace("-- kind: view", "-- kind: macro"), "does not belong in sql/views"),
        (lambda t: t.replace("-- column x", "-- column x: again\n-- column x"), "appears twice"),
        (lambda t: t.replace("SELECT 42", "SELEC 42"), "cannot parse the SQL"),
    ],
)
def test_bad_headers_name_the_file(tmp_path: Path, edit, complaint: str) -> None:
    root = make_root(tmp_path, {"answer.sql": edit(GOOD_VIEW)})
    with pytest.raises(StoreError, match="sql/views/answer.sql") as info:
        load_catalog(root)
    assert complaint in str(info.value)


MACRO = """\
-- name: plus
-- kind: macro
-- answers: What is x plus n?
-- inputs: none
-- params: x, n := 1
-- param x: a number
-- param n: what to add
{depends}CREATE OR REPLACE MACRO plus(x, n := 1) AS x + n;
"""


def test_macro_params_must_be_described(tmp_path: Path) -> None:
    text = MACRO.format(depends="").replace("-- param n: what to add\n", "")
    with pytest.raises(StoreError, match="describe each parameter"):
        load_catalog(make_root(tmp_path, {}, {"plus.sql": text}))
    text = MACRO.format(depends="").replace("-- params: x, n := 1\n", "")
    with pytest.raises(StoreError, match="'-- params:' is missing"):
        load_catalog(make_root(tmp_path, {}, {"plus.sql": text}))


def test_table_macro_kind_is_checked(tmp_path: Path) -> None:
    text = MACRO.format(depends="").replace("AS x + n", "AS TABLE SELECT x + n AS y")
    with pytest.raises(StoreError, match="creates table_macro 'plus'"):
        load_catalog(make_root(tmp_path, {}, {"plus.sql": text}))


def test_unknown_dependency_and_cycles_are_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, {}, {"plus.sql": MACRO.format(depends="-- depends: nothing\n")})
    with pytest.raises(StoreError, match="depends on 'nothing'"):
        catalog.dependency_order(load_catalog(root))
    cyc = tmp_path / "cyc"
    other = MACRO.replace("plus", "minus").format(depends="-- depends: plus\n")
    root = make_root(
        cyc, {}, {"plus.sql": MACRO.format(depends="-- depends: minus\n"), "minus.sql": other}
    )
    with pytest.raises(StoreError, match="cycle"):
        catalog.dependency_order(load_catalog(root))


def test_dependencies_install_first(store: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    twice = MACRO.replace("plus", "twice").replace("AS x + n", "AS plus(x, n) + n")
    root = make_root(
        tmp_path,
        {},
        {
            "twice.sql": twice.format(depends="-- depends: plus\n"),
            "plus.sql": MACRO.format(depends=""),
        },
    )
    assert catalog.install(store, load_catalog(root)) == ["plus", "twice"]
    assert store.execute("SELECT twice(1, n := 2)").fetchone() == (5,)


# -- identifiers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["plain", 'we"ird', "spa ce", "ünïcode", 'x"; DROP TABLE t; --'])
def test_quote_identifier_round_trips(name: str) -> None:
    con = duckdb.connect()
    con.execute(f"CREATE TABLE {quote_identifier(name)} ({quote_identifier(name)} INTEGER)")
    found = con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal")
    assert found.fetchall() == [(name, name)]
    con.close()


def test_quote_identifier_refuses_empty() -> None:
    with pytest.raises(ConfigError):
        quote_identifier("")
