"""Helpers for the saedb serve tests and bench/serve.py: start a real server process on
127.0.0.1 (or the protocol server in this process, for its timeouts), and synthetic batches
written through the ingest channel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

PASSWORD = "s3cret-for-tests"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    proc: subprocess.Popen | None
    port: int
    store: Path | None
    banner: str = ""
    """What ``saedb serve`` printed on start, up to its ingest line."""

    def dsn(self, user: str = "saedb", password: str = PASSWORD, **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": user,
            "password": password,
            "dbname": "store",
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())


@contextlib.contextmanager
def serve(
    store: Path, *args: str, password: str | None = PASSWORD, timeout: float = 90.0
) -> Iterator[Served]:
    """Run ``saedb serve STORE --port 0 ARGS`` until the block ends (then SIGTERM it).
    ``password``: the default user's, as $SAEDB_SERVE_PASSWORD (None: the variable unset)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SAEDB_SERVE_PASSWORD", None)
    if password is not None:
        env["SAEDB_SERVE_PASSWORD"] = password
    proc = subprocess.Popen(
        [sys.executable, "-m", "saedb.cli", "serve", str(store), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    deadline = time.monotonic() + timeout
    first = ""
    try:
        while time.monotonic() < deadline:
            first = proc.stdout.readline()
            m = re.search(r":(\d+)/", first)
            if m:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"saedb serve exited: {first}{proc.stdout.read()}")
        else:
            raise RuntimeError("saedb serve did not start in time")
        banner = [first]
        while "ingest while serving" not in banner[-1] and banner[-1]:
            banner.append(proc.stdout.readline())
        # Keep reading what the server prints, so that it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        yield Served(proc, int(m.group(1)), store, "".join(banner))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serve_in_process(**server_args: float) -> Iterator[Served]:
    """The protocol server of ``saedb serve`` in this process, on an in-memory DuckDB, with
    ``Server`` arguments such as ``max_connections`` and ``handshake_timeout``."""
    import duckdb

    from saedb.server import auth
    from saedb.server.backend import DuckDbBackend
    from saedb.server.protocol import Server

    con = duckdb.connect()
    users = {"saedb": auth.User("saedb", "reader", auth.make_verifier(PASSWORD))}
    server = Server(DuckDbBackend(con.cursor()), users, **server_args)
    loop = asyncio.new_event_loop()
    listening = loop.run_until_complete(asyncio.start_server(server.handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Served(None, listening.sockets[0].getsockname()[1], None)
    finally:

        async def shutdown() -> None:
            listening.close()
            server.close_all()
            await asyncio.sleep(0.2)  # the handlers see their sockets closed and end

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        con.close()


def synthetic_batch(
    rng: np.random.Generator, start: int, n_docs: int, d_sae: int = 24
) -> tuple[pa.Table, pa.Table]:
    """``n_docs`` new documents (external ids ``doc-<start+i>``) and their latent rows."""
    ids = [f"doc-{start + i}" for i in range(n_docs)]
    documents = pa.table(
        {
            "doc_id": pa.array([None] * n_docs, pa.int64()),
            "external_id": ids,
            "text": [f"synthetic document {start + i}" for i in range(n_docs)],
            "text_sha256": ["0" * 64] * n_docs,
            "n_tokens": pa.array([3] * n_docs, pa.int32()),
            "metadata": ["{}"] * n_docs,
        }
    )
    doc_index, latent = [], []
    for i in range(n_docs):
        chosen = rng.choice(d_sae, size=4, replace=False)
        doc_index += [i] * 4
        latent += [int(x) for x in chosen]
    acts = rng.exponential(1.0, size=len(latent)).astype(np.float32) + 0.01
    latents = pa.table(
        {
            "doc_index": pa.array(doc_index, pa.int64()),
            "latent_id": pa.array(latent, pa.int32()),
            "max_act": pa.array(acts, pa.float32()),
            "sum_act": pa.array(acts * 2, pa.float32()),
            "n_active": pa.array([1] * len(latent), pa.int32()),
            "max_char_start": pa.array([0] * len(latent), pa.int32()),
            "max_char_end": pa.array([3] * len(latent), pa.int32()),
        }
    )
    return documents, latents


def write_synthetic(
    store: Path,
    dataset: str,
    n_batches: int,
    batch_docs: int,
    seed: int = 0,
    pause: float = 0.0,
    echo: bool = False,
    spread_over: float = 0.0,
    commits: list[float] | None = None,
) -> int:
    """Write batches through the running server's ingest channel; returns docs written.

    ``pause``: seconds to sleep after each batch. ``spread_over``: seconds over which to
    spread the batches evenly (batch b starts no earlier than b * spread_over / n_batches
    seconds after the first). ``commits`` gets the ``time.monotonic()`` of each commit."""
    from saedb.server.ingest_channel import connect_if_served

    remote = connect_if_served(store)
    if remote is None:
        raise RuntimeError(f"no saedb serve holds {store}")
    rng = np.random.default_rng(seed)
    with remote:
        sae_id = remote.get_sae(None).sae_id
        dataset_id = remote.dataset_id(dataset, create=True)
        run_id = remote.start_run({"synthetic": True, "dataset": dataset})
        first = time.monotonic()
        for b in range(n_batches):
            if spread_over:
                time.sleep(max(0.0, first + b * spread_over / n_batches - time.monotonic()))
            documents, latents = synthetic_batch(rng, b * batch_docs, batch_docs)
            remote.write_batch(
                run_id=run_id,
                dataset_id=dataset_id,
                sae_id=sae_id,
                documents=documents,
                latents=latents,
            )
            if commits is not None:
                commits.append(time.monotonic())
            if echo:  # the tests read these lines to know what is committed
                print(f"committed {(b + 1) * batch_docs}", flush=True)
            if pause:
                time.sleep(pause)
        remote.finish_run(run_id, "done")
    return n_batches * batch_docs


if __name__ == "__main__":  # python tests/serve_util.py STORE DATASET N_BATCHES BATCH_DOCS
    write_synthetic(
        Path(sys.argv[1]),
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        pause=float(sys.argv[5]) if len(sys.argv) > 5 else 0.0,
        echo=True,
    )
