"""The catalog's views and macros transpiled for Postgres, Spark and Trino (with sqlglot).

The exported SQL reads the tables that ``saedb export`` writes, under the same names and
columns (``doc_latents`` gains the ``dataset_id`` it is partitioned by, which nothing here
needs). Each catalog object becomes what the target engine allows:

- a view becomes a view (``CREATE OR REPLACE VIEW``) in every dialect;
- a scalar macro becomes a SQL function in Postgres; in Spark and Trino it is inlined where
  used (neither has a portable ``CREATE FUNCTION ... RETURN expr``);
- a table macro becomes a SQL function ``RETURNS TABLE`` in Postgres (same parameter names and
  defaults); in Spark a query with named ``:name`` markers for ``spark.sql(q, args={...})``,
  in Trino a query with ``?`` markers for ``PREPARE`` / ``EXECUTE ... USING`` (the parameter
  of each marker listed in order in its header); when every parameter has a default, also a
  view of the defaults.

How: each macro's body is parsed with sqlglot (DuckDB dialect); calls of other catalog macros
are expanded in place (a scalar macro becomes its expression, a table macro a subquery), the
object's own parameters become typed placeholders, a few DuckDB idioms are rewritten into
portable SQL (``unnest`` of a ``list()`` subquery becomes that subquery, ``error()`` becomes
the engine's way to raise, unaliased derived tables get an alias, saedb's counters read as
empty: see :data:`CACHE_TABLES`), and sqlglot writes the
result in the target dialect. An object that uses something with no portable equivalent
(struct values, lambdas, DuckDB-only functions such as ``hash``) is reported as not
transpiled, with the reason: nothing is left out silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

from saedb import catalog
from saedb.catalog import SqlObject
from saedb.errors import ConfigError, StoreError
from saedb.transpile import (
    CACHE_TABLES,
    PARAM_TYPES,
    Caches,
    Macro,
    NotPortable,
    expand,
    fixed_params,
    parse_macro,
    rewrite,
    substitute,
    view_body,
)

DIALECTS = ("postgres", "spark", "trino")
"""The engines ``sql-export`` writes for (sqlglot dialect names)."""

_PREFIX = "saedb_param__"
_PLACEHOLDER = re.compile(rf"\b{_PREFIX}([a-z_][a-z0-9_]*)\b", re.IGNORECASE)

POSTGRES_PRELUDE = """\
-- saedb_cosine(a, b): DuckDB's list_cosine_similarity of two equally long arrays.
CREATE OR REPLACE FUNCTION saedb_cosine(a real[], b real[]) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $saedb$
    SELECT sum(CAST(x AS float8) * y)
           / (sqrt(sum(CAST(x AS float8) * x)) * sqrt(sum(CAST(y AS float8) * y)))
    FROM unnest(a, b) AS t(x, y)
$saedb$;

-- saedb_error(message, witness): raises message; returns the witness's type so that it fits
-- wherever DuckDB's error() did (COALESCE and CASE branches).
CREATE OR REPLACE FUNCTION saedb_error(message text, witness anyelement) RETURNS anyelement
LANGUAGE plpgsql VOLATILE AS $saedb$
BEGIN
    RAISE EXCEPTION '%', message;
