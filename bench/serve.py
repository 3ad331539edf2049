"""Load test of saedb serve: 16 concurrent Postgres clients run the analysis macros for 60 s
while an ingest of several thousand documents goes through the same server.

    .venv/bin/python bench/serve.py [--clients 16] [--seconds 60] [--docs 5000]
    .venv/bin/python bench/serve.py --clients 2 --seconds 5 --docs 200 --base-docs 2000  # smoke

The base store is synthetic (bench/synthetic.py: ``--base-docs`` documents in datasets d1..d4).
The ingest is synthetic too: batches of ``--batch`` documents with 4 latents each, written
through the server's ingest channel exactly as ``saedb ingest`` writes them (the reader model
would make the ingest CPU-bound on this 2-core machine and starve the clients; the write path,
the part the server owns, is the same; its documents fire latents 0..23 only, and the probed
latents are 100..163, so their answers must not change). Clients cycle through diff('d1', 'd2'),
top_documents, npmi_targets, latent_frequency and a consistency probe. Checked: zero errors;
the analyses over d1..d4 (which the ingest does not touch) give the same answer every time; in
every snapshot documents = encodings and the new documents come in whole batches, never fewer
than the client saw before; the final count is exact. Prints p50/p99 latency per query and
overall, and queries per second.

The synthetic ingest alone would finish in a few seconds, so its batches are spread evenly
over the clients' window (the last one due just before it closes): readers work against an
ingest for the whole window. The table reports what really happened: when the first and last
batch committed, relative to the window, how many committed inside it, and what share of the
window lay between the first and the last commit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import _paths  # noqa: F401 - sys.path fix, before saedb/ingest imports

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

import psycopg  # noqa: E402
from synthetic import build_bulk_store  # noqa: E402

from tests.serve_util import serve, write_synthetic  # noqa: E402

QUERIES = {
    "diff": "SELECT latent_id, n_a, n_b, q_value FROM diff('d1', 'd2') "
    "ORDER BY q_value, latent_id LIMIT 20",
    "top_documents": "SELECT doc_id, max_act FROM top_documents(%s::INTEGER, k := 5) "
    "ORDER BY max_act DESC, doc_id",
    "npmi_targets": "SELECT * FROM npmi_targets([%s]::INTEGER[], datasets := ['d1', 'd3']) "
    "ORDER BY ALL LIMIT 10",
    "latent_frequency": "SELECT dataset, latent_id, n_fired FROM latent_frequency "
    "WHERE dataset IN ('d1', 'd2') ORDER BY n_fired DESC, latent_id LIMIT 20",
}
PROBE = (
    "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM doc_encodings), "
    "(SELECT count(*) FROM documents d JOIN datasets s USING (dataset_id) "
    "WHERE s.name = 'incoming')"
)


def client(
    dsn: str, until: float, seed: int, out: dict, reference: dict, batch: int, lock: threading.Lock
) -> None:
    lat: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    last_incoming = 0
    i = seed
    try:
        con = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        with lock:
            out["errors"].append(f"connect: {exc}")
        return
    with con:
        while time.monotonic() < until:
            kind = list(QUERIES)[i % len(QUERIES)] if i % 5 else "probe"
            latent = 100 + (i * 37) % 64  # the ingest writes latents 0..23 only
            t = time.perf_counter()
            try:
                if kind == "probe":
                    docs, encs, incoming = con.execute(PROBE).fetchone()
                    if docs != encs:
                        errors.append(f"snapshot with {docs} documents but {encs} encodings")
                    if incoming % batch or incoming < last_incoming:
                        errors.append(f"incoming went {last_incoming} -> {incoming}")
                    last_incoming = incoming
                else:
                    params = [latent] if "%s" in QUERIES[kind] else None
                    rows = con.execute(QUERIES[kind], params).fetchall()
                    key = (kind, latent if params else None)
                    with lock:
                        want = reference.setdefault(key, rows)
                    if rows != want:
                        errors.append(f"{kind}({key[1]}) changed during the ingest")
            except psycopg.Error as exc:
                errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            lat[kind].append(time.perf_counter() - t)
            i += 1
    with lock:
        for k, v in lat.items():
            out["latency"][k].extend(v)
        out["errors"].extend(errors)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--docs", type=int, default=5000, help="documents ingested during the run")
    ap.add_argument("--batch", type=int, default=50, help="documents per ingest batch")
    ap.add_argument("--base-docs", type=int, default=20000)
    args = ap.parse_args()
    n_batches = args.docs // args.batch
    with tempfile.TemporaryDirectory(prefix="saedb-bench-serve-") as tmp:
        store = Path(tmp) / "bench.duckdb"
        built = build_bulk_store(store, docs=args.base_docs, per_doc=24, latents=4096)
        print(
            f"base store: {args.base_docs:,} documents, {built['rows']:,} latent rows", flush=True
        )
        with serve(store, "--max-connections", str(args.clients + 8)) as s:
            dsn = s.dsn()
            out = {"latency": defaultdict(list), "errors": []}
            reference: dict = {}
            lock = threading.Lock()
            ingest_done = {}
            commits: list[float] = []

            def ingest() -> None:
                t = time.perf_counter()
                try:
                    write_synthetic(
                        store,
                        "incoming",
                        n_batches,
                        args.batch,
                        seed=1,
                        spread_over=args.seconds,
                        commits=commits,
                    )
                    ingest_done["seconds"] = time.perf_counter() - t
                except Exception as exc:  # noqa: BLE001 - reported below
                    with lock:
                        out["errors"].append(f"ingest: {exc}")

            window_start = time.monotonic()
            until = window_start + args.seconds
            threads = [
                threading.Thread(
                    target=client, args=(dsn, until, k, out, reference, args.batch, lock)
                )
                for k in range(args.clients)
            ]
            writer = threading.Thread(target=ingest)
            started = time.perf_counter()
            for t in threads:
                t.start()
            writer.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            writer.join()
            with psycopg.connect(dsn, autocommit=True) as con:
                final = con.execute(PROBE).fetchone()
                status = con.execute(
                    "SELECT status FROM ingest_runs WHERE config->>'synthetic' = 'true'"
                ).fetchall()
    lat = out["latency"]
    everything = [x for v in lat.values() for x in v]
    print(
        f"\n{args.clients} clients for {args.seconds:.0f} s while ingesting "
        f"{n_batches * args.batch:,} documents in batches of {args.batch} (ingest took "
        f"{ingest_done.get('seconds', float('nan')):.1f} s)"
    )
    if commits:
        first, last = commits[0] - window_start, commits[-1] - window_start
        inside = sum(window_start <= c <= until for c in commits)
        covered = max(0.0, min(last, args.seconds) - max(first, 0.0)) / args.seconds
        print(
            f"ingest overlap: batches committed from {first:.1f} s to {last:.1f} s of the "
            f"{args.seconds:.0f} s window; {inside} of {n_batches} inside it; "
            f"{covered:.0%} of the window between the first and the last commit"
        )
    else:
        print("ingest overlap: no batch committed")
    print(f"{'query':<18}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}")
    for k in sorted(lat):
        print(f"{k:<18}{len(lat[k]):>7}{pct(lat[k], 50):>10.1f}{pct(lat[k], 99):>10.1f}")
    print(
        f"{'all':<18}{len(everything):>7}{pct(everything, 50):>10.1f}{pct(everything, 99):>10.1f}"
    )
    print(f"throughput: {len(everything) / elapsed:.1f} queries/s")
    expected = args.base_docs + n_batches * args.batch
    print(
        f"final documents: {final[0]:,} (expected {expected:,}), encodings {final[1]:,}, "
        f"incoming {final[2]:,}; ingest run status {status}"
    )
    print(f"errors: {len(out['errors'])}")
    for e in out["errors"][:10]:
        print("  " + e)
    ok = not out["errors"] and final[0] == expected == final[1] and status == [("done",)]
    print("RESULT: " + ("ok" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
