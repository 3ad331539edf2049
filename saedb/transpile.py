"""Reading the catalog's DuckDB SQL and rewriting it into portable SQL (with sqlglot).

:func:`parse_macro` / :func:`view_body` parse an object; :func:`expand` replaces calls of other
catalog macros by their bodies (a scalar macro becomes its expression, a table macro a
subquery); :func:`rewrite` gives DuckDB idioms portable spellings for one target dialect and
raises :class:`NotPortable` for what has none. :mod:`saedb.sql_export` drives it and writes
the DDL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from saedb import catalog
from saedb.catalog import SqlObject
from saedb.errors import StoreError

PARAM_TYPES = {
    "a": "VARCHAR",
    "b": "VARCHAR",
    "dataset": "VARCHAR",
    "datasets": "VARCHAR[]",
    "sae": "INTEGER",
    "min_freq": "DOUBLE",
    "max_freq": "DOUBLE",
    "threshold": "DOUBLE",
    "min_count": "BIGINT",
    "targets": "INTEGER[]",
    "latents": "INTEGER[]",
    "latent": "INTEGER",
    "k": "INTEGER",
    "context": "INTEGER",
    "doc": "BIGINT",
    "key": "VARCHAR",
    "value_a": "VARCHAR",
    "value_b": "VARCHAR",
    "docs_a": "BIGINT[]",
    "docs_b": "BIGINT[]",
    "label_a": "VARCHAR",
    "label_b": "VARCHAR",
    "n_pos": "INTEGER",
    "top": "INTEGER",
    "n_neg": "INTEGER",
    "seed": "BIGINT",
    "z": "DOUBLE",
    "n_both": "BIGINT",
    "n_i": "BIGINT",
    "n_j": "BIGINT",
    "n_docs": "BIGINT",
    "txt": "VARCHAR",
    "char_start": "INTEGER",
    "char_end": "INTEGER",
    "n": "INTEGER",
    "embedding_model": "VARCHAR",
    "model": "VARCHAR",
    "latent_a": "INTEGER",
    "latent_b": "INTEGER",
    "embedding": "FLOAT[]",
    "query": "VARCHAR",
    "n_partners": "INTEGER",
    "weights": "STRUCT(latent_id INTEGER, weight DOUBLE)[]",
    "precounted": "STRUCT(size_a BIGINT, size_b BIGINT, fired STRUCT(latent_id INTEGER, "
    "n_a BIGINT, n_b BIGINT)[])",
}
"""The SQL type of each macro parameter name (DuckDB spelling), for typed placeholders and
Postgres function signatures. A parameter not listed makes its macro not transpilable. Row
counts (``k``, ``top``, ...) are INTEGER: Spark's LIMIT takes no BIGINT."""

CACHE_TABLES = ("latent_counts", "dataset_sizes", "latent_counts_state")
"""saedb's incremental counters and their bookkeeping. The exported SQL reads them as empty,
so every analysis there computes from the base tables (``doc_latents``, ``doc_encodings``):
counters copied to another engine are a snapshot that nothing there keeps in step, and the
catalog's objects fall back to scanning when the counters do not match ``doc_latents``. With
them empty, a STRUCT parameter that only carries those counters (``diff_doc_sets``'s
``precounted``) is NULL, and is left out."""

Caches = dict[str, list[tuple[str, str]]]
"""CACHE_TABLES present in the schema -> their (column, type) pairs."""


# Functions sqlglot does not model that each engine has under the same name.
_PORTABLE_ANONYMOUS = {"saedb_error", "raise_error", "fail", "saedb_cosine"}
# list_cosine_similarity(a, b) of two equally long lists: Postgres calls a helper function of
# the prelude; Spark and Trino have higher-order array functions for it.
_COSINE = {
    "spark": "aggregate(zip_with(A, B, (x, y) -> x * y), 0D, (s, v) -> s + v) / "
    "(sqrt(aggregate(A, 0D, (s, v) -> s + v * v)) * sqrt(aggregate(B, 0D, (s, v) -> s + v * v)))",
    "trino": "reduce(zip_with(A, B, (x, y) -> x * y), 0e0, (s, v) -> s + v, s -> s) / "
    "(sqrt(reduce(A, 0e0, (s, v) -> s + v * v, s -> s)) "
    "* sqrt(reduce(B, 0e0, (s, v) -> s + v * v, s -> s)))",
}
_ERROR = {"postgres": "saedb_error", "spark": "raise_error", "trino": "fail"}


