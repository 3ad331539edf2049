"""Ingestion while serving: ``saedb ingest`` goes through ``saedb serve``, readers keep
working, and killing either process loses no committed document and leaves no half batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg

from saedb.server.ingest_channel import open_for_ingest, serve_file
from saedb.store import Store
from tests.conftest import fortunes, write_jsonl
from tests.export_store import build_store
from tests.serve_util import ROOT, serve

BATCH = 20


def _consistent(con, dataset: str) -> int:
    """Documents of ``dataset``: whole batches only, each with its encodings and latents."""
    n_docs, n_enc, n_lat = con.execute(
        """
        SELECT count(DISTINCT d.doc_id), count(DISTINCT e.doc_id), count(l.doc_id)
        FROM documents d JOIN datasets s USING (dataset_id)
        LEFT JOIN doc_encodings e ON e.doc_id = d.doc_id
        LEFT JOIN doc_latents l ON l.doc_id = d.doc_id
        WHERE s.name = %s
        """.replace("%s", "?" if isinstance(con, duckdb.DuckDBPyConnection) else "%s"),
        [dataset],
    ).fetchall()[0]
    assert n_docs % BATCH == 0, f"{n_docs} documents: a partial batch"
    assert n_enc == n_docs and n_lat == 4 * n_docs
    return n_docs


def _writer(store: Path, n_batches: int, pause: float) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "tests/serve_util.py",
            str(store),
            "synth",
            str(n_batches),
            str(BATCH),
            str(pause),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_committed(proc: subprocess.Popen, at_least: int) -> int:
    committed = 0
    while committed < at_least:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        committed = int(line.split()[1])
    return committed


def test_saedb_ingest_goes_through_the_server(store_path, tmp_path):
    src = write_jsonl(tmp_path / "people.jsonl", fortunes("people", 12))
    with serve(store_path) as s, psycopg.connect(s.dsn(), autocommit=True) as con:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "saedb.cli",
                "ingest",
                str(store_path),
                str(src),
                "--dataset",
                "people",
                "--commit-docs",
                "4",
                "-q",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = set()
        while proc.poll() is None:  # readers keep working, and never see half a batch
            n = con.execute("SELECT count(*) FROM documents").fetchone()[0]
            assert n % 4 == 0
            seen.add(n)
            time.sleep(0.2)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1])["documents"] == 12
        assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 12
        assert con.execute("SELECT count(*) FROM doc_encodings").fetchone()[0] == 12
        assert con.execute("SELECT status FROM ingest_runs").fetchall() == [("done",)]
        assert con.execute("SELECT count(*) FROM latent_frequency").fetchone()[0] > 0
    # the server is gone: the file holds everything
    with duckdb.connect(str(store_path), read_only=True) as ref:
        assert ref.execute("SELECT count(*) FROM documents").fetchall()[0][0] == 12
    assert max(seen) <= 12


def test_killed_ingester_leaves_whole_batches(tmp_path):
    store = build_store(tmp_path / "store.duckdb")
    with serve(store) as s:
        writer = _writer(store, 400, 0.02)
        committed = _wait_committed(writer, 5 * BATCH)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        with psycopg.connect(s.dsn(), autocommit=True) as con:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the server notices the closed connection
                status = con.execute(
                    "SELECT status FROM ingest_runs WHERE config->>'synthetic' = 'true'"
                ).fetchall()
                if status == [("interrupted",)]:
                    break
                time.sleep(0.2)
            assert status == [("interrupted",)]
            n = _consistent(con, "synth")
            assert committed <= n < 400 * BATCH


def test_killed_server_loses_no_committed_document(tmp_path):
    store = build_store(tmp_path / "store.duckdb")
    with serve(store) as s:
        writer = _writer(store, 400, 0.02)
        committed = _wait_committed(writer, 5 * BATCH)
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait()
        _, err = writer.communicate(timeout=60)
        assert writer.returncode != 0
        assert "run the same saedb ingest again" in err
    with duckdb.connect(str(store), read_only=True) as con:
        n = _consistent(con, "synth")
    assert committed <= n < 400 * BATCH


def test_stale_serve_file_falls_back_to_direct_ingest(store_path, tmp_path):
    """A STORE.serve.json left by a killed server: its pid is gone, and its port now belongs
    to something that accepts and never answers. saedb ingest says so and ingests directly
    (it used to wait on that port for ever)."""
    src = write_jsonl(tmp_path / "people.jsonl", fortunes("people", 4))
    squatter = socket.create_server(("127.0.0.1", 0))  # listens, never accepts or answers
    gone = subprocess.Popen(["true"])
    gone.wait()
    info = {
        "pid": gone.pid,
        "host": "127.0.0.1",
        "port": 1,
        "ingest_port": squatter.getsockname()[1],
        "token": "0" * 48,
    }
    serve_file(store_path).write_text(json.dumps(info))
    try:
        out = subprocess.run(
            [sys.executable, "-m", "saedb.cli", "ingest", str(store_path), str(src)]
            + ["--dataset", "people", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert f"(pid {gone.pid}) is not running" in out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["documents"] == 4
        assert not serve_file(store_path).exists()  # the stale file is cleaned up

        # a live pid (this one) whose port does not answer as saedb serve: not trusted either
        serve_file(store_path).write_text(json.dumps(dict(info, pid=os.getpid())))
        heard = []
        started = time.monotonic()
        with open_for_ingest(store_path, notify=heard.append) as store:
            assert isinstance(store, Store)
            assert store.sql("SELECT count(*) AS n FROM documents")["n"][0] == 4
        assert time.monotonic() - started < 30
        assert "does not answer as that saedb serve" in heard[0]
        assert serve_file(store_path).exists()  # a live pid's file is left alone
    finally:
        squatter.close()
        serve_file(store_path).unlink(missing_ok=True)
