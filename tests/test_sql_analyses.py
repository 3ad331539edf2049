"""Every SQL analysis (views and macros) checked against a plain numpy/scipy computation.

A real DuckDB file gets the schema and the catalog, then random sparse data: several datasets,
2 SAEs, documents with non-ASCII text, documents where nothing fired, documents not encoded
with an SAE, and a few doc_latents rows of documents not recorded in doc_encodings.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from saedb import catalog, migrations

DATASETS = {1: "alpha", 2: "beta", 3: "gamma's", 4: "dëlta", 5: "empty"}
D_SAE = {1: 40, 2: 24}
N_DOCS = 500
WORDS = ["the", "cat", "naïve", "café", "漢字", "🎉", "e\u0301", "zürich", "Ωmega", "\t", "—"]


def mark_reference(text: str, start: int, end: int, context: int | None) -> str:
    """What highlight's snippet must be, with Python string slicing."""
    if context is None:
        context = len(text)
    context = max(context, 0)
    lo, hi = max(0, start - context), min(len(text), end + context)
    return (
        ("…" if lo > 0 else "")
        + text[lo:start]
        + "<<"
        + text[start:end]
        + ">>"
        + text[end:hi]
        + ("…" if hi < len(text) else "")
    )


def make_data(seed: int = 7) -> dict[str, pd.DataFrame]:
    """Random sparse data shaped like an ingest's output."""
    rng = np.random.default_rng(seed)
    dataset_of = rng.choice([1, 2, 3, 4], size=N_DOCS, p=[0.35, 0.3, 0.2, 0.15])
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(1, 40))) for _ in range(N_DOCS)]
    documents = pd.DataFrame(
        {
            "doc_id": np.arange(1, N_DOCS + 1, dtype=np.int64) * 3,
            "dataset_id": dataset_of.astype(np.int32),
            "external_id": [f"ext-{i}" for i in range(N_DOCS)],
            "text": texts,
            "text_sha256": ["0" * 64] * N_DOCS,
            "n_tokens": np.array([len(t.split()) for t in texts], dtype=np.int32),
            # deterministic (no rng draws, so the rest of the data is unchanged)
            "metadata": [json.dumps({"parity": ("even", "odd")[i % 2]}) for i in range(N_DOCS)],
            "run_id": np.ones(N_DOCS, dtype=np.int32),
        }
    )
    encodings, latents = [], []
    for sae, d_sae in D_SAE.items():
        # per (dataset, latent) firing probability; some latents never fire, latent 0 of
        # SAE 1 fires everywhere (pooled frequency 1)
        prob = rng.uniform(0, 0.35, size=(5, d_sae)) * (rng.random((5, d_sae)) < 0.8)
        prob[:, -2:] = 0.0
        if sae == 1:
            prob[:, 0] = 1.0
        encoded = rng.random(N_DOCS) < (0.95 if sae == 1 else 0.8)
        if sae == 2:
            encoded &= dataset_of != 4
        silent = rng.random(N_DOCS) < 0.1  # encoded, but nothing fired
        if sae == 1:
            silent &= False  # latent 0 fires everywhere for SAE 1
        for i in np.flatnonzero(encoded):
            fired = np.flatnonzero(rng.random(d_sae) < prob[dataset_of[i]])
            if silent[i]:
                fired = fired[:0]
            encodings.append((documents.doc_id[i], sae, 1, len(fired)))
            for latent in fired:
                latents.append(_latent_row(rng, documents.doc_id[i], sae, latent, texts[i]))
        for i in np.flatnonzero(~encoded)[:5]:  # rows no doc_encodings row vouches for
            latents.append(_latent_row(rng, documents.doc_id[i], sae, 1, texts[i]))
    doc_encodings = pd.DataFrame(encodings, columns=["doc_id", "sae_id", "run_id", "n_latents"])
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
    )
    doc_latents = doc_latents.astype(
        {"max_act": np.float32, "sum_act": np.float32, "latent_id": np.int32, "sae_id": np.int32}
    )
    doc_encodings = doc_encodings.astype({"sae_id": np.int32, "n_latents": np.int32})
    datasets = pd.DataFrame({"dataset_id": list(DATASETS), "name": list(DATASETS.values())})
    return {
        "datasets": datasets.astype({"dataset_id": np.int32}),
        "documents": documents,
        "doc_encodings": doc_encodings,
        "doc_latents": doc_latents,
    }


