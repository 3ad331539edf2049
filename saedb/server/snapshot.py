"""Reading a served store from another process: a snapshot through ``saedb serve``.

While ``saedb serve`` holds the store, DuckDB lets no other process open the file, read-only
included. ``saedb export`` and ``saedb sql-export`` then ask the server, over the same local
channel (``STORE.serve.json``, a token, 127.0.0.1) that ``saedb ingest`` writes through:

- ``snapshot``: the server opens one transaction on a cursor of its own and streams every
  table of ``main`` (columns with their DuckDB types, then Arrow record batches); the client
  writes them into a temporary DuckDB file next to the store, which the export then reads.
  One transaction means one snapshot: an ingest committing meanwhile is in it whole or not
  at all. Views and macros are not copied (the export reads tables only).
- ``schema_version``: the store's schema version, all ``sql-export`` needs of the store.

Frames after the reply header: 8 bytes of length, then a kind byte and its payload:
``B`` an Arrow IPC stream of one batch of the current table, ``E`` the end of that table,
``X`` an error (UTF-8 text) that ends the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from saedb.errors import StoreError

BATCH_ROWS = 100_000
"""Rows per Arrow batch sent by the server."""

TABLES_SQL = (
    "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
    "AND schema_name = 'main' AND NOT temporary ORDER BY table_name"
)


def _q(name: str) -> str:
    from saedb.catalog import quote_identifier

    return quote_identifier(name)


def _frame(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!Q", len(payload) + 1) + kind + payload


def _ipc_batch(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


# -- server side -------------------------------------------------------------------------------


def schema_version(cur: duckdb.DuckDBPyConnection) -> int:
    from saedb import migrations

    try:
        return migrations.current_version(cur)
    finally:
        cur.close()


async def send_snapshot(
    cur: duckdb.DuckDBPyConnection, writer: asyncio.StreamWriter, reply: Callable[..., bytes]
) -> None:
    """Stream every table of the store, read in one transaction of ``cur`` (then closed).

    ``reply(ok=..., value=...|error=...)`` frames the JSON reply header."""
    loop = asyncio.get_running_loop()

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    def send(data: bytes) -> None:  # from the worker thread; waits for the socket to drain
        asyncio.run_coroutine_threadsafe(write(data), loop).result()

    def work() -> None:
        header_sent = False
        try:
            cur.execute("BEGIN TRANSACTION")
            tables = [r[0] for r in cur.execute(TABLES_SQL).fetchall()]
            described = {
                t: [(r[0], r[1]) for r in cur.execute(f"DESCRIBE {_q(t)}").fetchall()]
                for t in tables
            }
            send(reply(ok=True, value={"tables": [[t, described[t]] for t in tables]}))
            header_sent = True
            for t in tables:
                reader = cur.sql(f"SELECT * FROM {_q(t)}").to_arrow_reader(BATCH_ROWS)
                for batch in reader:
                    send(_frame(b"B", _ipc_batch(batch)))
                send(_frame(b"E"))
            cur.execute("COMMIT")
        except duckdb.Error as exc:
            if header_sent:
                send(_frame(b"X", str(exc).encode()))
            else:
                send(reply(ok=False, type="StoreError", error=f"snapshot failed: {exc}"))
        finally:
            cur.close()

    await asyncio.to_thread(work)


# -- client side -------------------------------------------------------------------------------


def _read_frame(remote: Any) -> tuple[bytes, bytes]:
    (n,) = struct.unpack("!Q", remote._recv(8))
    data = remote._recv(n)
    return data[:1], data[1:]


def write_snapshot(remote: Any, path: Path) -> dict[str, int]:
    """Receive a snapshot from the server behind ``remote`` (a RemoteStore) into a new
    DuckDB file at ``path``; returns the rows per table."""
    header = remote._request("snapshot")
    rows: dict[str, int] = {}
    con = duckdb.connect(str(path))
    try:
        for table, columns in header["tables"]:
            cols = ", ".join(f"{_q(name)} {typ}" for name, typ in columns)
            con.execute(f"CREATE TABLE {_q(table)} ({cols})")
            rows[table] = 0
            while True:
                try:
                    kind, payload = _read_frame(remote)
                except OSError as exc:
                    raise StoreError(f"lost saedb serve during the snapshot ({exc})") from exc
                if kind == b"E":
                    break
                if kind == b"X":
                    raise StoreError(f"saedb serve failed the snapshot: {payload.decode()}")
                batch = pa.ipc.open_stream(payload).read_all()
                con.register("_saedb_snapshot_batch", batch)
                con.execute(f"INSERT INTO {_q(table)} SELECT * FROM _saedb_snapshot_batch")
                con.unregister("_saedb_snapshot_batch")
                rows[table] += batch.num_rows
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return rows


def held_by_another_process(exc: Exception) -> bool:
    """Whether DuckDB failed to open a file because another process has it open."""
    return "lock" in str(exc).lower()


def open_error(store: Path, exc: Exception) -> StoreError:
    """The error for a store this process cannot open read-only (and no server to ask)."""
    if not held_by_another_process(exc):
        return StoreError(f"cannot open {store} read-only: {exc}")
    return StoreError(
        f"cannot open {store} read-only: {exc}. Another process holds the store and it is "
        f"not a saedb serve that answers (that writes {store.name}.serve.json next to the "
        "store): stop that process and retry, or serve the store with saedb serve"
    )


@contextlib.contextmanager
def readable_store(
    store: Path, *, notify: Callable[[str], None] | None = None
) -> Iterator[tuple[Path, str | None]]:
    """A path of ``store`` that this process can open read-only, and how it was read: the
    store itself (None), or, while ``saedb serve`` holds it, a snapshot taken through the
    server into a temporary file next to the store (removed when the block ends)."""
    try:
        duckdb.connect(str(store), read_only=True).close()
    except duckdb.Error as exc:
        error = exc
    else:
        yield store, None
        return
    from saedb.server.ingest_channel import connect_if_served

    remote = connect_if_served(store, notify=notify) if held_by_another_process(error) else None
    if remote is None:
        raise open_error(store, error) from error
    tmp = Path(tempfile.mkdtemp(prefix=f".{store.name}.snapshot-", dir=store.parent))
    try:
        with remote:
            if notify is not None:
                notify(
                    f"{store} is held by saedb serve (pid {remote.pid}): reading a snapshot "
                    "of it through the server (one transaction) ..."
                )
            write_snapshot(remote, tmp / store.name)
        yield tmp / store.name, f"a snapshot read through saedb serve (pid {remote.pid})"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def served_schema_version(store: Path) -> int | None:
    """The schema version of ``store`` asked of the saedb serve holding it (None: none)."""
    from saedb.server.ingest_channel import connect_if_served

    remote = connect_if_served(store)
    if remote is None:
        return None
    with remote:
        return int(remote._request("schema_version"))