END
$saedb$;
"""


@dataclass
class ExportedObject:
    """What one catalog object became in the target dialect, or why it did not."""

    name: str
    kind: str
    became: str = ""
    sql: str = ""
    reason: str = ""
    params: list[str] = field(default_factory=list)
    """Spark: the named markers; Trino: the parameter of each ``?``, in order."""
    defaults: dict[str, object] = field(default_factory=dict)
    """Table macros: the parameters that have a default, with it (as a Python value); Spark
    and Trino need every marker bound, so callers start from these."""

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclass
class SqlExport:
    """The result of :func:`sql_export`: every catalog object, in dependency order."""

    dialect: str
    objects: list[ExportedObject]
    prelude: str = ""
    tables: str = ""

    @property
    def exported(self) -> list[ExportedObject]:
        return [o for o in self.objects if o.ok and o.sql]

    @property
    def failed(self) -> list[ExportedObject]:
        return [o for o in self.objects if not o.ok]

    def script(self) -> str:
        """Everything as one SQL text: prelude, table DDL, then the objects; the objects that
        could not be transpiled are listed in comments at the top."""
        lines = [
            f"-- saedb catalog for {self.dialect}, transpiled with sqlglot {sqlglot.__version__}"
        ]
        lines += [f"-- NOT transpiled: {o.name} ({o.kind}): {o.reason}" for o in self.failed]
        parts = ["\n".join(lines) + "\n"]
        if self.prelude:
            parts.append(self.prelude)
        if self.tables:
            parts.append(self.tables)
        parts += [o.sql for o in self.exported]
        return "\n".join(parts)


# -- generation ------------------------------------------------------------------------------


def _defaults(params: list[tuple[str, exp.Expression | None]]) -> dict[str, object]:
    """The parameters' defaults as Python values (NULL -> None)."""
    out: dict[str, object] = {}
    for name, default in params:
        if default is None:
            continue
        if isinstance(default, exp.Null):
            out[name] = None
        elif isinstance(default, exp.Literal) and default.is_string:
            out[name] = default.this
        elif isinstance(default, exp.Literal):
            out[name] = float(default.this) if "." in default.this else int(default.this)
        elif isinstance(default, exp.Boolean):
            out[name] = default.this
        else:
            out[name] = default.sql("duckdb")
    return out


def _quoted(name: str, dialect: str) -> str:
    """An identifier quoted the target's way (backticks in Spark, double quotes elsewhere)."""
    return exp.to_identifier(name, quoted=True).sql(dialect)


def _type(duckdb_type: str, dialect: str) -> str:
    return exp.DataType.build(duckdb_type, dialect="duckdb").sql(dialect)


def _placeholders(macro: Macro) -> dict[str, exp.Expression]:
    values: dict[str, exp.Expression] = {}
    fixed = fixed_params(macro)
    for name, _ in macro.params:
        if name in fixed:
            values[name] = exp.Null()
            continue
        if name not in PARAM_TYPES:
            raise NotPortable(f"no SQL type is known for its parameter {name} (PARAM_TYPES)")
        if re.search(r"STRUCT|MAP", PARAM_TYPES[name]):
            raise NotPortable(
                f"its parameter {name} is a {PARAM_TYPES[name]}, "
                "which no target engine takes as a parameter"
            )
        values[name] = exp.Cast(
            this=exp.column(f"{_PREFIX}{name}"),
            to=exp.DataType.build(PARAM_TYPES[name], dialect="duckdb"),
        )
    return values


def _generate(tree: exp.Expression, dialect: str) -> str:
    try:
        return tree.sql(
            dialect=dialect, pretty=True, comments=False, unsupported_level=sqlglot.ErrorLevel.RAISE
        )
    except sqlglot.errors.SqlglotError as exc:
        raise NotPortable(f"sqlglot cannot write it for {dialect}: {exc}") from exc


def _describe(con: duckdb.DuckDBPyConnection, macro: Macro) -> list[tuple[str, str]]:
    """The output columns of a macro, from DuckDB binding a call with typed NULLs."""
    args = ", ".join(
        f"{n} := CAST(NULL AS {PARAM_TYPES[n]})"
        if d is not None
        else f"CAST(NULL AS {PARAM_TYPES[n]})"
        for n, d in macro.params
    )
    if macro.obj.kind == "table_macro":
        sql = f"DESCRIBE SELECT * FROM {macro.name}({args})"
    else:
        sql = f"DESCRIBE SELECT {macro.name}({args}) AS result"
    try:
        return [(r[0], r[1]) for r in con.execute(sql).fetchall()]
    except duckdb.Error as exc:
        raise NotPortable(f"DuckDB cannot describe its output: {exc}") from exc


def _export_view(
    obj: SqlObject, macros: dict[str, Macro], dialect: str, caches: Caches
) -> ExportedObject:
    tree = rewrite(expand(view_body(obj), macros), dialect, caches)
    body = _generate(tree, dialect)
    name = _quoted(obj.name, dialect)
    head = f"-- {obj.name}: {obj.answers}\n"
    return ExportedObject(
        obj.name, obj.kind, "view", head + f"CREATE OR REPLACE VIEW {name} AS\n{body};\n"
    )


