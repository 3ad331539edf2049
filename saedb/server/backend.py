"""The server's view of the store: a ``Backend`` makes ``Session``s that run SQL.

The wire protocol (``protocol.py``) knows nothing about DuckDB; it asks a session to
``execute`` one statement with bound parameters and gets back a ``Result`` (columns with
Postgres type OIDs, rows of Python values, a command tag), or a ``PgError``.
``DuckDbBackend`` is the one implementation: one DuckDB connection owns the store file, each
client session gets its own cursor (``con.cursor()``), so reads run concurrently and each
statement (or explicit transaction) sees one consistent snapshot while ingestion commits.
Sessions emulate what Postgres clients expect besides SQL: ``SET``/``SHOW``, transaction
states, ``DECLARE``/``FETCH`` cursors, catalog queries (``pgcatalog``), cancel, a statement
timeout and a result-size limit.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb

import saedb
from saedb.server import guard, pgcatalog
from saedb.server import types as pgt
from saedb.server.errors import PgError, from_duckdb

SERVER_VERSION = "15.0"


@dataclass
class Column:
    name: str
    oid: int


@dataclass
class Result:
    """One statement's answer: ``columns`` is None for statements that return no rows."""

    tag: str
    columns: list[Column] | None = None
    rows: list[tuple] = field(default_factory=list)


@dataclass
class Limits:
    statement_timeout_s: float = 300.0
    max_rows: int = 1_000_000


