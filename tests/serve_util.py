"""Helpers for the saedb serve tests and bench/serve.py: start a real server process on
127.0.0.1, and synthetic batches written through the ingest channel."""

from __future__ import annotations

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
    proc: subprocess.Popen
    port: int
    store: Path

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
    store: Path, *args: str, password: str = PASSWORD, timeout: float = 90.0
) -> Iterator[Served]:
    """Run ``saedb serve STORE --port 0 ARGS`` until the block ends (then SIGTERM it)."""
    env = dict(os.environ, SAEDB_SERVE_PASSWORD=password, PYTHONUNBUFFERED="1")
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
        # Keep reading what the server prints, so that it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        yield Served(proc, int(m.group(1)), store)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
) -> int:
    """Write batches through the running server's ingest channel; returns docs written."""
    from saedb.server.ingest_channel import connect_if_served

    remote = connect_if_served(store)
    if remote is None:
        raise RuntimeError(f"no saedb serve holds {store}")
    rng = np.random.default_rng(seed)
    with remote:
        sae_id = remote.get_sae(None).sae_id
        dataset_id = remote.dataset_id(dataset, create=True)
        run_id = remote.start_run({"synthetic": True, "dataset": dataset})
        for b in range(n_batches):
            documents, latents = synthetic_batch(rng, b * batch_docs, batch_docs)
            remote.write_batch(
                run_id=run_id,
                dataset_id=dataset_id,
                sae_id=sae_id,
                documents=documents,
                latents=latents,
            )
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