@dataclass
class Macro:
    """A catalog macro taken apart: parameters (with defaults) and the parsed body."""

    obj: SqlObject
    params: list[tuple[str, exp.Expression | None]]
    body: exp.Expression

    @property
    def name(self) -> str:
        return self.obj.name


# -- parsing ---------------------------------------------------------------------------------


def _statement(obj: SqlObject) -> str:
    lines = obj.sql.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("--"))
    return "\n".join(lines[start:]).strip().rstrip(";").strip()


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def _parse(sql: str, where: str) -> exp.Expression:
    try:
        return sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        raise StoreError(f"{where}: sqlglot cannot parse it: {exc}") from exc


def parse_macro(obj: SqlObject) -> Macro:
    """Take a macro's statement apart into parameters (with parsed defaults) and body."""
    text = _statement(obj)
    head = re.match(r"CREATE\s+OR\s+REPLACE\s+MACRO\s+\w+\s*\(", text, re.IGNORECASE)
    if head is None:
        raise StoreError(f"{obj.path}: not a CREATE OR REPLACE MACRO statement")
    depth, quote, end = 1, "", head.end()
    while depth:
        ch = text[end]
        if quote:
            quote = "" if ch == quote else quote
        elif ch == "'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        end += 1
    signature = text[head.end() : end - 1]
    rest = re.match(r"\s*AS\s+(TABLE\s+)?", text[end:], re.IGNORECASE)
    if rest is None:
        raise StoreError(f"{obj.path}: expected AS after the macro's parameters")
    body = text[end + rest.end() :]
    params: list[tuple[str, exp.Expression | None]] = []
    for part in _split_top(signature):
        name, sep, default = part.partition(":=")
        params.append((name.strip(), _parse(default, obj.path) if sep else None))
    return Macro(obj=obj, params=params, body=_parse(body, obj.path))


def view_body(obj: SqlObject) -> exp.Expression:
    text = _statement(obj)
    head = re.match(r"CREATE\s+OR\s+REPLACE\s+VIEW\s+\w+\s+AS\s+", text, re.IGNORECASE)
    if head is None:
        raise StoreError(f"{obj.path}: not a CREATE OR REPLACE VIEW statement")
    return _parse(text[head.end() :], obj.path)


# -- expansion -------------------------------------------------------------------------------


class NotPortable(Exception):
    """The object uses something with no portable equivalent (the message says what)."""


def _bind(macro: Macro, args: list[exp.Expression]) -> dict[str, exp.Expression]:
    bound: dict[str, exp.Expression] = {}
    names = [n for n, _ in macro.params]
    positional = [a for a in args if not isinstance(a, exp.PropertyEQ)]
    for name, arg in zip(names, positional, strict=False):
        bound[name] = arg
    for arg in args:
        if isinstance(arg, exp.PropertyEQ):
            bound[arg.this.name] = arg.expression
    for name in fixed_params(macro):  # NULL whenever the counters are not trusted (CACHE_TABLES)
        bound[name] = exp.Null()
    for name, default in macro.params:
        if name not in bound:
            if default is None:
                raise NotPortable(f"call of {macro.name} without its parameter {name}")
            bound[name] = default
    return bound


def substitute(body: exp.Expression, values: dict[str, exp.Expression]) -> exp.Expression:
    """``body`` with every unqualified column named like a parameter replaced by its value
    (as DuckDB does for macro parameters)."""
    tree = body.copy()
    targets = [
        c
        for c in tree.find_all(exp.Column)
        if not c.table and c.name.lower() in values and isinstance(c.this, exp.Identifier)
    ]
    for col in targets:
        value = values[col.name.lower()].copy()
        if not isinstance(
            value, exp.Column | exp.Literal | exp.Subquery | exp.Paren | exp.Cast | exp.Null
        ):
            value = exp.Paren(this=value)
        if col is tree:
            tree = value
        else:
            col.replace(value)
    return tree


