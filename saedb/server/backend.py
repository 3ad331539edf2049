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

import datetime as dt
import logging
import re
import threading
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import duckdb

import saedb
from saedb.server import guard, pgcatalog
from saedb.server import types as pgt
from saedb.server.errors import PgError, from_duckdb

SERVER_VERSION = "15.0"
log = logging.getLogger("saedb.serve")


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
    role: str
    """'reader' (may only read) or 'writer'."""
    tzinfo: dt.tzinfo
    """The session's TimeZone, for timestamptz values sent as text."""
    settings: dict[str, str]
    """What SHOW answers (TimeZone and application_name go to the client at startup)."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...
    def describe(self, sql: str, n_params: int) -> list[Column] | None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...
    def fail(self) -> None:
        """An error outside ``execute`` (sending its rows) aborts the transaction too."""

    def reports(self) -> dict[str, str]:
        """Reported settings (ParameterStatus) changed since the last call."""

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
REPORTED = ("TimeZone", "application_name")
"""Settings a client may change whose new value is sent back (ParameterStatus), as Postgres."""
_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(value: str) -> float:
    """A Postgres time setting (``statement_timeout``): a number of milliseconds, or a
    number with one of the units us, ms, s, min, h, d."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d*)?)\s*([a-z]*)\s*", value.lower())
    if m is None or m.group(2) not in ("", *_UNITS_MS):
        raise PgError(
            "22023",
            f'invalid value for parameter "statement_timeout": "{value}" (a number of '
            "milliseconds, or a number with a unit: us, ms, s, min, h, d)",
        )
    ms = float(m.group(1)) * _UNITS_MS.get(m.group(2) or "ms", 1)
    if ms < 0:
        raise PgError("22023", f'"statement_timeout" must be 0 or more, got "{value}"')
    return ms


def parse_timezone(value: str) -> tuple[str, dt.tzinfo]:
    """A TimeZone setting as (the name to report, the zone): an IANA name (Europe/Paris),
    UTC, a whole number of hours east of UTC (``SET TIME ZONE -5``), or a POSIX-style
    offset west of UTC (``GMT-02:00``, what pgJDBC sends for a JVM at UTC+2)."""
    v = value.strip()
    if v.lower() in ("utc", "gmt", "z", "zulu", "local", "default"):
        return "UTC", dt.UTC
    if re.fullmatch(r"[+-]?\d{1,2}", v):
        hours = int(v)
        if -12 <= hours <= 14:
            name = "UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"  # POSIX signs are inverted
            return name, zoneinfo.ZoneInfo(name)
    posix = re.fullmatch(r"(?:UTC|GMT)([+-])(\d{1,2})(?::(\d\d))?", v, re.I)
    if posix and int(posix[2]) <= 14 and int(posix[3] or 0) < 60:
        west = dt.timedelta(hours=int(posix[2]), minutes=int(posix[3] or 0))
        return v, dt.timezone(-west if posix[1] == "+" else west)
    try:
        return v, zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    raise PgError(
        "22023",
        f'invalid value for parameter "TimeZone": "{value}" (use a zone name such as UTC or '
        "Europe/Paris, or whole hours east of UTC such as -5)",
    )


def startup_settings(startup: dict[str, str]) -> dict[str, str]:
    """The settings a startup message asks for: its parameters besides user and database,
    and the ``-c name=value`` (or ``--name=value``) pairs of its ``options``."""
    out = {k: v for k, v in startup.items() if k not in ("user", "database", "options")}
    words = iter(re.split(r"(?<!\\)\s+", startup.get("options", "").strip()))
    for word in words:
        pair = next(words, "") if word == "-c" else word[2:] if word.startswith("--") else ""
        name, eq, value = pair.partition("=")
        if eq:
            out[name.replace("-", "_")] = value.replace("\\ ", " ")
    return out


