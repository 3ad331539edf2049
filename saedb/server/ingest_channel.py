"""Ingestion while serving: the single-writer path from ``saedb ingest`` into a served store.

DuckDB lets one process write a file, and ``saedb serve`` is that process. When it starts it
writes ``STORE.serve.json`` (mode 0600: the port of a second listener on 127.0.0.1 and a random
token). ``saedb ingest`` finds that file (``open_for_ingest``) and, instead of opening the
store, gets a ``RemoteStore``: the same methods ``ingest.pipeline.run_ingest`` calls on a
``Store`` (``get_sae``, ``dataset_id``, ``start_run``, ``known_documents``, ``write_batch``,
``finish_run``), each sent to the server as one request (a JSON header and Arrow IPC tables).
The ingest process still reads the corpus and runs the reader model and the SAE; the server
runs each ``Store.write_batch`` on its own connection, one transaction per batch, one batch at
a time. Readers' sessions are other cursors of that connection: each statement sees the
store before or after a batch, never half of one. An ingester killed mid-request sends an
incomplete message that is dropped; its run is marked 'interrupted' when its connection
closes; a server killed mid-batch leaves an uncommitted transaction that DuckDB discards on
the next open. Re-running the same ingest skips what was committed.

The same channel answers ``hello`` (is this the server of that file?) and the read-only
requests of :mod:`saedb.server.snapshot`. A ``STORE.serve.json`` left by a server that was
killed is recognised (its pid is gone, or its port does not answer with its token) and
``saedb ingest`` opens the store directly, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import struct
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from saedb import errors
from saedb.errors import SaedbError, StoreError
from saedb.store import SaeRecord, Store

METHODS = (
    "get_sae",
    "dataset_id",
    "start_run",
    "finish_run",
    "known_documents",
    "write_batch",
    "get_setting",
)
"""Store methods an ingester may call, run one at a time on the writer thread."""
HELLO_TIMEOUT_S = 5.0
"""How long ``connect_if_served`` waits for the server named in STORE.serve.json to answer."""


def serve_file(store: Path) -> Path:
    return store.with_name(store.name + ".serve.json")


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _encode(header: dict[str, Any], tables: dict[str, pa.Table]) -> bytes:
    header = dict(header, tables=list(tables))
    parts = [json.dumps(header).encode()] + [_ipc(t) for t in tables.values()]
    return b"".join(struct.pack("!Q", len(p)) + p for p in parts)


def _encode_value(value: Any) -> Any:
    if isinstance(value, SaeRecord):
        return {"__sae__": asdict(value)}
    if isinstance(value, dict):
        return {"__dict__": [[k, list(v) if isinstance(v, tuple) else v] for k, v in value.items()]}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and "__sae__" in value:
        return SaeRecord(**value["__sae__"])
    if isinstance(value, dict) and "__dict__" in value:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value["__dict__"]}
    return value


# -- server side -------------------------------------------------------------------------------


def _reply(**reply: Any) -> bytes:
    body = json.dumps(reply).encode()
    return struct.pack("!Q", len(body)) + body


class IngestListener:
    """Runs ingest requests against the server's Store, one at a time, and snapshots.

    ``cursor`` makes a new cursor of the server's connection (for reads that must not wait
    for the writer); by default one of the store's own connection."""

    def __init__(
        self, store: Store, cursor: Callable[[], duckdb.DuckDBPyConnection] | None = None
    ) -> None:
        self.store = store
        self.cursor = cursor or store.con.cursor
        self.token = secrets.token_hex(24)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saedb-writer")
        self.server: asyncio.base_events.Server | None = None
        self.batches = 0

    async def start(self, host: str = "127.0.0.1") -> int:
        self.server = await asyncio.start_server(self.handle, host, 0)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        self.writer.shutdown(wait=True)

    def _call(self, method: str, args: dict[str, Any]) -> Any:
        return getattr(self.store, method)(**args)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        open_runs: set[int] = set()
        try:
            while True:
                try:
                    (n,) = struct.unpack("!Q", await reader.readexactly(8))
                    header = json.loads(await reader.readexactly(n))
                    tables = {}
                    for name in header.get("tables", []):
                        (m,) = struct.unpack("!Q", await reader.readexactly(8))
                        tables[name] = _table(await reader.readexactly(m))
                except asyncio.IncompleteReadError:
                    return  # the ingester went away; a partial request is dropped whole
                if not secrets.compare_digest(str(header.get("token", "")), self.token):
                    return
                method = header.get("method")
                args = dict(header.get("args", {}))
                args.update(tables)
                if method == "hello":
                    value = {"pid": os.getpid(), "store": str(self.store.path)}
                    reply = {"ok": True, "value": value}
                elif method == "snapshot":
                    from saedb.server.snapshot import send_snapshot

                    await send_snapshot(self.cursor(), writer, _reply)
                    continue
                elif method == "schema_version":
                    from saedb.server.snapshot import schema_version

                    value = await asyncio.to_thread(schema_version, self.cursor())
                    reply = {"ok": True, "value": value}
                elif method not in METHODS:
                    reply = {
                        "ok": False,
                        "type": "StoreError",
                        "error": f"unknown ingest request {method!r}",
                    }
                else:
                    try:
                        value = await loop.run_in_executor(self.writer, self._call, method, args)
                        reply = {"ok": True, "value": _encode_value(value)}
                        if method == "start_run":
                            open_runs.add(int(value))
                        elif method == "finish_run":
                            open_runs.discard(int(args["run_id"]))
                        elif method == "write_batch":
                            self.batches += 1
                    except SaedbError as exc:
                        reply = {"ok": False, "type": type(exc).__name__, "error": str(exc)}
                    except Exception as exc:  # noqa: BLE001 - reported to the ingester
                        reply = {
                            "ok": False,
                            "type": "StoreError",
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                writer.write(_reply(**reply))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for run_id in open_runs:
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(
                        self.writer,
                        self.store.finish_run,
                        run_id,
                        "interrupted",
                        "the ingest process disconnected from saedb serve",
                    )
            writer.close()


def write_serve_file(store: Path, info: dict[str, Any]) -> Path:
    path = serve_file(store)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)
    return path


