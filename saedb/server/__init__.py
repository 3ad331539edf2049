"""``saedb serve``: the store over the Postgres wire protocol, while ingestion keeps running.

protocol.py  the Postgres v3 protocol (startup, SCRAM, simple/extended query, cancel)
backend.py   Backend/Session: SQL on the DuckDB store, SET/SHOW, cursors, limits
pgcatalog.py pg_catalog answers for psql, pgJDBC, SQLAlchemy (captured driver queries)
guard.py     what read-only users may run
auth.py      SCRAM-SHA-256 verifiers and the users file
types.py     DuckDB types as Postgres OIDs, text and binary encodings
ingest_channel.py  the single-writer path for ``saedb ingest`` into a served store
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from saedb.errors import ConfigError, StoreError
from saedb.server import auth

log = logging.getLogger("saedb.serve")


@dataclass
class ServeConfig:
    """Settings of ``saedb serve``."""

    store: str
    """Path of the DuckDB store to serve (this process becomes its only writer)."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 keeps the server local to this machine."""
    port: int = 5433
    """TCP port for Postgres clients (0: any free port, printed on start)."""
    user: str = "saedb"
    """Name of the default read-only user."""
    password_env: str = "SAEDB_SERVE_PASSWORD"
    """Environment variable holding the default user's password for this run."""
    users_file: str | None = None
    """JSON file of users and salted SCRAM verifiers (default: STORE.users.json)."""
    tls_cert: str | None = None
    """PEM certificate: with --tls-key, clients may (and with sslmode=require must) use TLS."""
    tls_key: str | None = None
    """PEM private key for --tls-cert."""
    statement_timeout: float = 300.0
    """Seconds a statement may run before it is interrupted (0: no limit)."""
    max_rows: int = 1_000_000
    """Most rows one result may have; larger results fail with an error (0: no limit)."""
    max_connections: int = 64
    """Most concurrent client sessions."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.statement_timeout < 0 or self.max_rows < 0 or self.max_connections < 1:
            raise ConfigError(
                "--statement-timeout and --max-rows must be >= 0, --max-connections >= 1"
            )


def users_for(cfg: ServeConfig) -> tuple[dict[str, auth.User], str, str | None]:
    """The users, where the default user's password comes from, and a password generated now
    (to print once) or None."""
    path = Path(cfg.users_file) if cfg.users_file else auth.users_path(Path(cfg.store))
    users = auth.load_users(path)
    env = os.environ.get(cfg.password_env)
    if env:
        users[cfg.user] = auth.User(cfg.user, "reader", auth.make_verifier(env))
        return users, f"the environment variable {cfg.password_env}", None
    if cfg.user in users:
        return users, f"the users file {path} (set with saedb serve --add-user)", None
    password = secrets.token_urlsafe(12)
    auth.save_user(path, cfg.user, password, "reader")
    return auth.load_users(path), f"generated now; its verifier is saved in {path}", password


def _tls(cfg: ServeConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load --tls-cert/--tls-key: {exc}") from exc
    return ctx


def lock_down(con) -> None:
    """No file access beyond the open store, no extensions, settings frozen; the engine's
    TimeZone is UTC, what clients are told at startup (a session's ``SET TimeZone`` changes
    how its timestamptz values are written, ``saedb.server.types``)."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


async def serve(cfg: ServeConfig, *, out=sys.stdout, ready: asyncio.Event | None = None) -> None:
    from saedb.server.backend import DuckDbBackend, Limits
    from saedb.server.ingest_channel import IngestListener, write_serve_file
    from saedb.server.protocol import Server
    from saedb.store import Store

    users, source, generated = users_for(cfg)
    tls = _tls(cfg)
    try:
        store = Store(cfg.store)
    except StoreError as exc:
        raise StoreError(
            f"{exc}. Another process holds the store: stop it, or if it is a saedb serve, "
            "connect to that one"
        ) from exc
    lock_down(store.con)
    reader_root = store.con.cursor()
    backend = DuckDbBackend(reader_root, Limits(cfg.statement_timeout, cfg.max_rows))
    server = Server(backend, users, tls, cfg.max_connections)
    listener = IngestListener(store, backend.cursor)
    pg = await asyncio.start_server(server.handle, cfg.host, cfg.port)
    port = pg.sockets[0].getsockname()[1]
    ingest_port = await listener.start()
    info_path = write_serve_file(
        Path(cfg.store),
        {
            "pid": os.getpid(),
            "host": "127.0.0.1",
            "port": port,
            "ingest_port": ingest_port,
            "token": listener.token,
        },
    )
    db = Path(cfg.store).stem
    role = users[cfg.user].role if cfg.user in users else "reader"
    if generated:
        pw = f'PGPASSWORD="{generated}" '
    elif os.environ.get(cfg.password_env):
        pw = f'PGPASSWORD="${cfg.password_env}" '
    else:  # from the users file: only its verifier is known here, psql asks for the password
        pw = ""
    print(f"saedb serve: {cfg.store} on postgresql://{cfg.user}@{cfg.host}:{port}/{db}", file=out)
    print(
        f"  host {cfg.host}, port {port}, user {cfg.user} ({role}), any database name; "
        f"TLS {'on' if tls else 'off'}",
        file=out,
    )
    print(f"  password: {source}", file=out)
    if generated:
        print(f"  generated password (shown only now): {generated}", file=out)
    print(
        f'  psql: {pw}psql "host={cfg.host} port={port} user={cfg.user} dbname={db}"'
        + ("" if pw else f"  (asks for {cfg.user}'s password, set with --add-user)"),
        file=out,
    )
    print(f"  ingest while serving: saedb ingest {cfg.store} FILE --dataset NAME", file=out)
    out.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        pg.close()
        await pg.wait_closed()
        await listener.close()
        with contextlib.suppress(OSError):
            if listener.token in info_path.read_text():  # still ours, not a newer server's
                info_path.unlink()
        reader_root.close()
        store.close()
        print("saedb serve: stopped", file=out)