class DuckDbBackend:
    """Sessions over one DuckDB connection (the server's, which also writes)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, limits: Limits | None = None) -> None:
        self.con = con
        self.limits = limits or Limits()
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor of the server's connection: its own transactions and snapshots."""
        with self._lock:  # cursor() on a connection in use by another thread is not safe
            return self.con.cursor()

    def session(self, user: str, role: str, startup: dict[str, str], pid: int) -> DuckDbSession:
        cur = self.cursor()
        try:
            return DuckDbSession(cur, user, role, startup, pid, self.limits)
        except PgError:
            cur.close()
            raise


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
        self.tzinfo: dt.tzinfo = dt.UTC
        self._timeout_ms = 0.0  # SET statement_timeout (0: only the server's limit)
        self._reports: dict[str, str] = {}
        self._status = "I"
        self._catalog_built: bool | str = False
        self._cursors: dict[str, _Cursor] = {}
        self._cancelled = self._timed_out = False
        self._running = threading.Lock()
        for key, value in startup_settings(startup).items():  # PGTZ, PGOPTIONS='-c x=y'
            try:
                self._set_value(key, value)
            except PgError as err:
                if key.lower() != "timezone":
                    raise
                # a driver's own zone name (pgJDBC sends the JVM's): write UTC, and say so
                log.warning("startup TimeZone %r not known (%s): using UTC", value, err.message)
                self._set_timezone("UTC")
        self.settings["session_authorization"] = user
        if role == "writer":
            self.settings["default_transaction_read_only"] = "off"
            self.settings["transaction_read_only"] = "off"
        self._session_defaults = dict(self.settings)  # what RESET goes back to
        self._reports.clear()  # the startup sends them all

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
        except Exception:  # PgError, or a bug: either way the transaction is aborted
            self.fail()
            raise

    def fail(self) -> None:
        if self._status == "T":
            self._status = "E"

    def reports(self) -> dict[str, str]:
        out, self._reports = self._reports, {}
        return out

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
            return self._reset(sql)
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
            if len(sql.split(None, 1)) < 2:
                raise PgError("42601", "syntax error: CLOSE needs a cursor name, or ALL")
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

    def _statement_timeout(self) -> tuple[float, str]:
        """Seconds a statement may run (0: no limit) and where that limit comes from: the
        session's ``SET statement_timeout`` may lower the server's limit, not lift it."""
        server, own = self.limits.statement_timeout_s, self._timeout_ms / 1000
        if own > 0 and (server <= 0 or own < server):
            return own, "SET statement_timeout"
        return server, "saedb serve --statement-timeout"

    def _run(self, sql: str, params: list[Any]) -> Result:
        """Run on DuckDB under the timeout, fetching at most max_rows rows."""
        self._cancelled = self._timed_out = False
        timer = None
        timeout, timeout_from = self._statement_timeout()
        if timeout > 0:
            timer = threading.Timer(timeout, self._timeout)
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
                            f"({timeout:g} s; see {timeout_from})",
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
        zone = re.match(r"set\s+(?:session\s+|local\s+)?time\s+zone\s+(.+)$", sql, re.I | re.S)
        if zone:
            self._set_value("TimeZone", zone.group(1).strip())
        elif m:
            self._set_value(m.group(1), m.group(2).strip())
        # SET TRANSACTION ... and the like: accepted, nothing to change for a snapshot reader
        return Result("SET")

    def _set_value(self, name: str, value: str) -> None:
        value = value[1:-1].replace("''", "'") if value.startswith("'") else value
        key = next((k for k in self.settings if k.lower() == name.lower()), name)
        if value.lower() == "default":  # SET x TO DEFAULT: as RESET x
            value = getattr(self, "_session_defaults", DEFAULT_SETTINGS).get(key, value)
        if key == "TimeZone":
            self._set_timezone(value)
            return
        if key == "statement_timeout":
            self._timeout_ms = parse_duration_ms(value)
        self.settings[key] = value
        if key in REPORTED:
            self._reports[key] = value
        self._catalog_built = False if key.lower() == "search_path" else self._catalog_built

    def _set_timezone(self, value: str) -> None:
        name, self.tzinfo = parse_timezone(value)
        self.settings["TimeZone"] = self._reports["TimeZone"] = name

    def _reset(self, sql: str) -> Result:
        name = sql.split(None, 1)[1].strip().strip('"') if len(sql.split()) > 1 else ""
        key = next((k for k in self.settings if k.lower() == name.lower()), name)
        keys = list(DEFAULT_SETTINGS) if key.lower() == "all" else [key]
        for k in keys:
            if k in ("TimeZone", "statement_timeout", "application_name", "search_path"):
                self._set_value(k, self._session_defaults[k])
        return Result("RESET")

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