def _latent_row(rng: np.random.Generator, doc_id: int, sae: int, latent: int, text: str) -> tuple:
    start = int(rng.integers(0, len(text)))
    end = int(min(len(text), start + rng.integers(1, 6)))
    act = round(float(rng.exponential(1.0)), 1) + 0.1  # rounded: ties and exact thresholds
    return (doc_id, sae, int(latent), act, act * 2, 2, start, end)


def insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    rows = pa.Table.from_pandas(frame, preserve_index=False)
    con.register("incoming", rows)
    columns = ", ".join(catalog.quote_identifier(c) for c in frame.columns)
    con.execute(
        f"INSERT INTO {catalog.quote_identifier(table)} ({columns}) SELECT {columns} FROM incoming"
    )
    con.unregister("incoming")


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return make_data()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory, data: dict[str, pd.DataFrame]) -> Path:
    path = tmp_path_factory.mktemp("store") / "store.duckdb"
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        for table in ("datasets", "documents", "doc_encodings", "doc_latents"):
            insert(con, table, data[table])
        con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
        # a few labels with (made-up, 3-dimensional) embeddings and one cached query, for
        # the label-similarity objects
        for label_id, latent, label, vector in LABELS:
            con.execute(
                "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, labeler, "
                "n_examples) VALUES (?, 1, ?, ?, 'test', 0)",
                [label_id, latent, label],
            )
            con.execute(
                "INSERT INTO label_embeddings (label_id, model, embedding) VALUES (?, ?, ?)",
                [label_id, "test-embedding", vector],
            )
        con.execute(
            "INSERT INTO query_embeddings (query, model, embedding) "
            "VALUES ('tone', 'test-embedding', [0.6, 0.8, 0.0])"
        )
    return path


LABELS = [
    (1, 3, "anger", [1.0, 0.0, 0.0]),
    (2, 5, "joy", [0.0, 1.0, 0.0]),
    (3, 7, "rain", [0.0, 0.0, 1.0]),
]


@pytest.fixture(scope="module")
def con(store_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(store_path), read_only=True)
    yield connection
    connection.close()


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    return con.execute(sql, params or []).fetchdf()


@functools.cache
def columns_of(name: str) -> list[str]:
    return list({o.name: o for o in catalog.load_catalog()}[name].columns)


# -- latent_frequency ----------------------------------------------------------------------


def encoded_latents(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """doc_latents rows that doc_encodings vouches for, with each document's dataset."""
    rows = data["doc_latents"].merge(data["doc_encodings"][["doc_id", "sae_id"]])
    return rows.merge(data["documents"][["doc_id", "dataset_id"]])


def test_latent_frequency(con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame]) -> None:
    got = query(con, "SELECT * FROM latent_frequency ORDER BY sae_id, dataset_id, latent_id")
    assert list(got.columns) == columns_of("latent_frequency")

    sizes = (
        data["doc_encodings"]
        .merge(data["documents"][["doc_id", "dataset_id"]])
        .groupby(["sae_id", "dataset_id"])
        .size()
        .rename("n_docs")
        .reset_index()
    )
    rows = encoded_latents(data)
    rows["act"] = rows.max_act.astype(np.float64)
    want = (
        rows.groupby(["sae_id", "dataset_id", "latent_id"])
        .agg(n_fired=("doc_id", "size"), mean_max_act=("act", "mean"), max_max_act=("act", "max"))
        .reset_index()
        .merge(sizes)
    )
    want["frequency"] = want.n_fired / want.n_docs
    want["dataset"] = want.dataset_id.map(DATASETS)
    want = want.sort_values(["sae_id", "dataset_id", "latent_id"]).reset_index(drop=True)

    assert len(got) == len(want)
    for col in ("sae_id", "dataset_id", "latent_id", "n_fired", "n_docs", "dataset"):
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("frequency", "mean_max_act", "max_max_act"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12, err_msg=col)
    assert (got.frequency <= 1).all()


# -- diff ----------------------------------------------------------------------------------


