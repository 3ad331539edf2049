"""The catalog of saedb's SQL objects: the views and macros analysts query.

Every object lives in its own file, ``sql/views/<name>.sql`` or ``sql/macros/<name>.sql``,
holding exactly one ``CREATE OR REPLACE VIEW|MACRO`` statement after a block of header lines::

    -- name: latent_frequency
    -- kind: view                      (view | macro | table_macro)
    -- answers: How often does each latent fire in each dataset?
    -- inputs: doc_latents, doc_encodings, documents, datasets
    -- grain: one row per (sae_id, dataset_id, latent_id) where the latent fired
    -- params: a, b, sae := NULL       (macros: the signature as written)
    -- param a: name of the first dataset        (one line per parameter)
    -- depends: resolve_sae, normal_sf (other catalog objects it uses)
    -- notes: anything else worth knowing (continuation lines start with "--" + 2 spaces)
    -- column n_fired: documents where the latent fired

:func:`load_catalog` parses and checks them; :func:`install` creates every object in dependency
order and copies the descriptions into the store with ``COMMENT ON`` so that BI tools and
``duckdb_views()`` / ``duckdb_columns()`` / ``duckdb_functions()`` show them. The objects are
plain SQL persisted in the file: any DuckDB client can use them without saedb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path

import duckdb

from saedb.errors import ConfigError, StoreError
from saedb.migrations import sql_root

KINDS = ("view", "macro", "table_macro")
"""The kinds of catalog object: a view, a scalar macro, a table macro."""

_DIRECTORY_KINDS = {"views": ("view",), "macros": ("macro", "table_macro")}
_REQUIRED = ("name", "kind", "answers", "inputs")
_KNOWN = frozenset(_REQUIRED + ("grain", "params", "depends", "notes"))
_HEADER = re.compile(
    r"^-- (?:(?P<key>[a-z_]+)|(?:(?P<item>column|param) (?P<what>\S+))): ?(?P<value>.*)$"
)
_CONTINUATION = re.compile(r"^--\s{2,}(?P<value>\S.*)$")
_CREATE = re.compile(
    r"^\s*CREATE\s+OR\s+REPLACE\s+(?P<type>VIEW|MACRO)\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE,
)
_LEADING_COMMENTS = re.compile(r"\A(?:\s*--[^\n]*(?:\n|\Z))*\s*")
_AS_TABLE = re.compile(r"\)\s*AS\s+TABLE\b", re.IGNORECASE)
_PARAM_NAME = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)")


def quote_identifier(name: str) -> str:
    """Quote a table, view, column or macro name for SQL: the one helper saedb uses for this.

    Double quotes inside are doubled (``a"b`` becomes ``"a""b"``), so any string is safe to
    splice into SQL after quoting.
    """
    if not name:
        raise ConfigError("an SQL identifier cannot be empty")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string as an SQL literal, for the few statements that take no bound parameters.

    DuckDB's ``COMMENT ON ... IS`` accepts only a literal, not ``?``; everywhere else saedb binds.
    """
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class SqlObject:
    """One view or macro of the catalog, parsed from its file."""

    name: str
    """The object's name in the store (also the file's name without ``.sql``)."""
    kind: str
    """``view``, ``macro`` (scalar) or ``table_macro``."""
    answers: str
    """The question it answers, in one sentence."""
    inputs: tuple[str, ...]
    """The tables and views it reads."""
    sql: str
    """The whole file: header comments and the ``CREATE OR REPLACE`` statement."""
    path: str
    """Where the file lives (for error messages)."""
    grain: str | None = None
    """What one output row is (views and table macros)."""
    params: str | None = None
    """The macro's signature as written, e.g. ``a, b, sae := NULL``."""
    param_docs: dict[str, str] = field(default_factory=dict)
    """Parameter name -> description (macros)."""
    depends: tuple[str, ...] = ()
    """Other catalog objects it uses; they are installed first."""
    notes: str | None = None
    """Anything else worth knowing (approximations, edge cases)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Output column -> description, in output order."""

    @property
    def param_names(self) -> tuple[str, ...]:
        """The parameter names in the order of the signature in ``params``."""
        if not self.params or self.params.strip().lower() == "none":
            return ()
        names = []
        for part in self.params.split(","):
            match = _PARAM_NAME.match(part)
            if match:
                names.append(match["name"])
        return tuple(names)

    @property
    def description(self) -> str:
        """The text stored with ``COMMENT ON`` for the object itself."""
        text = self.answers
        if self.grain:
            text += f" Grain: {self.grain}."
        if self.params:
            text += f" Parameters: {self.params}."
            text += "".join(f" {p}: {d}." for p, d in self.param_docs.items())
        return text


def _parse_headers(text: str, where: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Split the header block into (keys, columns, params); raise on malformed lines."""
    keys: dict[str, str] = {}
    columns: dict[str, str] = {}
    params: dict[str, str] = {}
    last: tuple[dict[str, str], str] | None = None
    for line in text.splitlines():
        stripped = line.rstrip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        header = _HEADER.match(stripped)
        if header:
            target = keys
            name = header["key"]
            if header["item"] == "column":
                target, name = columns, header["what"]
            elif header["item"] == "param":
                target, name = params, header["what"]
            elif name not in _KNOWN:
                raise StoreError(
                    f"{where}: unknown header '-- {name}:'; known headers are "
                    f"{', '.join(sorted(_KNOWN))}, 'column <col>' and 'param <name>'"
                )
            if name in target:
                raise StoreError(f"{where}: header for {name!r} appears twice")
            target[name] = header["value"].strip()
            last = (target, name)
            continue
        continuation = _CONTINUATION.match(stripped)
        if continuation and last is not None:
            target, name = last
            target[name] = f"{target[name]} {continuation['value'].strip()}".strip()
            continue
        raise StoreError(f"{where}: cannot read header line {stripped!r}")
    return keys, columns, params


def _split_list(value: str | None) -> tuple[str, ...]:
    if not value or value.strip().lower() == "none":
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_object(
    text: str,
    file_name: str,
    directory: str,
    where: str,
    parser: duckdb.DuckDBPyConnection | None = None,
) -> SqlObject:
    """Parse and check one catalog file's text; ``where`` names the file in errors.

    ``parser`` is any DuckDB connection, used only to split the SQL into statements.
    """
    keys, columns, param_docs = _parse_headers(text, where)
    for required in _REQUIRED:
        if not keys.get(required):
            raise StoreError(f"{where}: required header '-- {required}:' is missing")
    name, kind = keys["name"], keys["kind"]
    if file_name != f"{name}.sql":
        raise StoreError(f"{where}: the file is named {file_name!r} but '-- name:' says {name!r}")
    if kind not in _DIRECTORY_KINDS.get(directory, ()):
        raise StoreError(
            f"{where}: '-- kind: {kind}' does not belong in sql/{directory}/ "
            f"(there: {', '.join(_DIRECTORY_KINDS.get(directory, ()))})"
        )
    if kind in ("view", "table_macro") and not keys.get("grain"):
        raise StoreError(f"{where}: required header '-- grain:' is missing")
    if kind != "view" and not keys.get("params"):
        raise StoreError(f"{where}: required header '-- params:' is missing (write 'none')")
    statements = _statements(text, where, parser)
    if len(statements) != 1:
        raise StoreError(f"{where}: holds {len(statements)} SQL statements; a file holds exactly 1")
    create = _CREATE.match(statements[0])
    if create is None:
        raise StoreError(f"{where}: the statement must start with CREATE OR REPLACE VIEW|MACRO")
    declared = "view" if create["type"].upper() == "VIEW" else "macro"
    if declared == "macro" and _AS_TABLE.search(statements[0]):
        declared = "table_macro"
    if declared != kind or create["name"] != name:
        raise StoreError(
            f"{where}: the statement creates {declared} {create['name']!r} "
            f"but the headers say {kind} {name!r}"
        )
    obj = SqlObject(
        name=name,
        kind=kind,
        answers=keys["answers"],
        inputs=_split_list(keys["inputs"]),
        sql=text,
        path=where,
        grain=keys.get("grain"),
        params=keys.get("params"),
        param_docs=param_docs,
        depends=_split_list(keys.get("depends")),
        notes=keys.get("notes"),
        columns=columns,
    )
    if set(obj.param_names) != set(param_docs):
        raise StoreError(
            f"{where}: '-- params:' names {list(obj.param_names)} but '-- param <name>:' lines "
            f"describe {list(param_docs)}; describe each parameter once"
        )
    return obj


def _statements(text: str, where: str, parser: duckdb.DuckDBPyConnection | None) -> list[str]:
    con = parser if parser is not None else duckdb.connect(":memory:")
    try:
        # DuckDB 2.0 keeps the comments before a statement in its text; 1.x dropped them.
        return [_LEADING_COMMENTS.sub("", s.query) for s in con.extract_statements(text)]
    except duckdb.Error as exc:
        raise StoreError(f"{where}: cannot parse the SQL: {exc}") from exc
    finally:
        if parser is None:
            con.close()


def load_catalog(
    root: Traversable | Path | None = None, *, parser: duckdb.DuckDBPyConnection | None = None
) -> list[SqlObject]:
    """Parse every ``views/*.sql`` and ``macros/*.sql`` under ``root`` (default: shipped).

    Returns the objects sorted by name; raises :class:`StoreError` naming the file for a
    missing header, a name that disagrees with the file's, or a duplicate name. ``parser`` is
    a connection to split statements with (nothing is executed); by default a fresh
    in-memory one.
    """
    base = root if root is not None else sql_root()
    objects: dict[str, SqlObject] = {}
    own_parser = parser is None
    parser = duckdb.connect(":memory:") if parser is None else parser
    try:
        for directory in _DIRECTORY_KINDS:
            folder = base.joinpath(directory)
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir(), key=lambda e: e.name):
                if not entry.name.endswith(".sql"):
                    continue
                where = f"sql/{directory}/{entry.name}"
                text = entry.read_text(encoding="utf-8")
                obj = parse_object(text, entry.name, directory, where, parser)
                if obj.name in objects:
                    raise StoreError(f"{where}: {obj.name!r} is defined twice")
                objects[obj.name] = obj
    finally:
        if own_parser:
            parser.close()
    return [objects[n] for n in sorted(objects)]


def dependency_order(objects: list[SqlObject]) -> list[SqlObject]:
    """The objects ordered so that each comes after everything in its ``-- depends:``."""
    by_name = {o.name: o for o in objects}
    for obj in objects:
        for dep in obj.depends:
            if dep not in by_name:
                raise StoreError(
                    f"{obj.path}: depends on {dep!r}, which is not in the catalog "
                    f"(known: {', '.join(sorted(by_name))})"
                )
    ordered: list[SqlObject] = []
    state: dict[str, str] = {}

    def visit(obj: SqlObject, chain: tuple[str, ...]) -> None:
        if state.get(obj.name) == "done":
            return
        if state.get(obj.name) == "visiting":
            raise StoreError(f"catalog dependency cycle: {' -> '.join(chain + (obj.name,))}")
        state[obj.name] = "visiting"
        for dep in sorted(obj.depends):
            visit(by_name[dep], chain + (obj.name,))
        state[obj.name] = "done"
        ordered.append(obj)

    for obj in sorted(objects, key=lambda o: o.name):
        visit(obj, ())
    return ordered


def supports_macro_comments(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether this DuckDB understands ``COMMENT ON MACRO`` (it does from 1.1 on)."""
    try:
        con.extract_statements("COMMENT ON MACRO probe IS 'x'")
    except duckdb.Error:
        return False
    return True


def comment_statements(obj: SqlObject, macro_comments: bool = True) -> list[str]:
    """The ``COMMENT ON`` statements that store ``obj``'s descriptions in the file."""
    name = quote_identifier(obj.name)
    if obj.kind == "view":
        out = [f"COMMENT ON VIEW {name} IS {quote_literal(obj.description)}"]
        out += [
            f"COMMENT ON COLUMN {name}.{quote_identifier(col)} IS {quote_literal(text)}"
            for col, text in obj.columns.items()
        ]
        return out
    if not macro_comments:
        return []
    what = "MACRO TABLE" if obj.kind == "table_macro" else "MACRO"
    return [f"COMMENT ON {what} {name} IS {quote_literal(obj.description)}"]


def install(con: duckdb.DuckDBPyConnection, objects: list[SqlObject] | None = None) -> list[str]:
    """Create or replace every catalog object in the store, with its comments.

    Runs in one transaction (all objects or none) and is idempotent. Returns the names
    installed, in the order they were created. Needs the schema (run ``migrate`` first).
    """
    ordered = dependency_order(objects if objects is not None else load_catalog(parser=con))
    macro_comments = supports_macro_comments(con)
    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.Error as exc:
        raise StoreError(f"cannot start the transaction to install SQL objects: {exc}") from exc
    current = ""
    try:
        for obj in ordered:
            current = obj.path
            con.execute(obj.sql)
            for statement in comment_statements(obj, macro_comments):
                con.execute(statement)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # already rolled back by the failure
            pass
        raise StoreError(f"installing {current} failed: {exc}") from exc
    return [o.name for o in ordered]
