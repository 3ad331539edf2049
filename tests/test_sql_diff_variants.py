"""diff_doc_sets, diff_one_vs_rest and diff_metadata checked against plain numpy/scipy.

The store is built like tests/test_sql_analyses.py's (random sparse data, several datasets,
2 SAEs, silent documents, rows no doc_encodings row vouches for) plus random metadata; the
hypothesis tests build tiny stores with the edge cases: an empty group, a latent that never
fires, one that fires everywhere, a group of one document.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from test_sql_analyses import DATASETS, insert, make_data

from saedb import catalog, migrations

TOPICS = ["x", "y", "z", "ü"]
STAT_COLUMNS = [
    "latent_id",
    "freq_a",
    "freq_b",
    "difference",
    "relative_difference",
    "n_a",
    "n_b",
    "size_a",
    "size_b",
    "p_value",
    "q_value",
]


def with_metadata(data: dict[str, pd.DataFrame], seed: int = 3) -> dict[str, pd.DataFrame]:
    """The data with random metadata: a topic, a year (a JSON number), some keys missing."""
    rng = np.random.default_rng(seed)
    meta = []
    for _ in range(len(data["documents"])):
        entry: dict = {}
        if rng.random() < 0.85:
            entry["topic"] = str(rng.choice(TOPICS))
        if rng.random() < 0.9:
            entry["year"] = int(rng.choice([2019, 2020]))
        meta.append(json.dumps(entry) if rng.random() < 0.95 else None)
    documents = data["documents"].copy()
    documents["metadata"] = meta
    return {**data, "documents": documents}


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return with_metadata(make_data(seed=11))


@pytest.fixture(scope="module")
def con(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, pd.DataFrame]
) -> Iterator[duckdb.DuckDBPyConnection]:
    path: Path = tmp_path_factory.mktemp("variants") / "store.duckdb"
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


def stats_reference(
    data: dict[str, pd.DataFrame],
    docs_a: set[int],
    docs_b: set[int],
    sae: int,
    min_freq: float = 0.0,
    max_freq: float = 1.0,
    threshold: float = 0.0,
) -> pd.DataFrame:
    """The two-proportion z-test per latent between two document sets, with numpy/scipy."""
    encoded = set(data["doc_encodings"].query("sae_id == @sae").doc_id)
    docs_a, docs_b = docs_a & encoded, docs_b & encoded
    size_a, size_b = len(docs_a), len(docs_b)
    assert size_a and size_b
    rows = data["doc_latents"].query("sae_id == @sae")
    rows = rows[rows.max_act > np.float32(threshold)]  # compared at REAL precision
    n_a = rows[rows.doc_id.isin(docs_a)].groupby("latent_id").size()
    n_b = rows[rows.doc_id.isin(docs_b)].groupby("latent_id").size()
    out = pd.concat([n_a.rename("n_a"), n_b.rename("n_b")], axis=1).fillna(0).astype(np.int64)
    out = out.rename_axis("latent_id").reset_index()
    out["size_a"], out["size_b"] = size_a, size_b
    out["freq_a"], out["freq_b"] = out.n_a / size_a, out.n_b / size_b
    pooled = (out.n_a + out.n_b) / (size_a + size_b)
    out = out[(pooled >= min_freq) & (pooled <= max_freq)].copy()
    pooled = (out.n_a + out.n_b) / (size_a + size_b)
    out["difference"] = out.freq_a - out.freq_b
    with np.errstate(divide="ignore", invalid="ignore"):
        out["relative_difference"] = np.where(
            out.freq_b > 0, out.freq_a / out.freq_b.where(out.freq_b > 0, 1.0), np.inf
        )
        se = np.sqrt(pooled * (1 - pooled) * (1 / size_a + 1 / size_b))
        z = (out.freq_a - out.freq_b).abs() / se
        p = np.where(pooled < 1, 2 * stats.norm.sf(z), 1.0)
    out["p_value"] = np.minimum(p, 1.0)
    out["q_value"] = stats.false_discovery_control(out.p_value) if len(out) else []
    out = out.sort_values(["difference", "latent_id"], ascending=[False, True])
    return out.reset_index(drop=True)


def assert_matches(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == STAT_COLUMNS
    assert got.latent_id.tolist() == want.latent_id.tolist()
    for col in ("n_a", "n_b", "size_a", "size_b"):
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("freq_a", "freq_b", "difference", "relative_difference"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12, err_msg=col)
    for col in ("p_value", "q_value"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-6, atol=1e-300, err_msg=col)
    assert_sane(got)


def assert_sane(got: pd.DataFrame) -> None:
    """No NaN anywhere; the only infinity is relative_difference where only a fired."""
    numeric = got[[c for c in STAT_COLUMNS if c != "relative_difference"]].to_numpy(float)
    assert np.isfinite(numeric).all()
    rel = got.relative_difference.to_numpy(float)
    assert not np.isnan(rel).any()
    assert (np.isinf(rel) == ((got.n_b == 0) & (got.n_a > 0))).all()
    assert ((got.p_value >= 0) & (got.p_value <= 1)).all()
    assert ((got.q_value >= got.p_value * (1 - 1e-12)) & (got.q_value <= 1)).all()


def docs_of(data: dict[str, pd.DataFrame], names: list[str]) -> set[int]:
    ids = [i for i, n in DATASETS.items() if n in names]
    documents = data["documents"]
    return set(documents.doc_id[documents.dataset_id.isin(ids)])


def docs_with(data: dict[str, pd.DataFrame], key: str, value: str, dataset: str | None = None):
    documents = data["documents"]
    if dataset is not None:
        documents = documents[documents.dataset_id == {n: i for i, n in DATASETS.items()}[dataset]]
    found = set()
    for doc_id, meta in zip(documents.doc_id, documents.metadata, strict=True):
        if isinstance(meta, str) and str(json.loads(meta).get(key)) == value:
            found.add(int(doc_id))
    return found


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    return con.execute(sql, params or []).fetchdf()


# -- diff_doc_sets and diff ----------------------------------------------------------------


def test_diff_doc_sets(con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame]) -> None:
    rng = np.random.default_rng(5)
    ids = data["documents"].doc_id.to_numpy()
    a = sorted(int(i) for i in rng.choice(ids, 120, replace=False))
    b = sorted(int(i) for i in rng.choice(ids, 200, replace=False))  # overlaps a
    got = query(con, "SELECT * FROM diff_doc_sets(?, ? || ?, threshold := 0.2)", [a, b, b[:5]])
    assert list(got.columns) == columns_of("diff_doc_sets")
    assert_matches(got, stats_reference(data, set(a), set(b), 1, threshold=0.2))


def test_diff_is_diff_doc_sets_on_datasets(con: duckdb.DuckDBPyConnection) -> None:
    got = query(con, "SELECT * FROM diff('alpha', 'beta', sae := 2)")
    via = query(
        con,
        "SELECT * FROM diff_doc_sets("
        "(SELECT list(doc_id) FROM documents WHERE dataset_id = 1),"
        "(SELECT list(doc_id) FROM documents WHERE dataset_id = 2), sae := 2)",
    )
    pd.testing.assert_frame_equal(got, via)


# -- diff_one_vs_rest ----------------------------------------------------------------------

ONE_VS_REST = [
    ("alpha", None, {}),
    ("beta", ["alpha", "gamma's"], {"sae": 2}),
    ("gamma's", None, {"threshold": 0.3}),
    ("dëlta", ["alpha", "dëlta", "empty"], {"min_freq": 0.05, "max_freq": 0.5}),
    ("alpha", ["beta"], {"sae": 1}),
]


@pytest.mark.parametrize("dataset, others, kwargs", ONE_VS_REST)
def test_diff_one_vs_rest(
    con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], dataset, others, kwargs
) -> None:
    extra = "".join(f", {k} := ?" for k in kwargs)
    got = query(
        con,
        f"SELECT * FROM diff_one_vs_rest(?, datasets := ?{extra})",
        [dataset, others, *kwargs.values()],
    )
    assert list(got.columns) == columns_of("diff_one_vs_rest")
    rest = [n for n in (others or DATASETS.values()) if n != dataset]
    want = stats_reference(
        data, docs_of(data, [dataset]), docs_of(data, rest), **{"sae": 1, **kwargs}
    )
    assert len(want) > 3, "the case should test something"
    assert_matches(got, want)


def test_one_vs_rest_against_one_other_is_diff(con: duckdb.DuckDBPyConnection) -> None:
    got = query(con, "SELECT * FROM diff_one_vs_rest('beta', datasets := ['gamma''s'])")
    pd.testing.assert_frame_equal(got, query(con, "SELECT * FROM diff('beta', 'gamma''s')"))


# -- diff_metadata -------------------------------------------------------------------------

METADATA = [
    ("topic", "x", "y", None, {}),
    ("topic", "ü", "z", "alpha", {"sae": 2}),
    ("year", "2020", "2019", None, {"threshold": 0.5}),
    ("$.topic", "x", "x", "beta", {}),
    ("topic", "y", "z", None, {"min_freq": 0.1, "max_freq": 0.7}),
]


@pytest.mark.parametrize("key, value_a, value_b, dataset, kwargs", METADATA)
def test_diff_metadata(
    con: duckdb.DuckDBPyConnection,
    data: dict[str, pd.DataFrame],
    key,
    value_a,
    value_b,
    dataset,
    kwargs,
) -> None:
    extra = "".join(f", {k} := ?" for k in kwargs)
    got = query(
        con,
        f"SELECT * FROM diff_metadata(?, ?, ?, dataset := ?{extra})",
        [key, value_a, value_b, dataset, *kwargs.values()],
    )
    assert list(got.columns) == columns_of("diff_metadata")
    plain = key.removeprefix("$.")
    want = stats_reference(
        data,
        docs_with(data, plain, value_a, dataset),
        docs_with(data, plain, value_b, dataset),
        **{"sae": 1, **kwargs},
    )
    assert len(want) > 3, "the case should test something"
    assert_matches(got, want)
    if value_a == value_b:
        assert (got.difference == 0).all() and (got.p_value == 1).all()


def test_diff_metadata_numbers_match_as_text(con: duckdb.DuckDBPyConnection) -> None:
    as_text = query(con, "SELECT * FROM diff_metadata('year', '2020', '2019')")
    as_number = query(con, "SELECT * FROM diff_metadata('year', 2020, 2019)")
    pd.testing.assert_frame_equal(as_text, as_number)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT * FROM diff_one_vs_rest('nope')", "no dataset named nope"),
        ("SELECT * FROM diff_one_vs_rest('alpha', datasets := ['beta', 'zz'])", "named zz"),
        ("SELECT * FROM diff_one_vs_rest('alpha', datasets := ['zz'])", "named zz"),
        ("SELECT * FROM diff_one_vs_rest('alpha', datasets := ['alpha'])", "the rest"),
        ("SELECT * FROM diff_one_vs_rest('alpha', datasets := ['empty'])", "has no documents"),
        ("SELECT * FROM diff_one_vs_rest('empty')", "dataset empty has no documents"),
        ("SELECT * FROM diff_one_vs_rest('dëlta', sae := 2)", "dëlta has no documents"),
        ("SELECT * FROM diff_metadata('topic', 'x', 'nope')", "topic = nope has no documents"),
        ("SELECT * FROM diff_metadata('nokey', 'x', 'y')", "nokey = x has no documents"),
        ("SELECT * FROM diff_metadata('topic', 'x', 'y', dataset := 'nope')", "no dataset named"),
        ("SELECT * FROM diff_metadata('topic', 'x', 'y', dataset := 'empty')", "in dataset empty"),
        ("SELECT * FROM diff_doc_sets([], [3, 6])", "document set a has no documents"),
        ("SELECT * FROM diff_doc_sets([3, 6], NULL)", "document set b has no documents"),
    ],
)
def test_errors(con: duckdb.DuckDBPyConnection, sql: str, message: str) -> None:
    with pytest.raises(duckdb.Error, match=message):
        con.execute(sql).fetchall()


# -- properties on tiny stores -------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    migrations.migrate(connection)
    catalog.install(connection)
    insert(
        connection,
        "datasets",
        pd.DataFrame({"dataset_id": [1, 2, 3], "name": ["p", "q", "r"]}).astype(
            {"dataset_id": np.int32}
        ),
    )
    connection.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
    yield connection
    connection.close()


N_LATENTS = 4  # latent 3 never fires; a drawn flag makes latent 0 fire everywhere


@st.composite
def tiny_stores(draw: st.DrawFn) -> dict[str, pd.DataFrame]:
    n_docs = draw(st.integers(1, 8))
    dataset = draw(st.lists(st.sampled_from([1, 2, 3]), min_size=n_docs, max_size=n_docs))
    topic = draw(st.lists(st.sampled_from(["a", "b", None]), min_size=n_docs, max_size=n_docs))
    everywhere = draw(st.booleans())
    rows = []
    for doc in range(n_docs):
        for latent in range(N_LATENTS - 1):
            if (latent == 0 and everywhere) or draw(st.booleans()):
                act = draw(st.sampled_from([0.5, 1.0, 2.0]))
                rows.append((doc + 1, 1, latent, act, act, 1, 0, 1))
    documents = pd.DataFrame(
        {
            "doc_id": np.arange(1, n_docs + 1, dtype=np.int64),
            "dataset_id": np.array(dataset, dtype=np.int32),
            "external_id": [f"e{i}" for i in range(n_docs)],
            "text": ["some text"] * n_docs,
            "text_sha256": [""] * n_docs,
            "n_tokens": np.ones(n_docs, dtype=np.int32),
            "metadata": [None if t is None else json.dumps({"t": t}) for t in topic],
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
    latents = pd.DataFrame(
        rows,
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


def check_or_refuses(
    con: duckdb.DuckDBPyConnection,
    data: dict[str, pd.DataFrame],
    sql: str,
    params: list,
    docs_a: set[int],
    docs_b: set[int],
    threshold: float,
) -> None:
    if not docs_a or not docs_b:
        with pytest.raises(duckdb.Error, match="has no documents encoded"):
            con.execute(sql, params).fetchall()
        return
    got = query(con, sql, params)
    want = stats_reference(data, docs_a, docs_b, 1, threshold=threshold)
    assert_matches(got, want)
    assert N_LATENTS - 1 not in got.latent_id.tolist()  # never fired: not tested


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=tiny_stores(), threshold=st.sampled_from([0.0, 0.5, 1.0]))
def test_one_vs_rest_property(
    scratch: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], threshold: float
) -> None:
    load_tiny(scratch, data)
    documents = data["documents"]
    check_or_refuses(
        scratch,
        data,
        "SELECT * FROM diff_one_vs_rest('p', threshold := ?)",
        [threshold],
        set(documents.doc_id[documents.dataset_id == 1]),
        set(documents.doc_id[documents.dataset_id != 1]),
        threshold,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=tiny_stores(), threshold=st.sampled_from([0.0, 0.5, 1.0]))
def test_diff_metadata_property(
    scratch: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], threshold: float
) -> None:
    load_tiny(scratch, data)
    documents = data["documents"]
    topic = [json.loads(m)["t"] if isinstance(m, str) else None for m in documents.metadata]
    in_group = {
        v: {int(d) for d, t in zip(documents.doc_id, topic, strict=True) if t == v} for v in "ab"
    }
    check_or_refuses(
        scratch,
        data,
        "SELECT * FROM diff_metadata('t', 'a', 'b', threshold := ?)",
        [threshold],
        in_group["a"],
        in_group["b"],
        threshold,
    )
