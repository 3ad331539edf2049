"""retrieve and doc_vectors checked against plain numpy/pandas on random sparse data.

The store is tests/test_sql_analyses.py's random data; the hypothesis tests build tiny stores
with ties in score, a latent that never fires, one that fires everywhere and one document.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sql_analyses import DATASETS, insert, make_data, mark_reference

from saedb import catalog, migrations


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return make_data(seed=19)


@pytest.fixture(scope="module")
def con(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, pd.DataFrame]
) -> Iterator[duckdb.DuckDBPyConnection]:
    path: Path = tmp_path_factory.mktemp("retrieve") / "store.duckdb"
    with duckdb.connect(str(path)) as writer:
        migrations.migrate(writer)
        catalog.install(writer)
        for table in ("datasets", "documents", "doc_encodings", "doc_latents"):
            insert(writer, table, data[table])
        writer.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
    connection = duckdb.connect(str(path), read_only=True)
    yield connection
    connection.close()


@functools.cache
def columns_of(name: str) -> list[str]:
    return list({o.name: o for o in catalog.load_catalog()}[name].columns)


def as_weights(pairs: list[tuple[int, float]]) -> list[dict]:
    return [{"latent_id": latent, "weight": weight} for latent, weight in pairs]


def retrieve_reference(
    data: dict[str, pd.DataFrame],
    pairs: list[tuple[int, float]],
    sae: int,
    k: int,
    datasets: list[str] | None = None,
) -> list[dict]:
    weight: dict[int, float] = {}
    for latent, w in pairs:
        weight[latent] = weight.get(latent, 0.0) + w
    rows = data["doc_latents"].query("sae_id == @sae")
    rows = rows[rows.latent_id.isin(list(weight))]
    documents = data["documents"].set_index("doc_id")
    if datasets is not None:
        ids = [i for i, n in DATASETS.items() if n in datasets]
        rows = rows[rows.doc_id.map(documents.dataset_id).isin(ids)]
    out = []
    for doc_id, group in rows.groupby("doc_id"):
        parts = sorted(
            (
                (weight[int(r.latent_id)] * float(r.max_act), int(r.latent_id), r)
                for r in group.itertuples()
            ),
            key=lambda p: (-p[0], p[1]),
        )
        score = 0.0
        for contribution, _, _ in parts:
            score += contribution  # the same order as the SQL sums in
        peak = parts[0][2]
        text = documents.text[doc_id]
        out.append(
            {
                "doc_id": int(doc_id),
                "dataset": DATASETS[int(documents.dataset_id[doc_id])],
                "external_id": documents.external_id[doc_id],
                "score": score,
                "contributions": [
                    {"latent_id": latent, "weight": weight[latent], "max_act": float(r.max_act)}
                    for _, latent, r in parts
                ],
                "snippet": mark_reference(text, peak.max_char_start, peak.max_char_end, 100),
            }
        )
    out.sort(key=lambda row: (-row["score"], row["doc_id"]))
    return out[:k]


def run_retrieve(
    con: duckdb.DuckDBPyConnection, pairs: list[tuple[int, float]], **kwargs
) -> list[dict]:
    extra = "".join(f", {k} := ?" for k in kwargs)
    result = con.execute(f"SELECT * FROM retrieve(?{extra})", [as_weights(pairs), *kwargs.values()])
    names = [d[0] for d in result.description]
    assert names == columns_of("retrieve")
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


RETRIEVE_CASES = [
    ([(3, 1.0)], {}),
    ([(3, 1.0), (5, 0.5), (7, 2.0)], {"k": 20}),
    ([(3, 1.0), (5, -0.5), (3, 0.25), (39, 4.0)], {"k": 50, "sae": 1}),  # 39 never fires
    ([(0, 1.0), (2, 1.0)], {"k": 1000}),  # latent 0 fires everywhere
    ([(4, 1.0), (6, 0.3)], {"sae": 2, "k": 15, "datasets": ["beta", "gamma's"]}),
    ([(1, 1.0)], {"k": 0}),
]


@pytest.mark.parametrize("pairs, kwargs", RETRIEVE_CASES)
def test_retrieve(
    con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], pairs, kwargs
) -> None:
    got = run_retrieve(con, pairs, **kwargs)
    want = retrieve_reference(
        data, pairs, kwargs.get("sae", 1), kwargs.get("k", 100), kwargs.get("datasets")
    )
    assert [r["doc_id"] for r in got] == [r["doc_id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], rel=1e-12)
        assert g["contributions"] == w["contributions"]
        assert (g["dataset"], g["external_id"], g["snippet"]) == (
            w["dataset"],
            w["external_id"],
            w["snippet"],
        )
    if kwargs.get("k") != 0:
        assert got, "the case should test something"


def test_retrieve_edge_cases(con: duckdb.DuckDBPyConnection) -> None:
    assert run_retrieve(con, [(39, 1.0)]) == []  # a latent that never fires
    empty = "SELECT * FROM retrieve(CAST([] AS STRUCT(latent_id INTEGER, weight DOUBLE)[]))"
    assert con.execute(empty).fetchall() == []
    for latent, names in [(3, ["beta", "nope"]), (3, ["nope"]), (39, ["nope"])]:
        with pytest.raises(duckdb.Error, match="no dataset named nope"):
            run_retrieve(con, [(latent, 1.0)], datasets=names)


def test_retrieve_joins_the_weights(con: duckdb.DuckDBPyConnection) -> None:
    """doc_latents is reached through a join on latent_id (the fast path on latent order)."""
    plan = "\n".join(
        row[1]
        for row in con.execute(
            "EXPLAIN SELECT * FROM retrieve([{'latent_id': 3, 'weight': 1.0}])"
        ).fetchall()
    )
    assert "latent_id = latent_id" in plan


# -- doc_vectors ---------------------------------------------------------------------------


def vectors_reference(
    data: dict[str, pd.DataFrame],
    latents: list[int],
    sae: int,
    threshold: float,
    datasets: list[str] | None,
) -> list[tuple]:
    docs = data["doc_encodings"].query("sae_id == @sae").merge(data["documents"])
    if datasets is not None:
        docs = docs[docs.dataset_id.map(DATASETS).isin(datasets)]
    rows = data["doc_latents"].query("sae_id == @sae")
    rows = rows[rows.latent_id.isin(latents) & (rows.max_act > np.float32(threshold))]
    active = rows.groupby("doc_id").latent_id.apply(lambda s: sorted(int(v) for v in s))
    out = []
    for doc_id, dataset_id in sorted(zip(docs.doc_id, docs.dataset_id, strict=True)):
        fired = active.get(doc_id, [])
        out.append((int(doc_id), DATASETS[int(dataset_id)], fired, len(fired)))
    return out


@pytest.mark.parametrize(
    "latents, kwargs",
    [
        ([3, 5, 9], {}),
        ([0, 39, 2, 2], {"threshold": 0.7}),  # 0 fires everywhere, 39 never, 2 listed twice
        ([1, 4, 6, 8, 10], {"sae": 2, "datasets": ["alpha", "gamma's"]}),
        ([], {"datasets": ["beta"]}),
    ],
)
def test_doc_vectors(
    con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], latents, kwargs
) -> None:
    extra = "".join(f", {k} := ?" for k in kwargs)
    result = con.execute(
        f"SELECT * FROM doc_vectors(CAST(? AS INTEGER[]){extra})", [latents, *kwargs.values()]
    )
    assert [d[0] for d in result.description] == columns_of("doc_vectors")
    got = [(d, ds, list(a), n) for d, ds, a, n in result.fetchall()]
    want = vectors_reference(
        data, latents, kwargs.get("sae", 1), kwargs.get("threshold", 0.0), kwargs.get("datasets")
    )
    assert got == want
    assert any(n == 0 for *_, n in got) or not latents or 0 in latents


def test_doc_vectors_builds_a_matrix(
    con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame]
) -> None:
    latents = [7, 3, 11]
    rows = con.execute("SELECT doc_id, active FROM doc_vectors(?)", [latents]).fetchall()
    column = {latent: j for j, latent in enumerate(latents)}
    matrix = np.zeros((len(rows), len(latents)), dtype=np.int8)
    for i, (_, active) in enumerate(rows):
        matrix[i, [column[latent] for latent in active]] = 1
    encoded = data["doc_encodings"].query("sae_id == 1")
    fired = data["doc_latents"].query("sae_id == 1").merge(encoded[["doc_id"]])
    for j, latent in enumerate(latents):
        assert matrix[:, j].sum() == (fired.latent_id == latent).sum()


@pytest.mark.parametrize("names", [["nope"], ["alpha", "nope", "zz"]])
def test_doc_vectors_refuses_unknown_datasets(con: duckdb.DuckDBPyConnection, names) -> None:
    with pytest.raises(duckdb.Error, match="no dataset named nope"):
        con.execute("SELECT * FROM doc_vectors([1], datasets := ?)", [names]).fetchall()


# -- properties on tiny stores -------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    migrations.migrate(connection)
    catalog.install(connection)
    insert(
        connection,
        "datasets",
        pd.DataFrame({"dataset_id": [1, 2], "name": ["alpha", "beta"]}).astype(
            {"dataset_id": np.int32}
        ),
    )
    connection.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
    yield connection
    connection.close()


LATENT_COLUMNS = [
    "doc_id",
    "sae_id",
    "latent_id",
    "max_act",
    "sum_act",
    "n_active",
    "max_char_start",
    "max_char_end",
]


@st.composite
def tiny_stores(draw: st.DrawFn) -> dict[str, pd.DataFrame]:
    """1-6 documents, latents 0-3 (3 never fires, 0 may fire everywhere), few activation
    values so that whole documents tie; some documents copy another's rows exactly."""
    n_docs = draw(st.integers(1, 6))
    texts = [draw(st.text("ab é🎉", min_size=1, max_size=12)) for _ in range(n_docs)]
    everywhere = draw(st.booleans())
    rows: list[tuple] = []
    for doc in range(n_docs):
        copy_of = draw(st.integers(0, doc)) if doc and draw(st.booleans()) else None
        if copy_of is not None:
            for row in [r for r in rows if r[0] == copy_of + 1]:
                end = min(row[7], len(texts[doc]))
                rows.append((doc + 1, *row[1:6], min(row[6], end), end))
            continue
        for latent in range(3):
            if (latent == 0 and everywhere) or draw(st.booleans()):
                act = draw(st.sampled_from([0.5, 1.0, 1.5]))
                start = draw(st.integers(0, len(texts[doc]) - 1))
                rows.append((doc + 1, 1, latent, act, act, 1, start, start + 1))
    documents = pd.DataFrame(
        {
            "doc_id": np.arange(1, n_docs + 1, dtype=np.int64),
            "dataset_id": np.array([1 + i % 2 for i in range(n_docs)], dtype=np.int32),
            "external_id": [f"e{i}" for i in range(n_docs)],
            "text": texts,
            "text_sha256": [""] * n_docs,
            "n_tokens": np.ones(n_docs, dtype=np.int32),
            "run_id": np.ones(n_docs, dtype=np.int32),
        }
    )
    encodings = pd.DataFrame(
        {
            "doc_id": documents.doc_id,
            "sae_id": np.ones(n_docs, dtype=np.int32),
            "run_id": np.ones(n_docs, dtype=np.int32),
            "n_latents": np.zeros(n_docs, dtype=np.int32),
        }
    )
    latents = pd.DataFrame(rows, columns=LATENT_COLUMNS).astype(
        {
            "doc_id": np.int64,
            "sae_id": np.int32,
            "latent_id": np.int32,
            "max_act": np.float32,
            "sum_act": np.float32,
            "n_active": np.int32,
            "max_char_start": np.int32,
            "max_char_end": np.int32,
        }
    )
    return {"documents": documents, "doc_encodings": encodings, "doc_latents": latents}