def diff_reference(
    data: dict[str, pd.DataFrame],
    a: str,
    b: str,
    sae: int,
    min_freq: float = 0.0,
    max_freq: float = 1.0,
    threshold: float = 0.0,
) -> pd.DataFrame:
    ids = {name: i for i, name in DATASETS.items()}
    docs = data["doc_encodings"].query("sae_id == @sae").merge(data["documents"])
    size_a = int((docs.dataset_id == ids[a]).sum())
    size_b = int((docs.dataset_id == ids[b]).sum())
    rows = encoded_latents(data).query("sae_id == @sae")
    rows = rows[rows.max_act > np.float32(threshold)]  # compared at REAL precision
    n_a = rows[rows.dataset_id == ids[a]].groupby("latent_id").size()
    n_b = rows[rows.dataset_id == ids[b]].groupby("latent_id").size()
    out = pd.concat([n_a.rename("n_a"), n_b.rename("n_b")], axis=1).fillna(0).astype(np.int64)
    out = out.rename_axis("latent_id").reset_index()
    out["size_a"], out["size_b"] = size_a, size_b
    out["freq_a"], out["freq_b"] = out.n_a / size_a, out.n_b / size_b
    pooled = (out.n_a + out.n_b) / (size_a + size_b)
    out = out[(pooled >= min_freq) & (pooled <= max_freq)].copy()
    pooled = (out.n_a + out.n_b) / (size_a + size_b)
    out["difference"] = out.freq_a - out.freq_b
    with np.errstate(divide="ignore"):
        out["relative_difference"] = np.where(
            out.freq_b > 0, out.freq_a / out.freq_b.where(out.freq_b > 0, 1.0), np.inf
        )
        se = np.sqrt(pooled * (1 - pooled) * (1 / size_a + 1 / size_b))
        z = (out.freq_a - out.freq_b).abs() / se
    out["p_value"] = np.where(pooled < 1, 2 * stats.norm.sf(z), 1.0)
    for n_a_, n_b_, p in zip(out.n_a, out.n_b, out.p_value, strict=True):
        table = [[n_a_, size_a - n_a_], [n_b_, size_b - n_b_]]
        if 0 < n_a_ + n_b_ < size_a + size_b:  # the pooled z-test is the chi-square test
            chi2 = stats.chi2_contingency(table, correction=False).pvalue
            assert np.isclose(p, chi2, rtol=1e-9, atol=1e-300)
    out["q_value"] = stats.false_discovery_control(out.p_value) if len(out) else []
    out = out.sort_values(["difference", "latent_id"], ascending=[False, True])
    return out.reset_index(drop=True)


DIFF_CASES = [
    ("alpha", "beta", "", {}),
    ("beta", "alpha", ", sae := 2", {"sae": 2}),
    ("alpha", "gamma's", ", sae := 1, threshold := 0.3", {"sae": 1, "threshold": 0.3}),
    ("gamma's", "beta", ", min_freq := 0.1, max_freq := 0.6", {"min_freq": 0.1, "max_freq": 0.6}),
    ("alpha", "alpha", ", sae := 2", {"sae": 2}),
    ("dëlta", "beta", ", threshold := 1.05", {"threshold": 1.05}),
]


@pytest.mark.parametrize("a, b, extra, kwargs", DIFF_CASES)
def test_diff(
    con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], a, b, extra, kwargs
) -> None:
    got = query(con, f"SELECT * FROM diff(?, ?{extra})", [a, b])
    assert list(got.columns) == columns_of("diff")
    want = diff_reference(data, a, b, **{"sae": 1, **kwargs})
    assert len(want) > 3, "the case should test something"
    assert got.latent_id.tolist() == want.latent_id.tolist()
    for col in ("n_a", "n_b", "size_a", "size_b"):
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("freq_a", "freq_b", "difference", "relative_difference"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12, err_msg=col)
    for col in ("p_value", "q_value"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-6, atol=1e-300, err_msg=col)
    assert ((got.p_value >= 0) & (got.p_value <= 1)).all()
    assert (got.q_value >= got.p_value * (1 - 1e-12)).all()


def test_diff_edge_cases(con: duckdb.DuckDBPyConnection) -> None:
    same = query(con, "SELECT * FROM diff('beta', 'beta')")
    assert (same.difference == 0).all() and (same.p_value == 1).all()
    everywhere = query(con, "SELECT * FROM diff('alpha', 'beta') WHERE latent_id = 0")
    assert everywhere.p_value.tolist() == [1.0]  # fired in every document of both
    nothing = "SELECT * FROM diff('alpha', 'beta', min_freq := 0.99, max_freq := 0.5)"
    assert query(con, nothing).empty
    only_a = query(con, "SELECT * FROM diff('alpha', 'beta') WHERE n_b = 0")
    assert np.isinf(only_a.relative_difference).all()