def expand(tree: exp.Expression, macros: dict[str, Macro]) -> exp.Expression:
    """Expand every call of a catalog macro in ``tree`` (repeatedly: macros call macros)."""
    for _ in range(50):
        changed = False
        for table in list(tree.find_all(exp.Table)):
            call = table.this
            if isinstance(call, exp.Anonymous) and call.name.lower() in macros:
                macro = macros[call.name.lower()]
                body = substitute(macro.body, _bind(macro, list(call.expressions)))
                alias = table.alias or macro.name
                table.replace(
                    exp.Subquery(this=body, alias=exp.TableAlias(this=exp.to_identifier(alias)))
                )
                changed = True
        for call in list(tree.find_all(exp.Anonymous)):
            if call.name.lower() in macros and not isinstance(call.parent, exp.Table):
                macro = macros[call.name.lower()]
                body = substitute(macro.body, _bind(macro, list(call.expressions)))
                new = exp.Paren(this=body)
                if call is tree:
                    tree = new
                else:
                    call.replace(new)
                changed = True
        if not changed:
            return tree
    raise NotPortable("macro calls nested more than 50 deep")


def _unnest_of_list(tree: exp.Expression) -> None:
    """``(SELECT f(unnest((SELECT list(x) FROM ...))))`` -> ``(SELECT f(x) FROM ...)``: the
    same rows (list over no rows is NULL, whose unnest is no rows), in plain SQL."""
    for unnest in list(tree.find_all(exp.Explode, exp.Unnest)):
        args = [unnest.this] if isinstance(unnest, exp.Explode) else unnest.expressions
        if len(args) != 1:
            continue
        inner = args[0]
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if not isinstance(inner, exp.Subquery) or not isinstance(inner.this, exp.Select):
            continue
        source = inner.this
        if len(source.expressions) != 1:
            continue
        agg = source.expressions[0].unalias()
        if not isinstance(agg, exp.ArrayAgg) or agg.args.get("distinct"):
            continue
        outer = unnest.find_ancestor(exp.Select)
        if (
            outer is None
            or outer.args.get("from_")
            or outer.args.get("from")
            or len(outer.expressions) != 1
        ):
            continue
        element = agg.this.this if isinstance(agg.this, exp.Order) else agg.this
        new = source.copy()
        projection = outer.expressions[0].copy()
        for node in projection.find_all(exp.Explode, exp.Unnest):
            if node == unnest:
                if node is projection:
                    projection = element.copy()
                else:
                    node.replace(element.copy())
                break
        new.set("expressions", [projection])
        outer.replace(new)


def _is_null_select(node: exp.Expression) -> bool:
    return (
        isinstance(node, exp.Select)
        and bool(node.expressions)
        and all(isinstance(p.unalias(), exp.Null) for p in node.expressions)
    )


def _fold_nulls(tree: exp.Expression) -> exp.Expression:
    """Partial evaluation for optional parameters left at NULL (a STRUCT one, say): NULL
    casts, relations of NULLs and their columns, ``unnest(NULL)`` (no rows), ``NULL IS NULL``,
    constant scalar subqueries of a one-row CTE and NULL arguments of COALESCE fold away, so
    the branch that needs the non-portable value disappears."""
    for paren in list(tree.find_all(exp.Paren)):
        if isinstance(paren.this, exp.Null):
            paren.replace(exp.Null())
    for cast in list(tree.find_all(exp.Cast)):
        if isinstance(cast.this, exp.Null) and cast.to.this in (
            exp.DataType.Type.STRUCT,
            exp.DataType.Type.MAP,
        ):
            cast.replace(exp.Null())
    for _ in range(20):
        changed = False
        one_row = {
            cte.alias.lower()
            for cte in tree.find_all(exp.CTE)
            if _is_null_select(cte.this)
            and not any(cte.this.args.get(k) for k in ("from_", "where", "joins", "group"))
        }
        for sel in list(tree.find_all(exp.Select)):
            nulls: dict[str, set[str]] = {}
            sources = [sel.args["from_"].this] if sel.args.get("from_") else []
            sources += [j.this for j in sel.args.get("joins") or []]
            for src in sources:
                body = None
                if isinstance(src, exp.Table) and src.name.lower() in one_row:
                    body = next(
                        c.this
                        for c in tree.find_all(exp.CTE)
                        if c.alias.lower() == src.name.lower()
                    )
                elif isinstance(src, exp.Subquery) and _is_null_select(src.this):
                    body = src.this
                if body is not None:
                    cols = {p.alias_or_name.lower() for p in body.expressions}
                    nulls[src.alias_or_name.lower()] = cols
            if not nulls:
                continue
            for col in list(sel.find_all(exp.Column)):
                if col.find_ancestor(exp.Select) is not sel:
                    continue
                db, table = col.text("db").lower(), col.table.lower()
                if (not db and table in nulls and col.name.lower() in nulls[table]) or (
                    db in nulls and table in nulls[db]
                ):
                    col.replace(exp.Null())
                    changed = True
        for un in list(tree.find_all(exp.Explode, exp.Unnest)):
            args = [un.this] if isinstance(un, exp.Explode) else un.expressions
            if len(args) == 1 and isinstance(args[0], exp.Null):
                owner = un.find_ancestor(exp.Select)
                un.replace(exp.Null())
                if owner is not None:
                    owner.where(exp.false(), copy=False)
                changed = True
        for is_ in list(tree.find_all(exp.Is)):
            if isinstance(is_.this, exp.Null) and isinstance(is_.expression, exp.Null):
                is_.replace(exp.true())
                changed = True
        for sub in list(tree.find_all(exp.Subquery)):
            sel = sub.this
            if sub.alias or not isinstance(sel, exp.Select) or len(sel.expressions) != 1:
                continue
            value = sel.expressions[0].unalias()
            source = sel.args.get("from_")
            if (
                isinstance(value, exp.Null | exp.Boolean)
                and source is not None
                and isinstance(source.this, exp.Table)
                and source.this.name.lower() in one_row
                and not any(sel.args.get(k) for k in ("where", "joins", "group"))
            ):
                sub.replace(value.copy())
                changed = True
        for co in list(tree.find_all(exp.Coalesce)):
            args = [co.this, *co.expressions]
            kept = [a for a in args if not isinstance(a, exp.Null)]
            if kept and len(kept) < len(args):
                co.replace(
                    kept[0].copy()
                    if len(kept) == 1
                    else exp.Coalesce(this=kept[0].copy(), expressions=[k.copy() for k in kept[1:]])
                )
                changed = True
        if not changed:
            break
    return tree