def load_tiny(con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame]) -> None:
    con.execute("DELETE FROM doc_latents; DELETE FROM doc_encodings; DELETE FROM documents")
    for table in ("documents", "doc_encodings", "doc_latents"):
        if len(data[table]):
            insert(con, table, data[table])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=tiny_stores(),
    pairs=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([1.0, 0.5, -1.0, 2.0])),
        min_size=1,
        max_size=4,
    ),
    k=st.integers(0, 7),
    datasets=st.sampled_from([None, ["alpha"], ["alpha", "beta"]]),
)
def test_retrieve_property(
    scratch: duckdb.DuckDBPyConnection,
    data: dict[str, pd.DataFrame],
    pairs: list[tuple[int, float]],
    k: int,
    datasets: list[str] | None,
) -> None:
    load_tiny(scratch, data)
    got = run_retrieve(scratch, pairs, k=k, datasets=datasets)
    want = retrieve_reference(data, pairs, 1, k, datasets)
    assert got == want  # exact: same summation order, ties broken by doc_id
    order = [(-r["score"], r["doc_id"]) for r in got]
    assert order == sorted(order) and np.isfinite([r["score"] for r in got]).all()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=tiny_stores(),
    latents=st.lists(st.integers(0, 3), max_size=4),
    threshold=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_doc_vectors_property(
    scratch: duckdb.DuckDBPyConnection,
    data: dict[str, pd.DataFrame],
    latents: list[int],
    threshold: float,
) -> None:
    load_tiny(scratch, data)
    got = scratch.execute(
        "SELECT * FROM doc_vectors(CAST(? AS INTEGER[]), threshold := ?)", [latents, threshold]
    ).fetchall()
    documents = data["documents"]
    assert [row[0] for row in got] == documents.doc_id.tolist()  # every encoded document
    rows = data["doc_latents"]
    for doc_id, dataset, active, n_active in got:
        mine = rows[(rows.doc_id == doc_id) & (rows.max_act > np.float32(threshold))]
        assert list(active) == sorted(set(mine.latent_id) & set(latents))
        assert n_active == len(active)
        assert dataset == ("alpha" if doc_id % 2 else "beta")
