"""latent_counts: the per-(SAE, dataset, latent) counts that latent_frequency and diff read.

They must always equal a recomputation from doc_latents, doc_encodings and documents: after
ingesting batches (two datasets, two SAEs, documents re-encoded with the second SAE), after a
real ``kill -9`` of a writer and a resume, after a batch that rolls back, after optimize, and
after migrating a store written before the tables existed. When a program writes doc_latents
directly the counts go stale, and the analyses must notice and scan doc_latents instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import saedb
from saedb import migrations
from saedb.store import SaeRecord

D_SAE = 40


def _sae(name: str) -> SaeRecord:
    return SaeRecord(
        name=name,
        reader_model="m",
        reader_revision=None,
        hook_name="blocks.1.hook_resid_post",
        layer=1,
        architecture="topk",
        d_in=8,
        d_sae=D_SAE,
        weights_sha256=name * 8,
        path="/x",
        config={},
    )


def _batch(rng: np.random.Generator, start: int, n: int, doc_ids=None) -> tuple[pa.Table, pa.Table]:
    """n documents e<start>.. and their latent rows: a Zipf-ish latent choice, some docs with
    nothing fired, a few max_act <= 0 (diff's default threshold leaves those out)."""
    docs = pa.table(
        {
            "doc_id": pa.array(doc_ids or [None] * n, pa.int64()),
            "external_id": [f"e{i}" for i in range(start, start + n)],
            "text": [f"text {i}" for i in range(start, start + n)],
            "text_sha256": [f"h{i}" for i in range(start, start + n)],
            "n_tokens": pa.array([3] * n, pa.int32()),
            "metadata": [None] * n,
        }
    )
    index, latent, act = [], [], []
    weights = 1.0 / (np.arange(D_SAE) + 2.0)
    for i in range(n):
        k = int(rng.integers(0, 8))  # 0: nothing fired
        chosen = rng.choice(D_SAE, size=k, replace=False, p=weights / weights.sum())
        for j in chosen:
            index.append(i)
            latent.append(int(j))
            act.append(float(rng.choice([0.0, -0.5])) if rng.random() < 0.05 else rng.exponential())
    m = len(index)
    lat = pa.table(
        {
            "doc_index": pa.array(index, pa.int64()),
            "latent_id": pa.array(latent, pa.int32()),
            "max_act": pa.array(act, pa.float32()),
            "sum_act": pa.array(act, pa.float32()),
            "n_active": pa.array([1] * m, pa.int32()),
            "max_char_start": pa.array([0] * m, pa.int32()),
            "max_char_end": pa.array([4] * m, pa.int32()),
        }
    )
    return docs, lat


def recomputed(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """latent_counts as it should be (one row per key), computed with pandas."""
    lat = con.sql("SELECT doc_id, sae_id, latent_id, max_act FROM doc_latents").df()
    enc = con.sql("SELECT doc_id, sae_id FROM doc_encodings").df()
    docs = con.sql("SELECT doc_id, dataset_id FROM documents").df()
    rows = lat.merge(enc).merge(docs)
    rows["act"] = rows.max_act.astype(np.float64)
    rows["positive"] = rows.max_act > 0
    return (
        rows.groupby(["sae_id", "dataset_id", "latent_id"])
        .agg(
            n_fired=("doc_id", "size"),
            n_positive=("positive", "sum"),
            sum_max_act=("act", "sum"),
            max_max_act=("act", "max"),
        )
        .reset_index()
    )


def assert_counts_exact(con: duckdb.DuckDBPyConnection) -> None:
    want = recomputed(con)
    got = con.sql(  # a key may have several rows (one per batch until folded)
        "SELECT sae_id, dataset_id, latent_id, sum(n_fired) AS n_fired, "
        "sum(n_positive) AS n_positive, sum(sum_max_act) AS sum_max_act, "
        "CAST(max(max_max_act) AS DOUBLE) AS max_max_act FROM latent_counts "
        "GROUP BY ALL ORDER BY sae_id, dataset_id, latent_id"
    ).df()
    assert len(got) == len(want)
    for col in ("sae_id", "dataset_id", "latent_id", "n_fired", "n_positive"):
        assert got[col].tolist() == want[col].tolist(), col
    np.testing.assert_allclose(got.sum_max_act, want.sum_max_act, rtol=1e-12)
    assert got.max_max_act.tolist() == want.max_max_act.tolist()
    total = con.sql(
        "SELECT (SELECT sum(n_fired) FROM latent_counts) = (SELECT count(*) FROM doc_latents)"
    ).fetchall()[0][0]
    assert total, "the counts must add up to doc_latents, or the analyses will not use them"


def ingest(store: saedb.Store, rng: np.random.Generator) -> None:
    """Two datasets with the first SAE; d1's documents re-encoded with the second SAE."""
    s1 = store.register_sae(_sae("s1"))
    s2 = store.register_sae(_sae("s2"))
    d1, d2 = store.dataset_id("d1", create=True), store.dataset_id("d2", create=True)
    for start, dataset in [(0, d1), (30, d1), (60, d2), (90, d2), (120, d2)]:
        run = store.start_run({})
        docs, lat = _batch(rng, start, 30)
        store.write_batch(run_id=run, dataset_id=dataset, sae_id=s1, documents=docs, latents=lat)
    run = store.start_run({})
    ids = [int(i) for i in store.sql("SELECT doc_id FROM documents WHERE dataset_id = 1").doc_id]
    docs, lat = _batch(rng, 0, len(ids), doc_ids=ids)
    store.write_batch(run_id=run, dataset_id=d1, sae_id=s2, documents=docs, latents=lat)


def scan_path_diff(con: duckdb.DuckDBPyConnection, a: str, b: str, sae: int) -> pd.DataFrame:
    """diff computed by scanning doc_latents (diff_doc_sets on the two datasets' documents)."""
    return con.sql(
        f"""
        SELECT * FROM diff_doc_sets(
            (SELECT list(doc_id) FROM documents JOIN datasets USING (dataset_id)
             WHERE name = '{a}'),
            (SELECT list(doc_id) FROM documents JOIN datasets USING (dataset_id)
             WHERE name = '{b}'),
            sae := {sae})
        ORDER BY difference DESC, latent_id
        """
    ).df()


def scan_path_frequency(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    lat = con.sql("SELECT doc_id, sae_id, latent_id, max_act FROM doc_latents").df()
    enc = con.sql("SELECT doc_id, sae_id FROM doc_encodings").df()
    docs = con.sql("SELECT doc_id, dataset_id FROM documents").df()
    rows = lat.merge(enc).merge(docs)
    rows["act"] = rows.max_act.astype(np.float64)
    want = (
        rows.groupby(["sae_id", "dataset_id", "latent_id"])
        .agg(n_fired=("doc_id", "size"), mean_max_act=("act", "mean"), max_max_act=("act", "max"))
        .reset_index()
    )
    sizes = enc.merge(docs).groupby(["sae_id", "dataset_id"]).size().rename("n_docs")
    return want.merge(sizes.reset_index())


def assert_frequency_right(con: duckdb.DuckDBPyConnection) -> None:
    got = con.sql("SELECT * FROM latent_frequency ORDER BY sae_id, dataset_id, latent_id").df()
    want = scan_path_frequency(con)
    for col in ("sae_id", "dataset_id", "latent_id", "n_fired", "n_docs"):
        assert got[col].tolist() == want[col].tolist(), col
    np.testing.assert_allclose(got.mean_max_act, want.mean_max_act, rtol=1e-12)
    np.testing.assert_allclose(got.max_max_act, want.max_max_act, rtol=0)
    np.testing.assert_allclose(got.frequency, want.n_fired / want.n_docs, rtol=1e-15)


@pytest.fixture
def store(tmp_path: Path):
    s = saedb.open(tmp_path / "s.duckdb")
    yield s
    s.close()


def test_counts_after_ingest_and_what_reads_them(store: saedb.Store) -> None:
    ingest(store, np.random.default_rng(0))
    assert_counts_exact(store.con)
    assert_frequency_right(store.con)
    con = store.con
    fast = con.sql("SELECT * FROM diff('d1', 'd2', sae := 1)").df()
    assert len(fast) > 10
    pd.testing.assert_frame_equal(fast, scan_path_diff(con, "d1", "d2", 1))
    same = con.sql("SELECT * FROM diff('d1', 'd1', sae := 1)").df()
    pd.testing.assert_frame_equal(same, scan_path_diff(con, "d1", "d1", 1))
    # a threshold other than 0 scans; 0.0 given explicitly reads the counts
    explicit = con.sql("SELECT * FROM diff('d2', 'd1', sae := 1, threshold := 0.0)").df()
    pd.testing.assert_frame_equal(explicit, scan_path_diff(con, "d2", "d1", 1))
    above = con.sql("SELECT * FROM diff('d2', 'd1', sae := 1, threshold := 0.5)").df()
    assert above.n_a.sum() < explicit.n_a.sum()
    # the second SAE encoded only d1: diff against d2 is an error on either path
    with pytest.raises(duckdb.Error, match="dataset d2 has no documents encoded with SAE 2"):
        con.sql("SELECT * FROM diff('d1', 'd2', sae := 2)").fetchall()
    with pytest.raises(duckdb.Error, match="there is no dataset named nope"):
        con.sql("SELECT * FROM diff('d1', 'nope')").fetchall()

    # diff really reads latent_counts: change a count and the result follows
    latent = int(fast.latent_id[0])
    con.execute("INSERT INTO latent_counts VALUES (1, 1, ?, 0, 1, 0.0, 0.0)", [latent])
    bumped = con.sql("SELECT * FROM diff('d1', 'd2', sae := 1)").df().set_index("latent_id")
    assert bumped.n_a[latent] == fast.set_index("latent_id").n_a[latent] + 1
    store.refresh_latent_counts()
    assert_counts_exact(con)


def test_stale_counts_are_noticed(store: saedb.Store) -> None:
    """A program that writes doc_latents directly: the analyses scan until a refresh."""
    ingest(store, np.random.default_rng(1))
    con = store.con
    con.execute("DELETE FROM doc_latents WHERE doc_id = 2 AND sae_id = 1")
    con.execute("DELETE FROM doc_latents WHERE doc_id = 3 AND sae_id = 1 AND latent_id = 0")
    assert_frequency_right(con)
    pd.testing.assert_frame_equal(
        con.sql("SELECT * FROM diff('d1', 'd2', sae := 1)").df(), scan_path_diff(con, "d1", "d2", 1)
    )
    store.refresh_latent_counts()
    assert_counts_exact(con)
    assert_frequency_right(con)


def test_rolled_back_batch_leaves_counts_alone(store: saedb.Store) -> None:
    ingest(store, np.random.default_rng(2))
    before = store.sql("SELECT * FROM latent_counts ORDER BY ALL")
    docs, lat = _batch(np.random.default_rng(3), 0, 5, doc_ids=[1, 2, 3, 4, 5])
    with pytest.raises(duckdb.Error):  # already encoded with SAE 1: doc_encodings' key
        store.write_batch(run_id=1, dataset_id=1, sae_id=1, documents=docs, latents=lat)
    pd.testing.assert_frame_equal(store.sql("SELECT * FROM latent_counts ORDER BY ALL"), before)
    assert_counts_exact(store.con)


def test_compaction_folds_rows_and_keeps_counts_exact(
    store: saedb.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saedb.store, "COMPACT_LATENT_COUNTS_ROWS", 100)
    ingest(store, np.random.default_rng(6))
    n_rows, n_keys = store.con.sql(
        "SELECT count(*), count(DISTINCT (sae_id, dataset_id, latent_id)) FROM latent_counts"
    ).fetchall()[0]
    assert n_rows < 150 + 40, "compacted after passing 100 rows"
    assert n_rows >= n_keys
    assert_counts_exact(store.con)
    assert_frequency_right(store.con)


def test_optimize_keeps_counts_exact(store: saedb.Store) -> None:
    ingest(store, np.random.default_rng(4))
    store.con.execute("DELETE FROM latent_counts")  # even counts gone wrong come back
    store.optimize()
    assert_counts_exact(store.con)
    assert_frequency_right(store.con)


def test_migration_backfills_an_older_store(tmp_path: Path) -> None:
    older = tmp_path / "schema"
    older.mkdir()
    for m in migrations.discover():
        if m.version < 7:
            shutil.copy(str(m.source), older / f"{m.name}.sql")
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con, older)
        assert "latent_counts" not in {r[0] for r in con.sql("SHOW TABLES").fetchall()}
        con.execute(
            """
            INSERT INTO datasets (dataset_id, name) VALUES (1, 'a'), (2, 'b');
            INSERT INTO documents (doc_id, dataset_id, external_id, text, text_sha256, n_tokens,
                                   run_id)
            SELECT i, 1 + i % 2, 'e' || i, 't', 'h', 1, 1 FROM range(1, 43) AS r(i);
            INSERT INTO doc_encodings SELECT i, 1, 1, 0 FROM range(1, 43) AS r(i);
            INSERT INTO doc_latents
            SELECT i, 1, (i * j) % 11, ((i + j) % 5) - 0.5, 1.0, 1, 0, 1
            FROM range(1, 41) AS r(i), range(1, 4) AS s(j);
            """
        )
    with saedb.open(path) as store:
        assert migrations.current_version(store.con) >= 7
        assert store.sql("SELECT count(*) AS n FROM latent_counts").n[0] > 0
        assert_counts_exact(store.con)
        assert_frequency_right(store.con)


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    import saedb
    from test_latent_counts import _batch, _sae

    store = saedb.open(sys.argv[1])
    sae = store.register_sae(_sae("s1"))
    dataset = store.dataset_id("d1", create=True)
    run = store.start_run({})
    rng = np.random.default_rng(5)
    done = store.sql("SELECT count(*) AS n FROM documents").n[0]
    for start in range(int(done), 10_000_000, 50):
        docs, lat = _batch(rng, start, 50)
        store.write_batch(run_id=run, dataset_id=dataset, sae_id=sae, documents=docs, latents=lat)
        print(start + 50, flush=True)
        if len(sys.argv) > 3 and start + 50 >= int(sys.argv[3]):
            break
    store.close()
    """
)


def test_kill_9_mid_write_then_resume(tmp_path: Path) -> None:
    path = tmp_path / "k.duckdb"
    here = str(Path(__file__).resolve().parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), here], stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) >= 1000:  # 20 batches committed, the writer is mid-stream
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with saedb.open(path) as store:
        n_docs = store.sql("SELECT count(*) AS n FROM documents").n[0]
        assert 1000 <= n_docs < 10_000_000
        assert_counts_exact(store.con)
    resumed = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), here, str(n_docs + 200)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    with saedb.open(path) as store:
        assert store.sql("SELECT count(*) AS n FROM documents").n[0] == n_docs + 200
        assert_counts_exact(store.con)
        assert_frequency_right(store.con)


def test_cooccurrence_refresh_restores_memory_limit(store: saedb.Store) -> None:
    """refresh_cooccurrence bounds DuckDB's memory while it writes pairs, then puts the
    limit back; the block width changes nothing in the result."""
    from saedb.cooccurrence import refresh_cooccurrence

    ingest(store, np.random.default_rng(8))
    before = store.con.sql("SELECT current_setting('memory_limit')").fetchall()  # default
    whole = refresh_cooccurrence(store, sae=1, min_count=1, block_latents=64, progress=False)
    pairs = store.sql("SELECT * FROM latent_cooccurrence ORDER BY latent_i, latent_j")
    blocked = refresh_cooccurrence(store, sae=1, min_count=1, block_latents=1, progress=False)
    assert blocked["n_blocks"] > 16 and blocked["n_pairs"] == whole["n_pairs"] > 100
    pd.testing.assert_frame_equal(
        store.sql("SELECT * FROM latent_cooccurrence ORDER BY latent_i, latent_j").drop(
            columns="computed_at"
        ),
        pairs.drop(columns="computed_at"),
    )
    assert store.con.sql("SELECT current_setting('memory_limit')").fetchall() == before
    store.con.execute("SET memory_limit = '3GiB'")
    refresh_cooccurrence(store, sae=1, min_count=1, progress=False)
    assert store.con.sql("SELECT current_setting('memory_limit')").fetchall() == [("3.0 GiB",)]