def _empty_caches(tree: exp.Expression, caches: Caches) -> None:
    """Every reference to a table of CACHE_TABLES becomes an empty relation of its columns."""
    for table in list(tree.find_all(exp.Table)):
        if isinstance(table.this, exp.Identifier) and table.name.lower() in caches:
            cols = ", ".join(
                f"CAST(NULL AS {t}) AS {catalog.quote_identifier(c)}"
                for c, t in caches[table.name.lower()]
            )
            empty = sqlglot.parse_one(f"(SELECT {cols} WHERE FALSE)", read="duckdb")
            table.replace(
                exp.Subquery(
                    this=empty.this if isinstance(empty, exp.Subquery) else empty,
                    alias=exp.TableAlias(this=exp.to_identifier(table.alias_or_name)),
                )
            )


def _explode_in_from(tree: exp.Expression) -> None:
    """Spark allows a generator (explode) only as a whole projection: in a SELECT without FROM,
    ``SELECT f(unnest(x)) AS a`` becomes ``SELECT f(u) AS a FROM (SELECT explode(x) AS u)``."""
    n = 0
    for explode in list(tree.find_all(exp.Explode)):
        select = explode.find_ancestor(exp.Select)
        if select is None or select.args.get("from_") or len(select.expressions) != 1:
            continue
        projection = select.expressions[0]
        if projection is explode or projection.unalias() is explode:
            continue
        n += 1
        name = f"saedb_unnested{n}"
        source = exp.select(exp.alias_(explode.copy(), name)).subquery(f"saedb_unnest{n}")
        explode.replace(exp.column(name))
        select.from_(source, copy=False)


