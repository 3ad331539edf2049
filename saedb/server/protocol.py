"""The Postgres v3 wire protocol over asyncio, in front of a ``Backend``.

One ``Connection`` per client: startup (SSLRequest refused or TLS when the server has a
certificate, CancelRequest, GSSENCRequest refused), SCRAM-SHA-256 authentication, then the
simple query protocol (``Q``, several statements per message) and the extended one (Parse,
Bind, Describe, Execute with a row limit and PortalSuspended, Close, Sync, Flush), text and
binary formats for parameters and results, ErrorResponse with SQLSTATE codes and the
transaction status in ReadyForQuery. SQL runs in a worker thread so that a slow query never
blocks other clients or a cancel request.

Any failure while answering a message, a bug included, becomes an ErrorResponse (XX000 when
nothing better is known) and the session goes on. Connections count against
``max_connections`` from their startup packet on, not only once authenticated, and a
handshake (startup, TLS, authentication) must finish within ``handshake_timeout`` seconds;
at most twice ``max_connections`` sockets are open at once (the rest are refused before
anything is read), so a flood of silent or half-open sockets cannot exhaust the server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saedb.server import auth, guard
from saedb.server import types as pgt
from saedb.server.backend import Backend, Column, Result, Session
from saedb.server.errors import PgError

log = logging.getLogger("saedb.serve")

SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST, PROTOCOL_3 = 80877103, 80877104, 80877102, 196608


@dataclass
class Prepared:
    sql: str
    param_oids: list[int]
    n_params: int
    columns: list[Column] | None = None
    described: bool = False


@dataclass
class Portal:
    stmt: Prepared
    params: list[Any]
    result_formats: list[int]
    result: Result | None = None
    pos: int = 0
    encoders: list[Callable[[Any], bytes]] = field(default_factory=list)


def _count_params(sql: str) -> int:
    import re

    bare = re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*", "''", sql)
    found = [int(n) for n in re.findall(r"\$(\d+)", bare)]
    return max(found, default=0)


def split_statements(sql: str) -> list[str]:
    """Split a simple-query string on semicolons outside quotes, comments and $$ bodies."""
    out, buf, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(sql[i : j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            buf.append(sql[i:j])
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            buf.append(sql[i:j])
            i = j
        elif c == "$":
            import re

            m = re.match(r"\$[A-Za-z_]*\$", sql[i:])
            if m:
                tag = m.group(0)
                j = sql.find(tag, i + len(tag))
                j = n if j < 0 else j + len(tag)
                buf.append(sql[i:j])
                i = j
            else:
                buf.append(c)
                i += 1
        elif c == ";":
            out.append("".join(buf))
            buf = []
            i += 1
        else:
            buf.append(c)
            i += 1
    out.append("".join(buf))
    stripped = [s for s in out if s.strip()]
    return stripped


def as_pg_error(exc: BaseException) -> PgError:
    """The ErrorResponse for any failure while answering a message."""
    if isinstance(exc, PgError):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        return PgError("22021", f"invalid byte sequence for encoding UTF8: {exc}")
    log.error("internal error", exc_info=exc)
    return PgError(
        "XX000",
        f"internal error in saedb serve: {type(exc).__name__}: {exc} (the session goes on; "
        "the server's log has the traceback)",
    )


def _fatal(code: str, message: str) -> bytes:
    """An ErrorResponse message, for connections that have no Connection yet."""
    body = f"SFATAL\0VFATAL\0C{code}\0M{message}\0\0".encode()
    return b"E" + struct.pack("!i", len(body) + 4) + body


class Server:
    """Accepts connections and keeps the cancel keys of the live sessions."""

    def __init__(
        self,
        backend: Backend,
        users: dict[str, auth.User],
        tls: ssl.SSLContext | None = None,
        max_connections: int = 64,
        handshake_timeout: float = 60.0,
    ) -> None:
        self.backend, self.users, self.tls = backend, users, tls
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.sessions: dict[tuple[int, int], Session] = {}
        self.sockets = 0  # open client sockets, whatever their state
        self.connections: set[Connection] = set()
        self.starting = 0  # sockets past their startup packet, not yet a session
        self._next_pid = 1000

    def new_key(self) -> tuple[int, int]:
        self._next_pid += 1
        return self._next_pid, secrets.randbits(31)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.sockets >= 2 * self.max_connections:  # room left for cancel requests is gone
            log.warning("refused a connection: %d sockets open", self.sockets)
            writer.write(_fatal("53300", "sorry, too many clients already"))
            writer.close()
            return
        self.sockets += 1
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            try:
                login = await asyncio.wait_for(conn.handshake(), self.handshake_timeout)
            except TimeoutError:
                log.warning("handshake not done in %g s: connection closed", self.handshake_timeout)
                conn.out = [_fatal("57014", "canceling authentication due to timeout")]
                await asyncio.wait_for(conn.flush(), 1.0)
                return
            if login is not None and await conn.open_session(*login):
                await conn.loop()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:  # noqa: BLE001 - one client's failure must not stop the server
            log.exception("connection failed")
        finally:
            self.sockets -= 1
            self.connections.discard(conn)
            conn.finish()

    def close_all(self) -> None:
        """Close every client connection (their handlers then end)."""
        for conn in list(self.connections):
            conn.writer.close()


class Connection:
    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.session: Session | None = None
        self.key: tuple[int, int] | None = None
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.out: list[bytes] = []
        self.starting = False  # counted in server.starting

    # -- framing ---------------------------------------------------------------------------

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.out.append(kind + struct.pack("!i", len(payload) + 4) + payload)

    async def flush(self) -> None:
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out = []
        await self.writer.drain()

    async def read_message(self) -> tuple[bytes, bytes]:
        head = await self.reader.readexactly(5)
        (length,) = struct.unpack("!i", head[1:])
        return head[:1], await self.reader.readexactly(length - 4)

    def error(self, err: PgError) -> None:
        fields = (
            b"S"
            + err.severity.encode()
            + b"\0V"
            + err.severity.encode()
            + b"\0C"
            + err.code.encode()
            + b"\0M"
            + err.message.encode()
            + b"\0\0"
        )
        self.send(b"E", fields)

    # -- startup ---------------------------------------------------------------------------

    async def startup(self) -> dict[str, str] | None:
        while True:
            (length,) = struct.unpack("!i", await self.reader.readexactly(4))
            body = await self.reader.readexactly(length - 4)
            (code,) = struct.unpack("!i", body[:4])
            if code == SSL_REQUEST:
                if self.server.tls is None:
                    self.writer.write(b"N")
                    await self.writer.drain()
                    continue
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.server.tls)
                continue
            if code == GSS_REQUEST:
                self.writer.write(b"N")
                await self.writer.drain()
                continue
            if code == CANCEL_REQUEST:
                pid, secret = struct.unpack("!ii", body[4:12])
                session = self.server.sessions.get((pid, secret))
                if session is not None:
                    log.info("cancel request for session %d", pid)
                    session.cancel()
                return None
            if code != PROTOCOL_3:
                raise ConnectionError(f"unsupported protocol {code}")
            parts = body[4:].split(b"\0")
            return {
                parts[i].decode(): parts[i + 1].decode()
                for i in range(0, len(parts) - 1, 2)
                if parts[i]
            }

    async def authenticate(self, params: dict[str, str]) -> auth.User | None:
        name = params.get("user", "")
        user = self.server.users.get(name)
        self.send(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")
        await self.flush()
        kind, body = await self.read_message()
        if kind != b"p":
            raise ConnectionError("expected a SASL response")
        mech, rest = body.split(b"\0", 1)
        if mech != b"SCRAM-SHA-256":
            self.error(PgError("28000", f"unsupported SASL mechanism {mech.decode()!r}", "FATAL"))
            return None
        (n,) = struct.unpack("!i", rest[:4])
        exchange = auth.ScramExchange(user.verifier if user else None)
        try:
            self.send(b"R", struct.pack("!i", 11) + exchange.first(rest[4 : 4 + n]))
            await self.flush()
            kind, body = await self.read_message()
            final = exchange.final(body)
        except auth.ScramError:
            log.warning("password authentication failed for user %r", name)
            self.error(
                PgError("28P01", f'password authentication failed for user "{name}"', "FATAL")
            )
            return None
        self.send(b"R", struct.pack("!i", 12) + final)
        self.send(b"R", struct.pack("!i", 0))
        return user

    async def handshake(self) -> tuple[dict[str, str], auth.User] | None:
        """Startup, TLS and authentication: the startup parameters and the user, or None."""
        params = await self.startup()
        if params is None:
            return None
        server = self.server
        if server.starting + len(server.sessions) >= server.max_connections:
            self.error(PgError("53300", "sorry, too many clients already", "FATAL"))
            await self.flush()
            return None
        server.starting += 1
        self.starting = True
        user = await self.authenticate(params)
        if user is None:
            await self.flush()
            return None
        return params, user

    def _started(self) -> None:
        if self.starting:
            self.server.starting -= 1
            self.starting = False

    async def open_session(self, params: dict[str, str], user: auth.User) -> bool:
        """The session of an authenticated user (False: refused, the client was told)."""
        key = self.server.new_key()
        try:
            self.session = await asyncio.to_thread(
                self.server.backend.session, user.name, user.role, params, key[0]
            )
        except PgError as err:  # e.g. an invalid setting in the startup options
            self.error(PgError(err.code, err.message, "FATAL"))
            await self.flush()
            return False
        self.key = key
        self.server.sessions[self.key] = self.session
        self._started()
        settings = self.session.settings
        status = {
            "server_version": "15.0",
            "server_encoding": "UTF8",
            "client_encoding": "UTF8",
            "DateStyle": "ISO, MDY",
            "TimeZone": settings.get("TimeZone", "UTC"),
            "integer_datetimes": "on",
            "standard_conforming_strings": "on",
            "IntervalStyle": "postgres",
            "is_superuser": "off",
            "session_authorization": user.name,
            "application_name": settings.get(
                "application_name", params.get("application_name", "")
            ),
            "default_transaction_read_only": "on" if user.role == "reader" else "off",
        }
        for k, v in status.items():
            self.parameter_status(k, v)
        self.send(b"K", struct.pack("!ii", *self.key))
        self.ready()
        await self.flush()
        return True

    def parameter_status(self, name: str, value: str) -> None:
        self.send(b"S", name.encode() + b"\0" + value.encode() + b"\0")

    def ready(self) -> None:
        for name, value in self.session.reports().items():  # SET TimeZone and the like
            self.parameter_status(name, value)
        self.send(b"Z", self.session.status.encode())

    def finish(self) -> None:
        self._started()
        if self.key is not None:
            self.server.sessions.pop(self.key, None)
        if self.session is not None:
            self.session.close()
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001
            pass

    # -- messages --------------------------------------------------------------------------

    async def loop(self) -> None:
        skipping = False  # after an error in extended mode, skip to Sync
        while True:
            kind, body = await self.read_message()
            if kind == b"X":
                return
            if kind == b"S":
                skipping = False
                self.ready()
                await self.flush()
                continue
            if kind == b"H":
                await self.flush()
                continue
            if kind == b"Q":
                try:
                    await self.simple_query(body[:-1].decode())
                except Exception as exc:  # noqa: BLE001 - any failure is the client's error
                    self.error(as_pg_error(exc))
                    self.session.fail()
                self.ready()
                await self.flush()
                continue
            if skipping:
                continue
            try:
                if kind == b"P":
                    self.parse(body)
                elif kind == b"B":
                    self.bind(body)
                elif kind == b"D":
                    await self.describe(body)
                elif kind == b"E":
                    await self.execute(body)
                elif kind == b"C":
                    what, name = body[:1], body[1:-1].decode()
                    (self.statements if what == b"S" else self.portals).pop(name, None)
                    self.send(b"3")
                else:
                    raise PgError("08P01", f"unexpected message type {kind!r}")
            except Exception as exc:  # noqa: BLE001 - PgError, or a bug: the client's error
                self.error(as_pg_error(exc))
                self.session.fail()
                skipping = True
            if len(self.out) > 64:
                await self.flush()

    async def simple_query(self, sql: str) -> None:
        statements = split_statements(sql)
        if not statements:
            self.send(b"I")
            return
        for st in statements:  # an error ends the message (the caller sends it)
            result = await asyncio.to_thread(self.session.execute, st, ())
            if result.tag == "EMPTY":
                self.send(b"I")
                continue
            if result.columns is not None:
                tz = self.session.tzinfo
                encoders = [pgt.encoder(c.oid, False, tz) for c in result.columns]
                self.row_description(result.columns, [0] * len(result.columns))
                for row in result.rows:
                    self.data_row(row, encoders)
                    if len(self.out) > 256:
                        await self.flush()
            self.send(b"C", result.tag.encode() + b"\0")

    def parse(self, body: bytes) -> None:
        name, rest = body.split(b"\0", 1)
        sql, rest = rest.split(b"\0", 1)
        (n,) = struct.unpack("!h", rest[:2])
        oids = list(struct.unpack(f"!{n}I", rest[2 : 2 + 4 * n]))
        text = sql.decode()
        if len(split_statements(text)) > 1:  # as Postgres; a reader learns what it may not run
            if self.session.role != "writer":
                guard.check_read_only(text)
            raise PgError("42601", "cannot insert multiple commands into a prepared statement")
        n_params = max(_count_params(text), n)
        oids += [0] * (n_params - len(oids))
        self.statements[name.decode()] = Prepared(text, oids, n_params)
        self.send(b"1")

    def bind(self, body: bytes) -> None:
        portal, rest = body.split(b"\0", 1)
        stmt_name, rest = rest.split(b"\0", 1)
        stmt = self.statements.get(stmt_name.decode())
        if stmt is None:
            raise PgError("26000", f'prepared statement "{stmt_name.decode()}" does not exist')
        pos = 0
        (nf,) = struct.unpack_from("!h", rest, pos)
        formats = list(struct.unpack_from(f"!{nf}h", rest, pos + 2))
        pos += 2 + 2 * nf
        (np_,) = struct.unpack_from("!h", rest, pos)
        pos += 2
        values = []
        for i in range(np_):
            (size,) = struct.unpack_from("!i", rest, pos)
            pos += 4
            data = None if size < 0 else rest[pos : pos + size]
            pos += max(size, 0)
            fmt = formats[0] if len(formats) == 1 else (formats[i] if formats else 0)
            oid = stmt.param_oids[i] if i < len(stmt.param_oids) else 0
            try:
                values.append(pgt.decode_param(oid, data, fmt == 1))
            except NotImplementedError as exc:
                raise PgError("0A000", f"parameter ${i + 1}: {exc}") from exc
            except (ValueError, ArithmeticError, struct.error) as exc:
                raise PgError("22P02", f"invalid value for parameter ${i + 1}: {exc}") from exc
        (nr,) = struct.unpack_from("!h", rest, pos)
        result_formats = list(struct.unpack_from(f"!{nr}h", rest, pos + 2))
        self.portals[portal.decode()] = Portal(stmt, values, result_formats)
        self.send(b"2")

    def _formats(self, portal: Portal, n: int) -> list[int]:
        f = portal.result_formats
        if not f:
            return [0] * n
        if len(f) == 1:
            return f * n
        return f

    async def describe(self, body: bytes) -> None:
        what, name = body[:1], body[1:-1].decode()
        if what == b"S":
            stmt = self.statements.get(name)
            if stmt is None:
                raise PgError("26000", f'prepared statement "{name}" does not exist')
            oids = [o or pgt.TEXT for o in stmt.param_oids]
            self.send(b"t", struct.pack(f"!h{len(oids)}I", len(oids), *oids))
            columns = await asyncio.to_thread(self.session.describe, stmt.sql, stmt.n_params)
            if columns is None:
                self.send(b"n")
            else:
                self.row_description(columns, [0] * len(columns))
            return
        portal = self.portals.get(name)
        if portal is None:
            columns = self.session.cursor_columns(name)  # a DECLAREd cursor
            if columns is None:
                raise PgError("34000", f'portal "{name}" does not exist')
            self.row_description(columns, [0] * len(columns))
            return
        await self.run_portal(portal)
        if portal.result.columns is None:
            self.send(b"n")
        else:
            cols = portal.result.columns
            self.row_description(cols, self._formats(portal, len(cols)))

    async def run_portal(self, portal: Portal) -> None:
        if portal.result is None:
            portal.result = await asyncio.to_thread(
                self.session.execute, portal.stmt.sql, portal.params
            )
            if portal.result.columns is not None:
                fmts = self._formats(portal, len(portal.result.columns))
                portal.encoders = [
                    pgt.encoder(c.oid, f == 1, self.session.tzinfo)
                    for c, f in zip(portal.result.columns, fmts, strict=False)
                ]

    async def execute(self, body: bytes) -> None:
        name, rest = body.split(b"\0", 1)
        (max_rows,) = struct.unpack("!i", rest[:4])
        portal = self.portals.get(name.decode())
        if portal is None:
            raise PgError("34000", f'portal "{name.decode()}" does not exist')
        await self.run_portal(portal)
        result = portal.result
        if result.tag == "EMPTY":
            self.send(b"I")
            return
        if result.columns is not None:
            end = (
                len(result.rows) if max_rows <= 0 else min(len(result.rows), portal.pos + max_rows)
            )
            for row in result.rows[portal.pos : end]:
                self.data_row(row, portal.encoders)
                if len(self.out) > 256:
                    await self.flush()
            portal.pos = end
            if end < len(result.rows):
                self.send(b"s")
                return
        self.send(b"C", result.tag.encode() + b"\0")

    def row_description(self, columns: list[Column], formats: list[int]) -> None:
        parts = [struct.pack("!h", len(columns))]
        for col, fmt in zip(columns, formats, strict=False):
            parts.append(
                col.name.encode()
                + b"\0"
                + struct.pack("!ihIhih", 0, 0, col.oid, pgt.TYPE_LEN.get(col.oid, -1), -1, fmt)
            )
        self.send(b"T", b"".join(parts))

    def data_row(self, row: tuple, encoders: list[Callable[[Any], bytes]]) -> None:
        parts = [struct.pack("!h", len(row))]
        for value, enc in zip(row, encoders, strict=False):
            if value is None:
                parts.append(b"\xff\xff\xff\xff")
            else:
                b = enc(value)
                parts.append(struct.pack("!i", len(b)) + b)
        self.send(b"D", b"".join(parts))
