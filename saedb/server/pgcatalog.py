"""Postgres catalog answers for drivers and BI tools, built from DuckDB's own catalog.

Drivers learn a database's schema from ``pg_catalog`` (psql's ``\\dt``/``\\d``, pgJDBC's
``DatabaseMetaData.getTables/getColumns``, SQLAlchemy's inspector); the queries they send are
kept in ``tests/fixtures/pg_driver_queries/``. DuckDB's built-in ``pg_catalog`` is partial, so
each session that sends such a query gets, once, temporary tables with the Postgres 15 columns
of every catalog relation listed in ``pg_catalog_columns`` (filled from ``duckdb_tables()``,
``duckdb_views()`` and ``duckdb_columns()`` for the store's own objects, empty where DuckDB
has no counterpart: policies, publications, inheritance) and temporary macros for the catalog
functions (``format_type``, ``pg_get_expr``, ``pg_table_is_visible``, ``version``, ...).
Temporary objects shadow DuckDB's built-ins, so rewriting a query only has to drop the
``pg_catalog.`` qualifiers and turn Postgres-only syntax (``::regclass``, ``COLLATE``,
``OPERATOR(pg_catalog.~)``) into DuckDB's; ``rewrite`` does that with sqlglot.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from saedb.server import types as pgt
from saedb.server.pg_catalog_columns import COLUMNS, TYPES

CATALOG_HINT = re.compile(
    r"\bpg_[a-z_]+|::\s*\"?(?:pg_catalog\.)?reg|\bversion\s*\(|\bcollate\b|operator\s*\(|"
    r"current_schemas|format_type|to_regtype",
    re.IGNORECASE,
)
NAMESPACE_OIDS = {"pg_catalog": 11, "information_schema": 13000, "main": 2200}
OWNER_OID = 10
# Well-known relation oids drivers cast from names ('pg_class'::regclass).
SYSTEM_RELATIONS = {
    "pg_type": 1247,
    "pg_attribute": 1249,
    "pg_proc": 1255,
    "pg_class": 1259,
    "pg_constraint": 2606,
    "pg_description": 2609,
    "pg_namespace": 2615,
}
_DUCK = {
    "boolean": "BOOLEAN",
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "real": "FLOAT",
    "oid": "BIGINT",
    "regproc": "BIGINT",
    "regtype": "BIGINT",
    "xid": "BIGINT",
    "timestamp with time zone": "TIMESTAMPTZ",
    "oid[]": "BIGINT[]",
    "oidvector": "BIGINT[]",
    "int2vector": "SMALLINT[]",
    "smallint[]": "SMALLINT[]",
    "text[]": "VARCHAR[]",
    "aclitem[]": "VARCHAR[]",
    '"char"[]': "VARCHAR[]",
}
_NULL_BY_DEFAULT = {
    "pg_node_tree",
    "anyarray",
    "bytea",
    "inet",
    "pg_ndistinct",
    "pg_dependencies",
    "pg_mcv_list",
    "pg_statistic[]",
}


def _duck_type(pg_type: str) -> str:
    return _DUCK.get(pg_type, "VARCHAR")


def _default(pg_type: str) -> Any:
    if (
        pg_type.endswith("[]")
        or pg_type in _NULL_BY_DEFAULT
        or pg_type in ("oidvector", "int2vector")
    ):
        return None
    duck = _duck_type(pg_type)
    if duck == "BOOLEAN":
        return False
    if duck in ("SMALLINT", "INTEGER", "BIGINT", "FLOAT"):
        return 0
    if duck == "TIMESTAMPTZ":
        return None
    return ""


def _table(rel: str, rows: list[dict[str, Any]]) -> pa.Table:
    cols = COLUMNS[rel]
    arrays = {}
    for name, pg_type in cols:
        default = _default(pg_type)
        values = [r.get(name, default) for r in rows]
        arrays[name] = values
    return pa.table(arrays) if rows else None


def _type_rows() -> tuple[list[dict], dict[int, str]]:
    rows, names = [], {}
    for oid, fmt, typname, typlen, typtype, cat, elem, arr, delim in TYPES:
        names[oid] = fmt
        rows.append(
            {
                "oid": oid,
                "typname": typname,
                "typnamespace": 11,
                "typowner": OWNER_OID,
                "typlen": typlen,
                "typbyval": 0 < typlen <= 8,
                "typtype": typtype,
                "typcategory": cat,
                "typisdefined": True,
                "typdelim": delim,
                "typelem": elem,
                "typarray": arr,
                "typtypmod": -1,
                "typndims": 0,
                "typcollation": 100 if cat == "S" else 0,
                "typalign": "i",
                "typstorage": "x" if typlen < 0 else "p",
            }
        )
    return rows, names


def build(
    cur: duckdb.DuckDBPyConnection, *, user: str, settings: dict[str, str], version: str, pid: int
) -> None:
    """Create this session's temporary catalog tables and macros (on ``cur``)."""
    db = cur.execute("SELECT current_database()").fetchall()[0][0]
    schemas = [
        r[0]
        for r in cur.execute(
            "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? AND NOT internal "
            "ORDER BY schema_name",
            [db],
        ).fetchall()
    ]
    ns_oid = dict(NAMESPACE_OIDS)
    for i, s in enumerate(s for s in schemas if s not in ns_oid):
        ns_oid[s] = 16000 + i
    namespaces = [{"oid": o, "nspname": n, "nspowner": OWNER_OID} for n, o in ns_oid.items()]
    rels = cur.execute(
        """
        SELECT schema_name, table_name, table_oid, 'r', comment, NULL FROM duckdb_tables()
        WHERE database_name = $db AND NOT temporary
        UNION ALL
        SELECT schema_name, view_name, view_oid, 'v', comment, sql FROM duckdb_views()
        WHERE database_name = $db AND NOT temporary AND NOT internal
        """,
        {"db": db},
    ).fetchall()
    cols = cur.execute(
        """
        SELECT schema_name, table_name, column_name, column_index, data_type, is_nullable,
               column_default, comment
        FROM duckdb_columns() WHERE database_name = ? AND NOT internal
        ORDER BY table_oid, column_index
        """,
        [db],
    ).fetchall()
    classes, descriptions, attributes, attrdefs, views = [], [], [], [], []
    rel_oid: dict[tuple[str, str], int] = {}
    natts: dict[tuple[str, str], int] = {}
    for schema, name, _i, _n, _t, _nl, _d, _c in cols:
        natts[(schema, name)] = natts.get((schema, name), 0) + 1
    for schema, name, oid, kind, comment, sql in rels:
        oid = 100000 + int(oid)
        rel_oid[(schema, name)] = oid
        classes.append(
            {
                "oid": oid,
                "relname": name,
                "relnamespace": ns_oid.get(schema, 2200),
                "relowner": OWNER_OID,
                "relam": 2 if kind == "r" else 0,
                "relkind": kind,
                "relpersistence": "p",
                "relnatts": natts.get((schema, name), 0),
                "reltuples": -1.0,
                "relispopulated": True,
                "relreplident": "d",
            }
        )
        if comment:
            descriptions.append(
                {"objoid": oid, "classoid": 1259, "objsubid": 0, "description": comment}
            )
        if sql:
            views.append({"oid": oid, "definition": sql})
    for name, oid in SYSTEM_RELATIONS.items():
        classes.append(
            {
                "oid": oid,
                "relname": name,
                "relnamespace": 11,
                "relowner": OWNER_OID,
                "relkind": "r",
                "relpersistence": "p",
                "relam": 2,
            }
        )
    for schema, name, col, index, data_type, nullable, default, comment in cols:
        oid = rel_oid.get((schema, name))
        if oid is None:
            continue
        typ = pgt.pg_oid(data_type)
        attributes.append(
            {
                "attrelid": oid,
                "attname": col,
                "atttypid": typ,
                "attlen": pgt.TYPE_LEN.get(typ, -1),
                "attnum": index + 1,
                "atttypmod": -1,
                "attndims": 1 if typ in pgt.ELEMENT_OF else 0,
                "attnotnull": not nullable,
                "atthasdef": default is not None,
                "attisdropped": False,
                "attislocal": True,
                "attcollation": 100 if typ in (pgt.TEXT, pgt.VARCHAR) else 0,
            }
        )
        if default is not None:
            attrdefs.append({"oid": 0, "adrelid": oid, "adnum": index + 1, "adbin": default})
        if comment:
            descriptions.append(
                {"objoid": oid, "classoid": 1259, "objsubid": index + 1, "description": comment}
            )
    type_rows, type_names = _type_rows()
    data: dict[str, list[dict]] = {
        "pg_namespace": namespaces,
        "pg_class": classes,
        "pg_attribute": attributes,
        "pg_type": type_rows,
        "pg_description": descriptions,
        "pg_attrdef": attrdefs,
        "pg_am": [{"oid": 2, "amname": "heap", "amhandler": 3, "amtype": "t"}],
        "pg_database": [
            {
                "oid": 16384,
                "datname": db,
                "datdba": OWNER_OID,
                "encoding": 6,
                "datcollate": "C.UTF-8",
                "datctype": "C.UTF-8",
                "datallowconn": True,
                "datconnlimit": -1,
            }
        ],
        "pg_roles": [
            {
                "rolname": user,
                "oid": OWNER_OID,
                "rolinherit": True,
                "rolcanlogin": True,
                "rolconnlimit": -1,
            }
        ],
        "pg_user": [{"usename": user, "usesysid": OWNER_OID}],
        "pg_settings": [
            {"name": k, "setting": v, "context": "user", "vartype": "string", "source": "session"}
            for k, v in sorted(settings.items())
        ],
        "pg_views": [
            {"schemaname": schema, "viewname": name, "viewowner": user, "definition": sql}
            for schema, name, _o, kind, _c, sql in rels
            if kind == "v"
        ],
        "pg_tables": [
            {"schemaname": schema, "tablename": name, "tableowner": user}
            for schema, name, _o, kind, _c, _s in rels
            if kind == "r"
        ],
    }
    for rel, pg_cols in COLUMNS.items():
        tbl = _table(rel, data.get(rel, []))
        defs = ", ".join(f'"{c}" {_duck_type(t)}' for c, t in pg_cols)
        cur.execute(f"CREATE OR REPLACE TEMP TABLE {rel} ({defs})")
        if tbl is not None:
            cur.register("_saedb_pgcat", tbl)
            try:
                cur.execute(f"INSERT INTO {rel} SELECT * FROM _saedb_pgcat")
            finally:
                cur.unregister("_saedb_pgcat")
    cur.execute("CREATE OR REPLACE TEMP TABLE saedb_format_type (oid BIGINT, name VARCHAR)")
    cur.executemany("INSERT INTO saedb_format_type VALUES (?, ?)", list(type_names.items()))
    cur.execute("CREATE OR REPLACE TEMP TABLE saedb_viewdefs (oid BIGINT, definition VARCHAR)")
    if views:
        cur.executemany(
            "INSERT INTO saedb_viewdefs VALUES (?, ?)", [(v["oid"], v["definition"]) for v in views]
        )
    for macro in _macros(version, pid):
        cur.execute(f"CREATE OR REPLACE TEMP MACRO {macro}")