def rewrite(tree: exp.Expression, dialect: str, caches: Caches) -> exp.Expression:
    """Portable spellings of DuckDB idioms, and checks for what has none."""
    _empty_caches(tree, caches)
    tree = _fold_nulls(tree)
    _unnest_of_list(tree)
    if dialect == "spark":
        _explode_in_from(tree)
    for node in tree.find_all(exp.Lambda):
        raise NotPortable(f"uses a lambda ({node.sql('duckdb')[:60]})")
    for node in tree.find_all(exp.Struct):
        raise NotPortable(f"builds STRUCT values ({node.sql('duckdb')[:60]})")
    for node in tree.find_all(exp.Dot):
        if not isinstance(node.parent, exp.Column):
            raise NotPortable(f"reads a STRUCT field ({node.sql('duckdb')[:60]})")
    for node in tree.find_all(exp.Bracket):
        raise NotPortable(f"indexes a LIST ({node.sql('duckdb')[:60]})")
    for node in tree.find_all(exp.Group):
        if node.args.get("all"):
            raise NotPortable("uses GROUP BY ALL")
    for cast in tree.find_all(exp.Cast):
        if (
            isinstance(cast.this, exp.Literal)
            and cast.this.is_string
            and cast.this.this.lower() in ("inf", "+inf", "infinity")
        ):
            cast.this.replace(exp.Literal.string("Infinity"))
    lists = {
        a.alias.lower()
        for a in tree.find_all(exp.Alias)
        if isinstance(a.this, exp.ArrayAgg) and a.alias
    }
    for length in list(tree.find_all(exp.Length)):
        # DuckDB's len() of a LIST (sqlglot reads it as a string length)
        arg = length.this
        if isinstance(arg, exp.Column) and arg.name.lower() in lists:
            length.replace(exp.ArraySize(this=arg.copy()))
    if dialect != "postgres":
        for get in tree.find_all(exp.JSONExtractScalar):
            # DuckDB's json ->> 'key' is the path '$.key'; a path starting with $ stays
            path = get.expression
            if not isinstance(path, exp.Literal):
                get.set(
                    "expression",
                    exp.If(
                        this=exp.Like(this=path.copy(), expression=exp.Literal.string("$%")),
                        true=path.copy(),
                        false=exp.DPipe(this=exp.Literal.string("$."), expression=path.copy()),
                    ),
                )
    while True:  # one at a time: a witness copied from a sibling may hold another error()
        call = next((c for c in tree.find_all(exp.Anonymous) if c.name.lower() == "error"), None)
        if call is None:
            break
        args = list(call.expressions)
        if dialect == "postgres":
            args.append(_witness(call))
        new = exp.Anonymous(this=_ERROR[dialect], expressions=args)
        if call is tree:
            tree = new
        else:
            call.replace(new)
    for call in list(tree.find_all(exp.Anonymous)):
        if call.name.lower() == "list_cosine_similarity" and len(call.expressions) == 2:
            a, b = (exp.Paren(this=e.copy()) for e in call.expressions)
            if dialect == "postgres":
                new = exp.Anonymous(this="saedb_cosine", expressions=[a, b])
            else:
                template = sqlglot.parse_one(_COSINE[dialect], read=dialect)
                for col in list(template.find_all(exp.Column)):
                    if col.name in ("A", "B") and not col.table:
                        col.replace((a if col.name == "A" else b).copy())
                new = exp.Paren(this=template)
            call.replace(new)
    for call in tree.find_all(exp.Anonymous):
        higher_order = dialect != "postgres" and call.name.lower() in (
            "zip_with",
            "aggregate",
            "reduce",
        )
        if call.name.lower() not in _PORTABLE_ANONYMOUS and not higher_order:
            raise NotPortable(
                f"calls {call.name}(), a DuckDB function with no {dialect} equivalent"
            )
    n = 0
    for sub in list(tree.find_all(exp.Subquery)):
        if isinstance(sub.parent, exp.From | exp.Join) and not sub.alias:
            n += 1
            sub.set("alias", exp.TableAlias(this=exp.to_identifier(f"saedb_sq{n}")))
    return tree


def _witness(call: exp.Anonymous) -> exp.Expression:
    """A sibling of ``error(...)`` whose type the Postgres replacement returns."""
    parent = call.parent
    while isinstance(parent, exp.Paren):
        call, parent = parent, parent.parent
    if isinstance(parent, exp.Coalesce):
        siblings = [parent.this, *parent.expressions]
        for s in siblings:
            if s is not call:
                return s.copy()
    if isinstance(parent, exp.If):  # a WHEN ... THEN branch: use the CASE's default or another
        case = parent.parent
        if isinstance(case, exp.Case):
            for s in [case.args.get("default"), *(i.args.get("true") for i in case.args["ifs"])]:
                if s is not None and s is not call:
                    return s.copy()
    if isinstance(parent, exp.Case):
        for i in parent.args["ifs"]:
            if i.args.get("true") is not call:
                return i.args["true"].copy()
    raise NotPortable("error() outside COALESCE or CASE: no type to raise it as in postgres")


def fixed_params(macro: Macro) -> list[str]:
    """Parameters of a type no target engine takes (STRUCT, MAP) whose default is NULL: the
    exported object has them fixed at NULL."""
    return [
        n
        for n, d in macro.params
        if isinstance(d, exp.Null) and re.search(r"STRUCT|MAP", PARAM_TYPES.get(n, ""))
    ]