def _export_macro(
    macro: Macro,
    macros: dict[str, Macro],
    dialect: str,
    con: duckdb.DuckDBPyConnection,
    caches: Caches,
) -> ExportedObject:
    obj = macro.obj
    if obj.kind == "macro" and dialect != "postgres":
        return ExportedObject(
            obj.name,
            obj.kind,
            f"inlined where used ({dialect} has no portable SQL function definition)",
        )
    values = _placeholders(macro)
    fixed = fixed_params(macro)
    params = [(n, d) for n, d in macro.params if n not in fixed]
    tree = rewrite(expand(substitute(macro.body, values), macros), dialect, caches)
    body = _generate(tree, dialect)
    order = [m[1].lower() for m in _PLACEHOLDER.finditer(body)]
    position = {n: i + 1 for i, (n, _) in enumerate(params)}
    note = f" ({', '.join(fixed)} left out, NULL: see CACHE_TABLES)" if fixed else ""
    head = f"-- {obj.name}: {obj.answers}\n-- parameters: {obj.params}\n"
    if dialect == "postgres":
        text = _PLACEHOLDER.sub(lambda m: f"${position[m[1].lower()]}", body)
        signature = ", ".join(
            f"{n} {_type(PARAM_TYPES[n], dialect)}"
            + (f" DEFAULT {d.sql('postgres')}" if d is not None else "")
            for n, d in params
        )
        columns = _describe(con, macro)
        volatility = "STABLE" if obj.inputs else "IMMUTABLE"
        if obj.kind == "table_macro":
            returns = (
                "TABLE ("
                + ", ".join(
                    f"{catalog.quote_identifier(c)} {_type(t, dialect)}" for c, t in columns
                )
                + ")"
            )
            became = "function returning TABLE"
        else:
            returns = _type(columns[0][1], dialect)
            text = f"SELECT {text}"
            became = "function"
        sql = (
            f"{head}CREATE OR REPLACE FUNCTION {catalog.quote_identifier(obj.name)}({signature})\n"
            f"RETURNS {returns}\nLANGUAGE sql {volatility} AS $saedb$\n{text}\n$saedb$;\n"
        )
        return ExportedObject(obj.name, obj.kind, became + note, sql, params=[n for n, _ in params])
    if dialect == "spark":
        text = _PLACEHOLDER.sub(lambda m: f":{m[1].lower()}", body)
        became = "parameterised query (named markers " + ", ".join(f":{n}" for n, _ in params) + ")"
        names = [n for n, _ in params]
        head += "-- run with spark.sql(query, args={...}) binding every marker; defaults: "
        head += json.dumps(_defaults(params), ensure_ascii=False) + "\n"
    else:
        text = _PLACEHOLDER.sub("?", body)
        became = f"parameterised query ({len(order)} ? markers)"
        names = order
        head += "-- run with PREPARE q FROM ...; EXECUTE q USING <values in this order>: "
        head += ", ".join(order) + "\n-- defaults: "
        head += json.dumps(_defaults(params), ensure_ascii=False) + "\n"
    sql = f"{head}{text};\n"
    if all(d is not None for _, d in macro.params):
        typed = {  # typed, as the placeholders are: Spark cannot use an untyped NULL list
            n: exp.Null()
            if n in fixed
            else exp.Cast(this=d.copy(), to=exp.DataType.build(PARAM_TYPES[n], dialect="duckdb"))
            for n, d in macro.params
            if d is not None
        }
        defaults = substitute(macro.body, typed)
        view = _generate(rewrite(expand(defaults, macros), dialect, caches), dialect)
        sql += (
            f"\n-- {obj.name} with every parameter at its default, as a view\n"
            f"CREATE OR REPLACE VIEW {_quoted(obj.name, dialect)} AS\n{view};\n"
        )
        became += f" and view {obj.name} (defaults)"
    return ExportedObject(
        obj.name, obj.kind, became + note, sql, params=names, defaults=_defaults(params)
    )