def _macros(version: str, pid: int) -> list[str]:
    quoted = version.replace("'", "''")
    return [
        f"version() AS '{quoted}'",
        f"pg_backend_pid() AS {pid}",
        "pg_get_userbyid(x) AS (SELECT rolname FROM pg_roles LIMIT 1)",
        "pg_table_is_visible(x) AS true",
        "pg_type_is_visible(x) AS true",
        "pg_collation_is_visible(x) AS true",
        "pg_function_is_visible(x) AS true",
        "pg_get_expr(a, b, c := NULL) AS CAST(a AS VARCHAR)",
        "pg_get_indexdef(a, b := NULL, c := NULL) AS CAST(NULL AS VARCHAR)",
        "pg_get_constraintdef(a, b := NULL) AS CAST(NULL AS VARCHAR)",
        "pg_get_statisticsobjdef_columns(a) AS CAST(NULL AS VARCHAR)",
        "pg_get_partkeydef(a) AS CAST(NULL AS VARCHAR)",
        "pg_get_serial_sequence(a, b) AS CAST(NULL AS VARCHAR)",
        "pg_relation_is_publishable(a) AS false",
        "pg_get_viewdef(a, b := NULL) AS (SELECT definition FROM saedb_viewdefs WHERE oid = a)",
        "pg_total_relation_size(a) AS CAST(0 AS BIGINT)",
        "pg_relation_size(a, b := NULL) AS CAST(0 AS BIGINT)",
        "pg_tablespace_location(a) AS ''",
        "pg_encoding_to_char(a) AS 'UTF8'",
        "has_table_privilege(a, b := NULL, c := NULL) AS true",
        "has_schema_privilege(a, b := NULL, c := NULL) AS true",
        "has_database_privilege(a, b := NULL, c := NULL) AS true",
        "current_schemas(a) AS ['main']",
        "array_upper(a, d) AS len(a)",
        "format_type(t, m) AS (SELECT name FROM saedb_format_type WHERE oid = t)",
        "to_regtype(x) AS (SELECT oid FROM pg_type WHERE typname = x OR oid::VARCHAR = x LIMIT 1)",
        "saedb_regclass(x) AS coalesce(TRY_CAST(x AS BIGINT), (SELECT oid FROM pg_class "
        "WHERE relname = split_part(CAST(x AS VARCHAR), '.', -1) LIMIT 1))",
        "saedb_regclass_text(x) AS coalesce((SELECT relname FROM pg_class WHERE oid = x), "
        "CAST(x AS VARCHAR))",
        "saedb_regtype_text(x) AS coalesce((SELECT name FROM saedb_format_type WHERE oid = x), "
        "CAST(x AS VARCHAR))",
        "saedb_regnamespace_text(x) AS coalesce((SELECT nspname FROM pg_namespace "
        "WHERE oid = x), CAST(x AS VARCHAR))",
        "obj_description(a, b := NULL) AS (SELECT description FROM pg_description "
        "WHERE objoid = a AND objsubid = 0 LIMIT 1)",
        "col_description(a, b) AS (SELECT description FROM pg_description "
        "WHERE objoid = a AND objsubid = b LIMIT 1)",
        "shobj_description(a, b) AS CAST(NULL AS VARCHAR)",
        "quote_ident(x) AS '\"' || replace(x, '\"', '\"\"') || '\"'",
    ]


