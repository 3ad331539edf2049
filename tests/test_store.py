"""The store: batches commit whole or not at all, SAE records, runs, read-only opens."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

import saedb
from saedb.errors import ConfigError, StoreError
from saedb.store import SaeRecord


def _sae(name="s1", sha="a" * 64) -> SaeRecord:
    return SaeRecord(
        name=name,
        reader_model="m",
        reader_revision="r",
        hook_name="blocks.1.hook_resid_post",
        layer=1,
        architecture="topk",
        d_in=8,
        d_sae=16,
        weights_sha256=sha,
        path="/x",
        config={"reader": "/m"},
    )


def _docs(n, start=0, doc_ids=None):
    return pa.table(
        {
            "doc_id": pa.array(doc_ids or [None] * n, pa.int64()),
            "external_id": [f"e{i}" for i in range(start, start + n)],
            "text": [f"text {i}" for i in range(start, start + n)],
            "text_sha256": [f"h{i}" for i in range(start, start + n)],
            "n_tokens": pa.array([3] * n, pa.int32()),
            "metadata": [None] * n,
        }
    )


def _lat(doc_index, latent_id):
    n = len(doc_index)
    return pa.table(
        {
            "doc_index": pa.array(doc_index, pa.int64()),
            "latent_id": pa.array(latent_id, pa.int32()),
            "max_act": pa.array([1.0] * n, pa.float32()),
            "sum_act": pa.array([2.0] * n, pa.float32()),
            "n_active": pa.array([2] * n, pa.int32()),
            "max_char_start": pa.array([0] * n, pa.int32()),
            "max_char_end": pa.array([4] * n, pa.int32()),
        }
    )


@pytest.fixture
def store(tmp_path):
    s = saedb.open(tmp_path / "s.duckdb")
    yield s
    s.close()


def test_write_batch_assigns_ids_and_counts(store):
    sae_id = store.register_sae(_sae())
    ds = store.dataset_id("d", create=True)
    run = store.start_run({"x": 1})
    ids = store.write_batch(
        run_id=run,
        dataset_id=ds,
        sae_id=sae_id,
        documents=_docs(3),
        latents=_lat([0, 0, 2], [5, 7, 5]),
    )
    assert ids == [1, 2, 3]
    assert store.sql("SELECT count(*) n FROM documents").n[0] == 3
    enc = store.sql("SELECT doc_id, n_latents FROM doc_encodings ORDER BY doc_id")
    assert enc.n_latents.tolist() == [2, 0, 1]  # doc 2 encoded, nothing fired
    lat = store.sql("SELECT doc_id, latent_id FROM doc_latents ORDER BY doc_id, latent_id")
    assert lat.values.tolist() == [[1, 5], [1, 7], [3, 5]]
    ids2 = store.write_batch(
        run_id=run, dataset_id=ds, sae_id=sae_id, documents=_docs(2, 3), latents=_lat([1], [1])
    )
    assert ids2 == [4, 5]
    assert store.sql("SELECT n_docs, n_tokens FROM ingest_runs").values.tolist() == [[5, 15]]
    known = store.known_documents(ds, ["e0", "e4", "nope"], sae_id)
    assert known == {"e0": (1, True, "h0"), "e4": (5, True, "h4")}


def test_failed_batch_leaves_nothing_behind(store):
    sae_id = store.register_sae(_sae())
    ds = store.dataset_id("d", create=True)
    run = store.start_run({})
    store.write_batch(
        run_id=run, dataset_id=ds, sae_id=sae_id, documents=_docs(2), latents=_lat([0], [1])
    )
    # A duplicate external id violates UNIQUE (dataset_id, external_id) mid-transaction.
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        store.write_batch(
            run_id=run,
            dataset_id=ds,
            sae_id=sae_id,
            documents=_docs(3),
            latents=_lat([0, 2], [1, 1]),
        )
    counts = store.sql(
        "SELECT (SELECT count(*) FROM documents) d, (SELECT count(*) FROM doc_latents) l, "
        "(SELECT count(*) FROM doc_encodings) e, (SELECT n_docs FROM ingest_runs) r"
    )
    assert counts.values.tolist() == [[2, 1, 2, 2]]


def test_second_sae_reuses_documents(store):
    s1 = store.register_sae(_sae())
    s2 = store.register_sae(_sae("s2", "b" * 64))
    ds = store.dataset_id("d", create=True)
    run = store.start_run({})
    store.write_batch(
        run_id=run, dataset_id=ds, sae_id=s1, documents=_docs(2), latents=_lat([0], [1])
    )
    assert store.known_documents(ds, ["e0"], s2) == {"e0": (1, False, "h0")}
    store.write_batch(
        run_id=run,
        dataset_id=ds,
        sae_id=s2,
        documents=_docs(2, doc_ids=[1, 2]),
        latents=_lat([1], [9]),
    )
    assert store.sql("SELECT count(*) n FROM documents").n[0] == 2
    assert store.sql("SELECT count(*) n FROM doc_encodings").n[0] == 4


def test_sae_registration_is_idempotent_and_refuses_other_weights(store):
    a = store.register_sae(_sae())
    assert store.register_sae(_sae()) == a
    with pytest.raises(StoreError, match="other weights"):
        store.register_sae(_sae(sha="c" * 64))
    assert store.get_sae().name == "s1"  # first SAE becomes the default
    assert store.get_sae("s1").config == {"reader": "/m"}
    with pytest.raises(ConfigError, match="SAEs in this store: s1"):
        store.get_sae("nope")


def test_unknown_dataset_lists_known(store):
    store.dataset_id("alpha", create=True)
    with pytest.raises(ConfigError, match="alpha"):
        store.dataset_id("beta")


def test_running_runs_become_interrupted_on_reopen(tmp_path):
    path = tmp_path / "s.duckdb"
    with saedb.open(path) as s:
        run = s.start_run({})
    with saedb.open(path) as s:
        assert (
            s.sql("SELECT status FROM ingest_runs WHERE run_id = ?", [run]).status[0]
            == "interrupted"
        )


def test_read_only_open(tmp_path):
    with pytest.raises(StoreError, match="saedb init"):
        saedb.open(tmp_path / "missing.duckdb", read_only=True)
    path = tmp_path / "s.duckdb"
    saedb.open(path).close()
    with saedb.open(path, read_only=True) as s:
        assert s.sql("SELECT count(*) n FROM datasets").n[0] == 0
        with pytest.raises(StoreError, match="read-only"):
            s.sql("INSERT INTO settings VALUES ('a', 'b')")


def test_optimize_keeps_every_row(store):
    sae_id = store.register_sae(_sae())
    ds = store.dataset_id("d", create=True)
    run = store.start_run({})
    store.write_batch(
        run_id=run,
        dataset_id=ds,
        sae_id=sae_id,
        documents=_docs(3),
        latents=_lat([0, 1, 2, 2], [9, 3, 3, 1]),
    )
    before = store.sql("SELECT * FROM doc_latents ORDER BY doc_id, latent_id")
    store.optimize()
    after = store.sql("SELECT * FROM doc_latents ORDER BY doc_id, latent_id")
    assert before.equals(after)
    assert store.sql("SELECT latent_id FROM doc_latents").latent_id.tolist() == [1, 3, 3, 9]


def test_store_file_opens_in_plain_duckdb(tmp_path):
    path = tmp_path / "s.duckdb"
    saedb.open(path).close()
    code = (
        f"import duckdb; c = duckdb.connect({str(path)!r}, read_only=True); "
        "print(c.execute('SELECT count(*) FROM latent_frequency').fetchone()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0"


def test_read_only_open_upgrades_an_older_store_first(tmp_path):
    import duckdb

    from saedb import migrations

    old_schema = tmp_path / "schema-v1"
    old_schema.mkdir()
    first = min(migrations.discover(), key=lambda m: m.version)
    (old_schema / f"{first.name}.sql").write_text(first.source.read_text())
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        assert migrations.migrate(con, old_schema) == [first.name]
    with saedb.open(path, read_only=True) as s:
        assert migrations.current_version(s.con) == migrations.latest_version()
        assert s.sql("SELECT count(*) n FROM latent_frequency").n[0] == 0