def table_ddl(con: duckdb.DuckDBPyConnection, dialect: str) -> str:
    """``CREATE TABLE`` statements for the tables ``saedb export`` writes (Postgres), so the
    exported files can be loaded with ``COPY``; ``doc_latents`` with its ``dataset_id``."""
    from saedb.export import _select_list, _tables

    out = ["-- the tables of saedb export (load the files into them, e.g. with COPY)"]
    for table in _tables(con):
        _, columns = _select_list(con, table)
        described = dict(
            (r[0], r[1])
            for r in con.execute(f"DESCRIBE {catalog.quote_identifier(table)}").fetchall()
        )
        for c in columns:  # the files hold JSON as text; Postgres can parse it back on COPY
            if described.get(c["name"]) == "JSON" and dialect == "postgres":
                c["type"] = "JSONB"
        if table == "doc_latents":
            columns.append({"name": "dataset_id", "type": "INTEGER"})
        cols = ",\n".join(
            f"    {catalog.quote_identifier(c['name'])} {_type(c['type'], dialect)}"
            for c in columns
        )
        out.append(f"CREATE TABLE IF NOT EXISTS {catalog.quote_identifier(table)} (\n{cols}\n);")
    return "\n".join(out) + "\n"


def _schema_version(store: Path) -> int:
    """The store's schema version: read from the file, or, while ``saedb serve`` holds it
    (no other process may open it), asked of that server."""
    from saedb import migrations
    from saedb.server.snapshot import held_by_another_process, open_error, served_schema_version

    try:
        with duckdb.connect(str(store), read_only=True) as stored:
            return migrations.current_version(stored)
    except duckdb.Error as exc:
        version = served_schema_version(store) if held_by_another_process(exc) else None
        if version is None:
            raise open_error(store, exc) from exc
        return version


def sql_export(store: str | Path, dialect: str) -> SqlExport:
    """Transpile every catalog object for ``dialect`` (one of :data:`DIALECTS`).

    ``store`` is read (read-only) for the output types of the macros, which Postgres functions
    declare, and for the tables' columns.
    """
    if dialect not in DIALECTS:
        raise ConfigError(f"unknown dialect {dialect!r}; valid dialects are {', '.join(DIALECTS)}")
    store = Path(store)
    if not store.exists():
        raise StoreError(f"no store at {store}; create it with: saedb init {store}")
    from saedb import migrations

    found, known = _schema_version(store), migrations.latest_version()
    if found != known:
        raise StoreError(
            f"{store} is at schema version {found} and this saedb at {known}: the exported SQL "
            f"would not match its tables; open it once with this saedb (saedb info {store}) "
            "to upgrade it, or use the saedb that made it"
        )
    # The catalog's output types and the tables' columns, from an empty in-memory copy of the
    # schema with the catalog installed: the same as the store's, whatever its macros' age.
    con = duckdb.connect(":memory:")
    try:
        from saedb import migrations

        migrations.migrate(con)
        catalog.install(con)
        objects = catalog.dependency_order(catalog.load_catalog(parser=con))
        caches: Caches = {}
        for table in CACHE_TABLES:
            try:
                described = con.execute(f"DESCRIBE {catalog.quote_identifier(table)}").fetchall()
            except duckdb.Error:  # a schema without it
                continue
            caches[table] = [(r[0], r[1]) for r in described]
        macros: dict[str, Macro] = {}
        for obj in objects:
            if obj.kind != "view":
                macros[obj.name.lower()] = parse_macro(obj)
        results = []
        for obj in objects:
            try:
                if obj.kind == "view":
                    results.append(_export_view(obj, macros, dialect, caches))
                else:
                    macro = macros[obj.name.lower()]
                    results.append(_export_macro(macro, macros, dialect, con, caches))
            except NotPortable as exc:
                results.append(ExportedObject(obj.name, obj.kind, reason=str(exc)))
        tables = table_ddl(con, dialect) if dialect == "postgres" else ""
    finally:
        con.close()
    prelude = POSTGRES_PRELUDE if dialect == "postgres" else ""
    return SqlExport(dialect=dialect, objects=results, prelude=prelude, tables=tables)


def write_out(result: SqlExport, out_dir: str | Path) -> list[Path]:
    """Write one ``<name>.sql`` per transpiled object, ``all.sql`` (everything, in order) and
    ``NOT_TRANSPILED.txt`` (one line per object that could not be) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for obj in result.exported:
        path = out / f"{obj.name}.sql"
        path.write_text(obj.sql, encoding="utf-8")
        written.append(path)
    (out / "all.sql").write_text(result.script(), encoding="utf-8")
    failed = "".join(f"{o.name} ({o.kind}): {o.reason}\n" for o in result.failed)
    (out / "NOT_TRANSPILED.txt").write_text(failed or "(none)\n", encoding="utf-8")
    return written + [out / "all.sql", out / "NOT_TRANSPILED.txt"]