# -- rewriting -------------------------------------------------------------------------------

_REG = ("regclass", "regtype", "regnamespace", "regproc", "regprocedure", "regrole", "oid")


def _type_name(to: exp.DataType) -> str:
    s = to.sql("postgres").lower().strip('"')
    return s.removeprefix("pg_catalog.")


def _regclass_literal(value: str) -> exp.Expression:
    name = value.strip('"').split(".")[-1].strip('"')
    if name.isdigit():
        return exp.Literal.number(name)
    if name in SYSTEM_RELATIONS:
        return exp.Literal.number(SYSTEM_RELATIONS[name])
    return sqlglot.parse_one(
        f"(SELECT oid FROM pg_class WHERE relname = '{name.replace(chr(39), '')}' LIMIT 1)",
        read="duckdb",
    )


def _transform(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        left = node.this
        if isinstance(left, (exp.Identifier, exp.Var, exp.Column)) and left.name == "pg_catalog":
            return node.expression
    if isinstance(node, exp.Table) and node.db == "pg_catalog":
        node.set("db", None)
        return node
    if isinstance(node, exp.Column) and node.table and node.db == "pg_catalog":
        node.set("db", None)
        return node
    if isinstance(node, exp.Collate):
        return node.this
    if isinstance(node, exp.Cast):
        to = _type_name(node.to)
        inner = node.this
        if to in ("text", "varchar", "name") and isinstance(inner, exp.Cast):
            inner_to = _type_name(inner.to)
            if inner_to in ("regclass", "regtype", "regnamespace"):
                return exp.Anonymous(this=f"saedb_{inner_to}_text", expressions=[inner.this])
        if to == "regclass" and isinstance(inner, exp.Literal) and inner.is_string:
            return _regclass_literal(inner.this)
        if to == "regclass":
            return exp.Anonymous(this="saedb_regclass", expressions=[inner])
        if to in _REG:
            node.set("to", exp.DataType.build("BIGINT"))
            return node
        if isinstance(node.to, exp.DataType) and node.to.this == exp.DataType.Type.ARRAY:
            element = _type_name(node.to.expressions[0]) if node.to.expressions else ""
            to = element + "[]"
        simple = {
            "text": "TEXT",
            "int2": "SMALLINT",
            "int4": "INTEGER",
            "int8": "BIGINT",
            "int2[]": "SMALLINT[]",
            "name": "TEXT",
            "char": "TEXT",
            '"char"': "TEXT",
            "oid[]": "BIGINT[]",
            "text[]": "TEXT[]",
        }
        if to in simple:
            node.set("to", exp.DataType.build(simple[to], dialect="duckdb"))
        return node
    if isinstance(node, exp.Anonymous) and node.name.lower() == "json_build_object":
        return exp.Anonymous(this="json_object", expressions=node.expressions)
    return node


_OPERATOR = re.compile(
    r"OPERATOR\s*\(\s*pg_catalog\s*\.\s*([~!=<>*+\-/%|&^#@]+)\s*\)", re.IGNORECASE
)


def looks_like_catalog_query(sql: str) -> bool:
    return CATALOG_HINT.search(sql) is not None


def rewrite(sql: str) -> str:
    """The DuckDB text of a Postgres catalog query (raises sqlglot errors it cannot parse)."""
    sql = _OPERATOR.sub(r"\1", sql)
    tree = sqlglot.parse_one(sql, read="postgres")
    for _ in range(4):  # a replaced node's children are visited on the next pass
        before = tree.sql(dialect="postgres")
        tree = tree.transform(_transform)
        if tree.sql(dialect="postgres") == before:
            break
    return tree.sql(dialect="duckdb")
