"""A real `kill -9` in the middle of `saedb ingest`, then the same command again: every
document ends up stored exactly once, with its latents exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import saedb
from tests.conftest import fortunes, write_jsonl


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "saedb.cli", *args]


def test_kill_9_mid_ingest_then_resume_gives_exact_counts(tmp_path, store_path):
    rows = fortunes("people", 500)
    src = write_jsonl(tmp_path / "people.jsonl", rows)
    cmd = _cli("ingest", str(store_path), str(src), "--dataset", "people", "--commit-docs", "5")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = bytearray()
    committed = threading.Event()

    def watch() -> None:
        while chunk := proc.stderr.read1(4096):  # type: ignore[union-attr]
            seen.extend(chunk)
            docs = [int(x) for x in re.findall(rb"docs=(\d+)", bytes(seen))]
            if docs and max(docs) >= 20:
                committed.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    assert committed.wait(timeout=300), seen.decode(errors="replace")[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with saedb.open(store_path) as store:
        partial = store.sql("SELECT count(*) n FROM documents").n[0]
        status = store.sql("SELECT status FROM ingest_runs").status.tolist()
    assert 20 <= partial < len(rows), "the kill should land mid-ingest"
    assert status == ["interrupted"]

    done = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert summary, done.stdout
    import json

    s = json.loads(summary[-1])
    assert s["documents"] == len(rows) - partial and s["skipped_existing"] == partial

    with saedb.open(store_path) as store:
        counts = store.sql(
            "SELECT (SELECT count(*) FROM documents) docs,"
            " (SELECT count(DISTINCT external_id) FROM documents) ids,"
            " (SELECT count(*) FROM doc_encodings) enc,"
            " (SELECT count(*) FROM (SELECT doc_id, latent_id FROM doc_latents"
            "   GROUP BY ALL HAVING count(*) > 1)) dup_latents,"
            " (SELECT count(*) FROM doc_latents WHERE doc_id NOT IN"
            "   (SELECT doc_id FROM documents)) orphans"
        )
        assert counts.values.tolist() == [[500, 500, 500, 0, 0]]
        # n_latents recorded per document equals the latent rows really stored.
        mismatch = store.sql(
            "SELECT count(*) n FROM doc_encodings e LEFT JOIN (SELECT doc_id, count(*) c "
            "FROM doc_latents GROUP BY doc_id) l USING (doc_id) "
            "WHERE e.n_latents <> coalesce(l.c, 0)"
        )
        assert mismatch.n[0] == 0
        runs = store.sql("SELECT status FROM ingest_runs ORDER BY run_id").status.tolist()
        assert runs == ["interrupted", "done"]