@pytest.mark.parametrize(
    "sql, message",
    [
        ("SELECT * FROM diff('alpha', 'nope')", "no dataset named nope"),
        ("SELECT * FROM diff('dëlta', 'alpha', sae := 2)", "dëlta has no documents encoded"),
        ("SELECT * FROM diff('empty', 'alpha')", "empty has no documents encoded"),
    ],
)
def test_diff_refuses_what_it_cannot_compare(
    con: duckdb.DuckDBPyConnection, sql: str, message: str
) -> None:
    with pytest.raises(duckdb.Error, match=message):
        con.execute(sql).fetchall()


def test_normal_sf_matches_scipy(con: duckdb.DuckDBPyConnection) -> None:
    z = np.concatenate([np.linspace(-8, 37, 901), [0.0, 1e-12, -1e-12]])
    got = con.execute("SELECT normal_sf(z) AS p FROM unnest(?) AS t(z)", [z.tolist()]).fetchdf()
    np.testing.assert_allclose(got.p, stats.norm.sf(z), rtol=2e-7, atol=0)


# -- highlight and top_documents -----------------------------------------------------------


def test_substring_counts_characters_not_bytes(con: duckdb.DuckDBPyConnection) -> None:
    text = "naïve 漢字 🎉 e\u0301x"
    for start, end in [(0, 5), (2, 3), (6, 8), (9, 10), (11, 13), (11, 14)]:
        got = con.execute("SELECT substring(?, ?, ?)", [text, start + 1, end - start]).fetchone()
        assert got == (text[start:end],)
    assert con.execute("SELECT length(?)", [text]).fetchone() == (len(text),)


def test_highlight(con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame]) -> None:
    rows = data["doc_latents"].merge(data["documents"][["doc_id", "text"]])
    rows = rows[~rows.text.str.isascii()].sample(25, random_state=1)
    for row in rows.itertuples():
        for context in (0, 3, 200):
            got = query(
                con,
                "SELECT * FROM highlight(?, ?, sae := ?, context := ?)",
                [int(row.doc_id), int(row.latent_id), int(row.sae_id), context],
            )
            assert list(got.columns) == columns_of("highlight")
            s, e, text = row.max_char_start, row.max_char_end, row.text
            assert len(got) == 1
            assert got.token[0] == text[s:e]
            assert got.highlighted[0] == text[:s] + "<<" + text[s:e] + ">>" + text[e:]
            assert got.snippet[0] == mark_reference(text, s, e, context)
            assert (got.char_start[0], got.char_end[0]) == (s, e)
    default = rows[rows.sae_id == 1].iloc[0]
    got = query(con, "SELECT * FROM highlight(?, ?)", [int(default.doc_id), int(default.latent_id)])
    assert got.snippet[0] == mark_reference(
        default.text, default.max_char_start, default.max_char_end, 200
    )
    assert query(con, "SELECT * FROM highlight(3, 999999)").empty


@pytest.mark.parametrize("latent, sae, k", [(1, None, 10), (3, 2, 7), (0, 1, 1000), (5, 1, 0)])
def test_top_documents(
    con: duckdb.DuckDBPyConnection, data: dict[str, pd.DataFrame], latent: int, sae, k: int
) -> None:
    args = ", sae := ?" if sae is not None else ""
    params = [latent] + ([sae] if sae is not None else []) + [k]
    got = query(con, f"SELECT * FROM top_documents(?{args}, k := ?)", params)
    assert list(got.columns) == columns_of("top_documents")
    latents = data["doc_latents"]
    rows = latents[(latents.latent_id == latent) & (latents.sae_id == (sae or 1))]
    rows = rows.merge(data["documents"]).sort_values(["max_act", "doc_id"], ascending=[False, True])
    want = rows.head(k)
    assert got.doc_id.tolist() == want.doc_id.tolist()
    assert got.dataset.tolist() == want.dataset_id.map(DATASETS).tolist()
    assert got.external_id.tolist() == want.external_id.tolist()
    np.testing.assert_allclose(got.max_act, want.max_act.astype(np.float64), rtol=0)
    snippets = [
        mark_reference(r.text, r.max_char_start, r.max_char_end, 100) for r in want.itertuples()
    ]
    assert got.snippet.tolist() == snippets