class Session(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...
    def describe(self, sql: str, n_params: int) -> list[Column] | None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...
    @property
    def status(self) -> str: ...


class Backend(Protocol):
    def session(self, user: str, role: str, startup: dict[str, str], pid: int) -> Session: ...


DEFAULT_SETTINGS = {
    "server_version": SERVER_VERSION,
    "server_version_num": "150000",
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "is_superuser": "off",
    "search_path": "main",
    "transaction_isolation": "repeatable read",
    "default_transaction_read_only": "on",
    "transaction_read_only": "on",
    "max_identifier_length": "63",
    "lc_collate": "C.UTF-8",
    "lc_ctype": "C.UTF-8",
    "application_name": "",
    "extra_float_digits": "1",
    "statement_timeout": "0",
}
_SHOW_ALIASES = {"transaction isolation level": "transaction_isolation", "time zone": "timezone"}


class DuckDbBackend:
    """Sessions over one DuckDB connection (the server's, which also writes)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, limits: Limits | None = None) -> None:
        self.con = con
        self.limits = limits or Limits()
        self._lock = threading.Lock()

    def session(self, user: str, role: str, startup: dict[str, str], pid: int) -> DuckDbSession:
        with self._lock:  # cursor() on a connection in use by another thread is not safe
            cur = self.con.cursor()
        return DuckDbSession(cur, user, role, startup, pid, self.limits)


@dataclass
class _Cursor:
    columns: list[Column]
    rows: list[tuple]
    pos: int = 0


class DuckDbSession:
    def __init__(
        self,
        cur: duckdb.DuckDBPyConnection,
        user: str,
        role: str,
        startup: dict[str, str],
        pid: int,
        limits: Limits,
    ) -> None:
        self.cur, self.user, self.role, self.pid, self.limits = cur, user, role, pid, limits
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update({k: v for k, v in startup.items() if k not in ("user", "database")})
        self.settings["session_authorization"] = user
        if role == "writer":
            self.settings["default_transaction_read_only"] = "off"
            self.settings["transaction_read_only"] = "off"
        self._status = "I"
        self._catalog_built = False
        self._cursors: dict[str, _Cursor] = {}
        self._cancelled = self._timed_out = False
        self._running = threading.Lock()

    @property
    def status(self) -> str:
        return self._status

    # -- entry points ----------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        if self._status == "E" and not re.match(r"\s*(rollback|abort|commit|end)\b", sql, re.I):
            raise PgError(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            )
        try:
            return self._dispatch(sql.strip().rstrip(";").strip(), list(params))
        except PgError:
            if self._status == "T":
                self._status = "E"
            raise

    def describe(self, sql: str, n_params: int) -> list[Column] | None:
        """The columns ``sql`` would return, without running it in full (None: no rows)."""
        text = sql.strip().rstrip(";")
        if re.match(r"(select|with|from|values|table)\b", text, re.I) is None:
            return None
        try:
            result = self._run(
                f"SELECT * FROM ({self._prepare_sql(text)}) AS _d LIMIT 0", [None] * n_params
            )
        except PgError:
            return None
        return result.columns

    def cancel(self) -> None:
        self._cancelled = True
        self.cur.interrupt()

    def close(self) -> None:
        try:
            self.cur.close()
        except duckdb.Error:
            pass

    # -- statements ------------------------------------------------------------------------

    def _dispatch(self, sql: str, params: list[Any]) -> Result:
        low = sql.lower()
        if not low:
            return Result("EMPTY")
        word = low.split(None, 1)[0]
        if word in ("begin", "start"):
            if self._status == "I":
                self._duck("BEGIN TRANSACTION")
            self._status = "T"
            return Result("BEGIN")
        if word in ("commit", "end"):
            tag = "ROLLBACK" if self._status == "E" else "COMMIT"
            if self._status != "I":
                self._duck("ROLLBACK" if self._status == "E" else "COMMIT")
            self._status = "I"
            return Result(tag)
        if word in ("rollback", "abort"):
            if re.match(r"rollback\s+(work\s+|transaction\s+)?to\b", low):
                if self._status == "E":  # DuckDB has no savepoints: restart the snapshot
                    self._duck("ROLLBACK")
                    self._duck("BEGIN TRANSACTION")
                    self._status = "T"
                return Result("ROLLBACK")
            if self._status != "I":
                self._duck("ROLLBACK")
            self._status = "I"
            return Result("ROLLBACK")
        if word == "savepoint":
            return Result("SAVEPOINT")
        if word == "release":
            return Result("RELEASE")
        if word == "set":
            return self._set(sql)
        if word == "reset":
            return Result("RESET")
        if word == "show":
            shown = self._show(sql)
            if shown is not None:
                return shown
        if word == "discard":
            self._cursors.clear()
            return Result("DISCARD ALL")
        if word in ("listen", "unlisten", "notify"):
            return Result(word.upper())
        if word == "declare":
            return self._declare(sql, params)
        if word in ("fetch", "move"):
            return self._fetch(sql)
        if word == "close":
            name = sql.split(None, 1)[1].strip().strip('"')
            if name.lower() == "all":
                self._cursors.clear()
            elif self._cursors.pop(name, None) is None:
                raise PgError("34000", f'cursor "{name}" does not exist')
            return Result("CLOSE CURSOR")
        if self.role != "writer":
            guard.check_read_only(sql)
        if "pg_cursors" in low:
            self._refresh_pg_cursors()
        return self._run(self._prepare_sql(sql), params)

    def cursor_columns(self, name: str) -> list[Column] | None:
        """The columns of an open DECLAREd cursor (drivers Describe it as a portal)."""
        cur = self._cursors.get(name)
        return None if cur is None else cur.columns

    def _refresh_pg_cursors(self) -> None:
        """pg_cursors: this session's open cursors, as a temporary table."""
        self._duck(
            "CREATE OR REPLACE TEMP TABLE pg_cursors (name VARCHAR, statement VARCHAR, "
            "is_holdable BOOLEAN, is_binary BOOLEAN, is_scrollable BOOLEAN, "
            "creation_time TIMESTAMPTZ)"
        )
        for name in self._cursors:
            self.cur.execute(
                "INSERT INTO pg_cursors VALUES (?, '', false, false, false, current_timestamp)",
                [name],
            ).fetchall()

    def _prepare_sql(self, sql: str) -> str:
        if not pgcatalog.looks_like_catalog_query(sql):
            return sql
        if not self._catalog_built:
            try:
                pgcatalog.build(
                    self.cur,
                    user=self.user,
                    settings=self.settings,
                    version=self._version(),
                    pid=self.pid,
                )
            except duckdb.Error as exc:
                raise from_duckdb(exc) from exc
            # Built inside a transaction, the temporary catalog goes away with a ROLLBACK.
            self._catalog_built = "txn" if self._status != "I" else "yes"
        try:
            return pgcatalog.rewrite(sql)
        except Exception:  # noqa: BLE001 - not Postgres syntax: DuckDB gets it as sent
            return sql

    def _version(self) -> str:
        return (
            f"PostgreSQL {SERVER_VERSION} (saedb {saedb.__version__} on DuckDB "
            f"{duckdb.__version__})"
        )

    def _duck(self, sql: str) -> None:
        if sql == "ROLLBACK" and self._catalog_built == "txn":
            self._catalog_built = False
        elif sql == "COMMIT" and self._catalog_built == "txn":
            self._catalog_built = "yes"
        try:
            self.cur.execute(sql).fetchall()
        except duckdb.Error as exc:
            raise from_duckdb(exc) from exc

    def _run(self, sql: str, params: list[Any]) -> Result:
        """Run on DuckDB under the timeout, fetching at most max_rows rows."""
        self._cancelled = self._timed_out = False
        timer = None
        if self.limits.statement_timeout_s > 0:
            timer = threading.Timer(self.limits.statement_timeout_s, self._timeout)
            timer.daemon = True
            timer.start()
        try:
            with self._running:
                try:
                    if params:
                        self.cur.execute(sql, params)
                    else:
                        self.cur.execute(sql)
                    desc = self.cur.description
                    if desc is None:
                        self.cur.fetchall()
                        return Result(_tag_for(sql, 0))
                    limit = self.limits.max_rows
                    rows = self.cur.fetchmany(limit + 1) if limit else self.cur.fetchall()
                except duckdb.Error as exc:
                    if self._timed_out:
                        raise PgError(
                            "57014",
                            "canceling statement due to statement timeout "
                            f"({self.limits.statement_timeout_s:g} s; see "
                            "saedb serve --statement-timeout)",
                        ) from exc
                    if self._cancelled or isinstance(exc, duckdb.InterruptException):
                        raise PgError("57014", "canceling statement due to user request") from exc
                    raise from_duckdb(exc) from exc
                if limit and len(rows) > limit:
                    self.cur.execute("SELECT 1").fetchall()  # drop the unfinished result
                    raise PgError(
                        "54000",
                        f"the result has more than {limit:,} rows, the "
                        "server's limit: add a LIMIT or a WHERE clause, or raise "
                        "saedb serve --max-rows",
                    )
        finally:
            if timer is not None:
                timer.cancel()
        word = sql.lstrip("( \n\t").split(None, 1)[0].upper()
        if word in ("INSERT", "UPDATE", "DELETE") and len(desc) == 1 and desc[0][0] == "Count":
            return Result(_tag_for(sql, int(rows[0][0]) if rows else 0))  # as Postgres: a tag
        columns = [Column(d[0], pgt.pg_oid(d[1])) for d in desc]
        return Result(_tag_for(sql, len(rows)), columns, rows)

    def _timeout(self) -> None:
        self._timed_out = True
        self.cur.interrupt()

    def _set(self, sql: str) -> Result:
        m = re.match(
            r"set\s+(?:session\s+|local\s+)?([\w.]+)\s*(?:=|\bto\b)\s*(.+)$", sql, re.I | re.S
        )
        if m:
            name, value = m.group(1), m.group(2).strip()
            value = value[1:-1].replace("''", "'") if value.startswith("'") else value
            key = next((k for k in self.settings if k.lower() == name.lower()), name)
            self.settings[key] = value
            self._catalog_built = False if key.lower() == "search_path" else self._catalog_built
        elif re.match(r"set\s+(session\s+)?time\s+zone\s+", sql, re.I):
            self.settings["TimeZone"] = sql.split(None)[-1].strip("'")
        # SET TRANSACTION ... and the like: accepted, nothing to change for a snapshot reader
        return Result("SET")

    def _show(self, sql: str) -> Result | None:
        name = sql.split(None, 1)[1].strip().strip('"') if " " in sql else ""
        key = _SHOW_ALIASES.get(name.lower(), name)
        if key.lower() == "all":
            rows = [(k, v, "") for k, v in sorted(self.settings.items())]
            return Result(
                "SHOW",
                [
                    Column("name", pgt.TEXT),
                    Column("setting", pgt.TEXT),
                    Column("description", pgt.TEXT),
                ],
                rows,
            )
        for k, v in self.settings.items():
            if k.lower() == key.lower():
                return Result("SHOW", [Column(key, pgt.TEXT)], [(v,)])
        return None  # SHOW TABLES and the like: DuckDB's

    def _declare(self, sql: str, params: list[Any]) -> Result:
        m = re.match(
            r"declare\s+(\"[^\"]+\"|\w+)\s+(.*?)\bcursor\b(?:\s+with(?:out)?\s+hold)?"
            r"\s+for\s+(.*)$",
            sql,
            re.I | re.S,
        )
        if m is None:
            raise PgError("42601", "cannot parse DECLARE: expected DECLARE name CURSOR FOR query")
        name, query = m.group(1).strip('"'), m.group(3)
        if self.role != "writer":
            guard.check_read_only(query)
        result = self._run(self._prepare_sql(query), params)
        self._cursors[name] = _Cursor(result.columns or [], result.rows)
        return Result("DECLARE CURSOR")

    def _fetch(self, sql: str) -> Result:
        m = re.match(
            r"(fetch|move)\s+(?:(forward|next|all)\s+)?(\d+|all)?\s*(?:from|in)?\s*"
            r"(\"[^\"]+\"|\w+)$",
            sql.strip(),
            re.I | re.S,
        )
        if m is None:
            raise PgError("0A000", "only FETCH [FORWARD] [n|ALL] FROM cursor is supported")
        verb, direction, count, name = m.groups()
        name = name.strip('"')
        cur = self._cursors.get(name)
        if cur is None:
            raise PgError("34000", f'cursor "{name}" does not exist')
        if (count or direction or "").lower() == "all":
            n = len(cur.rows) - cur.pos
        else:
            n = int(count) if count else 1
        rows = cur.rows[cur.pos : cur.pos + n]
        cur.pos += len(rows)
        if verb.lower() == "move":
            return Result(f"MOVE {len(rows)}")
        return Result(f"FETCH {len(rows)}", cur.columns, rows)


def _tag_for(sql: str, n: int) -> str:
    word = sql.lstrip("( \n\t").split(None, 1)[0].upper() if sql.strip() else ""
    if word in ("INSERT",):
        return f"INSERT 0 {n}"
    if word in ("UPDATE", "DELETE", "MERGE"):
        return f"{word} {n}"
    if word in ("CREATE", "DROP", "ALTER"):
        parts = sql.split()
        return " ".join(p.upper() for p in parts[:2])
    if word in (
        "SELECT",
        "WITH",
        "FROM",
        "VALUES",
        "TABLE",
        "DESCRIBE",
        "SHOW",
        "SUMMARIZE",
        "EXPLAIN",
        "PRAGMA",
        "CALL",
        "",
    ):
        return f"SELECT {n}"
    return word
