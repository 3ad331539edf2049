"""Targeted clustering (saedb.cluster) on a synthetic store with planted structure.

Two datasets whose documents fire disjoint sets of latents must come out as two clusters,
exactly; documents where none of the chosen latents fired go to cluster -1; the run and its
assignments are stored; the descriptions name the planted latents. No reader model is needed:
the store is filled with pyarrow, as in tests/test_sql_analyses.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

import saedb
from saedb import catalog, migrations
from saedb.cluster import NO_LATENT, cluster
from saedb.errors import ConfigError, StoreError
from tests.test_sql_analyses import insert

LEFT, RIGHT = (1, 2, 3), (7, 8, 9)
NOISE = 20  # fires everywhere, never chosen
N_PER_SIDE, N_SILENT = 40, 6


def planted_data(seed: int = 3) -> dict[str, pd.DataFrame]:
    """Datasets 'left' and 'right': each document fires a random non-empty subset of its side's
    latents (plus NOISE); the last N_SILENT documents of 'right' fire only NOISE."""
    rng = np.random.default_rng(seed)
    docs, latents = [], []
    for doc_id in range(1, 2 * N_PER_SIDE + N_SILENT + 1):
        left = doc_id <= N_PER_SIDE
        text = f"document {doc_id} of the {'left' if left else 'right'} side, café ✓"
        docs.append((doc_id, 1 if left else 2, f"ext-{doc_id}", text))
        fired = [NOISE]
        if doc_id <= 2 * N_PER_SIDE:
            side = LEFT if left else RIGHT
            fired += [x for x in side if rng.random() < 0.6] or [side[doc_id % 3]]
        for latent in fired:
            act = 1.0 + latent / 10
            latents.append((doc_id, 1, latent, act, act, 1, 0, 8))
    documents = pd.DataFrame(docs, columns=["doc_id", "dataset_id", "external_id", "text"])
    documents["metadata"] = [json.dumps({"parity": "odd" if i % 2 else "even"}) for i, *_ in docs]
    documents["text_sha256"] = "0" * 64
    documents["n_tokens"] = np.int32(5)
    documents["run_id"] = np.int32(1)
    documents["dataset_id"] = documents.dataset_id.astype(np.int32)
    doc_latents = pd.DataFrame(
        latents,
        columns=[
            "doc_id",
            "sae_id",
            "latent_id",
            "max_act",
            "sum_act",
            "n_active",
            "max_char_start",
            "max_char_end",
        ],
    ).astype(
        {
            "sae_id": np.int32,
            "latent_id": np.int32,
            "max_act": np.float32,
            "sum_act": np.float32,
            "n_active": np.int32,
            "max_char_start": np.int32,
            "max_char_end": np.int32,
        }
    )
    n_fired = doc_latents.groupby("doc_id").size()
    doc_encodings = pd.DataFrame(
        {
            "doc_id": documents.doc_id,
            "sae_id": np.int32(1),
            "run_id": np.int32(1),
            "n_latents": documents.doc_id.map(n_fired).astype(np.int32),
        }
    )
    datasets = pd.DataFrame({"dataset_id": np.array([1, 2], np.int32), "name": ["left", "right"]})
    return {
        "datasets": datasets,
        "documents": documents,
        "doc_encodings": doc_encodings,
        "doc_latents": doc_latents,
    }


def build_planted_store(path: Path) -> Path:
    """A real store file (schema, catalog) holding planted_data(), default SAE 1."""
    data = planted_data()
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        for table in ("datasets", "documents", "doc_encodings", "doc_latents"):
            insert(con, table, data[table])
        con.execute(
            "INSERT INTO saes (sae_id, name, reader_model, hook_name, layer, architecture, d_in, "
            "d_sae, weights_sha256, path, config) VALUES (1, 'planted', 'none', "
            "'blocks.0.hook_resid_post', 0, 'topk', 4, 32, '', '', '{}')"
        )
        con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
    return path


@pytest.fixture
def store(tmp_path):
    with saedb.open(build_planted_store(tmp_path / "planted.duckdb")) as s:
        yield s


def truth() -> np.ndarray:
    """The planted side of every document, -1 for the silent ones."""
    return np.array([0] * N_PER_SIDE + [1] * N_PER_SIDE + [NO_LATENT] * N_SILENT)


def test_planted_groups_are_separated_exactly(store) -> None:
    result = cluster(store, [*LEFT, *RIGHT], k=2)
    labels = np.array(result.assignments.column("cluster").to_pylist())
    assert result.assignments.column("doc_id").to_pylist() == list(range(1, len(truth()) + 1))
    encoded = truth() != NO_LATENT
    assert adjusted_rand_score(truth()[encoded], labels[encoded]) == 1.0
    assert result.n_clusters == 2


def test_documents_with_no_chosen_latent_go_to_cluster_minus_one(store) -> None:
    result = cluster(store, [*LEFT, *RIGHT], k=2)
    labels = np.array(result.assignments.column("cluster").to_pylist())
    assert (labels[truth() == NO_LATENT] == NO_LATENT).all()
    assert (labels[truth() != NO_LATENT] >= 0).all()
    summary = result.summary().to_pylist()
    assert summary[-1]["cluster"] == NO_LATENT and summary[-1]["n_docs"] == N_SILENT
    assert summary[-1]["top_latents"] == []
    assert NO_LATENT not in result.descriptions.column("cluster").to_pylist()


def test_assignments_and_run_are_stored(store) -> None:
    first = cluster(store, [*LEFT, *RIGHT], k=2, seed=4)
    second = cluster(store, list(LEFT), k=3, datasets=["left"])
    assert (first.cluster_run_id, second.cluster_run_id) == (1, 2)
    runs = store.arrow("SELECT * FROM cluster_runs ORDER BY cluster_run_id").to_pydict()
    assert runs["sae_id"] == [1, 1]
    assert runs["n_clusters"] == [first.n_clusters, second.n_clusters]
    assert first.n_clusters == 2
    config = json.loads(runs["config"][0])
    assert config["latents"] == [*LEFT, *RIGHT] and config["k"] == 2 and config["seed"] == 4
    assert config["n_no_latent"] == N_SILENT
    assert json.loads(runs["config"][1])["datasets"] == ["left"]
    stored = store.arrow(
        "SELECT doc_id, cluster FROM cluster_assignments WHERE cluster_run_id = 1 ORDER BY doc_id"
    )
    assert stored.equals(first.assignments.select(["doc_id", "cluster"]))
    only_left = store.arrow(
        "SELECT count(*) AS n FROM cluster_assignments WHERE cluster_run_id = 2"
    )
    assert only_left.column("n")[0].as_py() == N_PER_SIDE


def test_descriptions_name_the_planted_latents(store) -> None:
    result = cluster(store, [*LEFT, *RIGHT], k=2)
    summary = {r["cluster"]: r for r in result.summary(top=3).to_pylist()}
    assert {frozenset(summary[c]["top_latents"]) for c in (0, 1)} == {
        frozenset(LEFT),
        frozenset(RIGHT),
    }
    desc = result.descriptions.to_pandas()
    row = desc[(desc.cluster == 0) & (desc["rank"] == 1)].iloc[0]
    assert row.freq_out == 0.0 and row.difference == row.freq_in > 0
    assert len(desc) == 2 * 6  # every latent, for every cluster


def test_more_clusters_than_patterns_and_same_result_for_same_seed(store) -> None:
    one = cluster(store, [1], k=3)  # a single pattern: one cluster, the rest -1
    assert one.n_clusters == 1
    a = cluster(store, [*LEFT, *RIGHT], k=3, seed=1)
    b = cluster(store, [*LEFT, *RIGHT], k=3, seed=1)
    assert a.assignments.column("cluster").equals(b.assignments.column("cluster"))


def test_bad_arguments(store, tmp_path) -> None:
    with pytest.raises(ConfigError, match="no latents"):
        cluster(store, [])
    with pytest.raises(ConfigError, match="non-negative integers"):
        cluster(store, [1, -2])
    with pytest.raises(ConfigError, match="at least 2"):
        cluster(store, [1], k=1)
    with pytest.raises(StoreError, match="no dataset named nowhere"):
        cluster(store, [1], datasets=["nowhere"])
    with pytest.raises(StoreError, match="nothing to cluster"):
        cluster(store, [1], sae=9)
    store.close()
    with saedb.open(store.path, read_only=True) as ro, pytest.raises(StoreError, match="read-only"):
        cluster(ro, [1])


def test_nearest_neighbour_graph_for_many_patterns_separates_too(store, monkeypatch) -> None:
    import saedb.cluster

    monkeypatch.setattr(saedb.cluster, "_EXACT_PATTERNS", 2)  # force the k-NN graph
    result = cluster(store, [*LEFT, *RIGHT], k=2)
    labels = np.array(result.assignments.column("cluster").to_pylist())
    encoded = truth() != NO_LATENT
    assert adjusted_rand_score(truth()[encoded], labels[encoded]) == 1.0


def test_store_api_search_diff_cluster(store) -> None:
    """The Python conveniences on Store run the same SQL objects as the CLI."""
    weights = {LEFT[0]: 1.0, LEFT[1]: 0.5}
    hits = store.search(weights, k=3)
    assert len(hits) == 3 and hits.score.is_monotonic_decreasing
    assert set(hits.dataset) == {"left"}
    same = store.search(f"{LEFT[0]},{LEFT[1]}:0.5", k=3)
    assert hits.doc_id.tolist() == same.doc_id.tolist()
    d = store.diff("left", "right")
    top = d.sort_values("difference", ascending=False).latent_id.iloc[0]
    assert top in LEFT and {"freq_a", "freq_b", "q_value"} <= set(d.columns)
    res = store.cluster(LEFT + RIGHT, k=2)
    assert res.n_clusters == 2