# -- client side -------------------------------------------------------------------------------


class RemoteStore:
    """A Store stand-in for ``run_ingest`` that sends each write to ``saedb serve``."""

    read_only = False

    def __init__(
        self, path: Path, host: str, port: int, token: str, pid: int | None = None
    ) -> None:
        self.path = path
        self.token = token
        self.pid = pid
        self.sock = socket.create_connection((host, port), timeout=HELLO_TIMEOUT_S)
        self._lock = threading.Lock()
        try:  # a port that answers is not enough: it must be that server, with that token
            self._request("hello")
        except BaseException:
            self.close()
            raise
        self.sock.settimeout(None)

    def _request(self, method: str, tables: dict[str, pa.Table] | None = None, **args: Any) -> Any:
        header = {"token": self.token, "method": method, "args": args}
        payload = _encode(header, tables or {})
        with self._lock:
            try:
                self.sock.sendall(payload)
                (n,) = struct.unpack("!Q", self._recv(8))
                reply = json.loads(self._recv(n))
            except OSError as exc:
                raise StoreError(
                    f"lost the connection to saedb serve for {self.path} ({exc}); committed "
                    "batches are kept: run the same saedb ingest again to continue"
                ) from exc
        if not reply["ok"]:
            cls = getattr(errors, reply.get("type", ""), None)
            cls = cls if isinstance(cls, type) and issubclass(cls, SaedbError) else StoreError
            raise cls(reply["error"])
        return _decode_value(reply["value"])

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("saedb serve closed the connection")
            buf += chunk
        return bytes(buf)

    def get_sae(self, name: str | int | None = None) -> SaeRecord:
        return self._request("get_sae", name=name)

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        return self._request("get_setting", key=key, default=default)

    def dataset_id(self, name: str, *, create: bool = False, description: str | None = None) -> int:
        return self._request("dataset_id", name=name, create=create, description=description)

    def start_run(self, config: dict[str, Any]) -> int:
        return self._request("start_run", config=config)

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        self._request("finish_run", run_id=run_id, status=status, error=error)

    def known_documents(
        self, dataset_id: int, external_ids: list[str], sae_id: int
    ) -> dict[str, tuple[int, bool, str]]:
        return self._request(
            "known_documents", dataset_id=dataset_id, external_ids=list(external_ids), sae_id=sae_id
        )

    def write_batch(
        self,
        *,
        run_id: int,
        dataset_id: int,
        sae_id: int,
        documents: pa.Table,
        latents: pa.Table,
        bad_rows: pa.Table | None = None,
        n_skipped: int = 0,
    ) -> list[int]:
        tables = {"documents": documents, "latents": latents}
        if bad_rows is not None:
            tables["bad_rows"] = bad_rows
        return self._request(
            "write_batch",
            tables,
            run_id=run_id,
            dataset_id=dataset_id,
            sae_id=sae_id,
            n_skipped=n_skipped,
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:  # a killed server that its parent has not reaped yet is gone too
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def connect_if_served(
    path: str | Path, *, notify: Callable[[str], None] | None = None
) -> RemoteStore | None:
    """A RemoteStore when a live ``saedb serve`` holds ``path``, else None.

    A STORE.serve.json whose server is gone (its pid is not running, or its port does not
    answer with its token within HELLO_TIMEOUT_S) is stale: ``notify`` hears why, and the
    file is removed when its pid is gone."""
    path = Path(path)
    info_path = serve_file(path)
    try:
        info = json.loads(info_path.read_text())
    except OSError:
        return None
    except ValueError:
        info = {}
    pid = info.get("pid")
    if not _pid_alive(pid):
        with contextlib.suppress(OSError):
            info_path.unlink()
        why = f"the saedb serve that wrote it (pid {pid}) is not running; removed it"
    else:
        try:
            return RemoteStore(path, info["host"], int(info["ingest_port"]), info["token"], pid=pid)
        except (OSError, KeyError, ValueError, TypeError, SaedbError) as exc:
            why = (
                f"pid {pid} is running but its port {info.get('ingest_port')} does not answer "
                f"as that saedb serve ({exc})"
            )
    if notify is not None:
        notify(f"saedb: {info_path} is stale: {why}; opening {path} directly")
    return None


def open_for_ingest(
    path: str | Path, *, notify: Callable[[str], None] | None = _stderr
) -> Store | RemoteStore:
    """The store to ingest into: through ``saedb serve`` when one holds it, else directly."""
    remote = connect_if_served(path, notify=notify)
    return remote if remote is not None else Store(path)