@pytest.fixture(scope="module")
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    migrations.migrate(connection)
    catalog.install(connection)
    insert(connection, "datasets", pd.DataFrame({"dataset_id": [1], "name": ["d"]}))
    yield connection
    connection.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
    data=st.data(),
    context=st.integers(-2, 90),
)
def test_highlight_offsets_property(
    scratch: duckdb.DuckDBPyConnection, text: str, data: st.DataObject, context: int
) -> None:
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    # one document per example: bound parameters (bulk data goes through Arrow, see insert())
    scratch.execute("DELETE FROM doc_latents; DELETE FROM documents")
    scratch.execute(
        "INSERT INTO documents (doc_id, dataset_id, external_id, text, text_sha256, n_tokens, "
        "run_id) VALUES (1, 1, 'x', ?, '', 1, 1)",
        [text],
    )
    scratch.execute("INSERT INTO doc_latents VALUES (1, 1, 4, 1.0, 1.0, 1, ?, ?)", [start, end])
    row = scratch.execute(
        "SELECT token, highlighted, snippet FROM highlight(1, 4, sae := 1, context := ?)",
        [context],
    ).fetchone()
    assert row == (
        text[start:end],
        text[:start] + "<<" + text[start:end] + ">>" + text[end:],
        mark_reference(text, start, end, context),
    )


# -- the BI-tool contract ------------------------------------------------------------------

PLAIN_DUCKDB = """
import json, sys
import duckdb
assert "saedb" not in sys.modules
con = duckdb.connect(sys.argv[1], read_only=True)
out = {}
for name, sql in json.loads(sys.argv[2]).items():
    out[name] = len(con.execute(sql).fetchall())
out["_comments"] = con.execute(
    "SELECT count(*) FROM duckdb_views() WHERE comment IS NOT NULL AND NOT internal"
).fetchone()[0]
print(json.dumps(out))
"""


def test_plain_duckdb_can_query_every_object(
    con: duckdb.DuckDBPyConnection, store_path: Path, data: dict[str, pd.DataFrame]
) -> None:
    some = data["doc_latents"].query("sae_id == 1").iloc[0]
    examples = {
        "latent_frequency": "SELECT * FROM latent_frequency",
        "diff": "SELECT * FROM diff('alpha', 'beta', threshold := 0.5)",
        "highlight": f"SELECT * FROM highlight({some.doc_id}, {some.latent_id})",
        "top_documents": "SELECT * FROM top_documents(2, k := 5)",
        "normal_sf": "SELECT normal_sf(1.96)",
        "npmi_score": "SELECT npmi_score(3, 5, 6, 10)",
        "resolve_sae": "SELECT resolve_sae(NULL)",
        "mark_span": "SELECT mark_span('abcdef', 2, 3, 1)",
        "diff_doc_sets": "SELECT * FROM diff_doc_sets([3, 6, 9, 12, 15], [18, 21, 24, 27, 30])",
        "diff_one_vs_rest": "SELECT * FROM diff_one_vs_rest('alpha', min_freq := 0.01)",
        "diff_metadata": "SELECT * FROM diff_metadata('parity', 'even', 'odd', dataset := 'beta')",
        "retrieve": "SELECT * FROM retrieve([{'latent_id': 3, 'weight': 1.0}, "
        "{'latent_id': 5, 'weight': 0.5}], k := 5)",
        "retrieve_thresholds": "SELECT * FROM retrieve_thresholds([{'latent_id': 3, "
        "'weight': 1.0}], k := 5)",
        "doc_vectors": "SELECT * FROM doc_vectors([3, 5, 7], datasets := ['alpha', 'beta'])",
        "npmi": "SELECT * FROM npmi(min_count := 1)",
        "npmi_targets": "SELECT * FROM npmi_targets([0, 1, 2])",
        "latent_npmi": "SELECT count(*) FROM latent_npmi",
        "latent_examples": "SELECT * FROM latent_examples(3, n_pos := 3, n_neg := 3, seed := 2)",
        "current_labels": "SELECT count(*) FROM current_labels",
        "latent_near_misses": "SELECT * FROM latent_near_misses(3, n := 3, context := 20)",
        "llm_spend": "SELECT count(*) FROM llm_spend",
        "current_label_embeddings": "SELECT * FROM current_label_embeddings",
        "label_similarity": "SELECT label_similarity(3, 5, model := 'test-embedding')",
        "latents_for_embedding": "SELECT * FROM latents_for_embedding([1.0, 0.0, 0.0], "
        "k := 2, model := 'test-embedding')",
        "latents_for_query": "SELECT * FROM latents_for_query('tone', model := 'test-embedding')",
        "latent_label_neighbors": "SELECT count(*) FROM latent_label_neighbors",
    }
    assert set(examples) == {o.name for o in catalog.load_catalog()}, "add an example call"
    result = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_DUCKDB, str(store_path), json.dumps(examples)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=store_path.parent,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    for name, sql in examples.items():
        assert counts[name] == len(con.execute(sql).fetchall()) > 0, name
    assert counts["_comments"] >= 1
