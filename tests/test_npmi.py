"""Co-occurrence NPMI: the SQL macros npmi / npmi_targets and the materialised table
latent_cooccurrence (saedb.cooccurrence), each checked against a plain numpy computation.

Stores are real DuckDB files with the real schema and catalog, filled with random sparse data
through Arrow: several datasets (one with no documents), documents where nothing fired,
documents not encoded with the SAE (their doc_latents rows must not count), a second SAE,
latents that fire in every document of a dataset, a latent that never fires, rounded
activations (ties, and thresholds equal to stored values).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import saedb
from saedb import catalog, migrations
from saedb.cooccurrence import refresh_cooccurrence, scope_name
from saedb.errors import ConfigError
from saedb.store import Store

DATASETS = {1: "alpha", 2: "beta", 3: "gamma, the third", 4: "empty"}
PAIR_COLUMNS = ["latent_i", "latent_j", "n_i", "n_j", "n_both", "n_docs", "npmi"]
LABEL_COLUMNS = ["label_i", "label_j", "label_similarity"]


# -- building stores -----------------------------------------------------------------------


def random_acts(seed: int, n_docs: int = 240, d_sae: int = 24) -> dict[str, np.ndarray]:
    """Activations (0 = did not fire) for SAE 1 and SAE 2, with each document's dataset."""
    rng = np.random.default_rng(seed)
    dataset = rng.choice([1, 2, 3], size=n_docs, p=[0.45, 0.35, 0.2])
    prob = rng.uniform(0.0, 0.5, size=(4, d_sae))
    acts = np.round(rng.exponential(1.0, size=(n_docs, d_sae)), 1) + 0.1
    acts *= rng.random((n_docs, d_sae)) < prob[dataset]
    acts[dataset == 1, 0] = 1.5  # latents 0 and 1 fire in every document of alpha
    acts[dataset == 1, 1] = 0.5
    acts[:, d_sae - 1] = 0.0  # never fires
    acts[(rng.random(n_docs) < 0.1) & (dataset != 1)] = 0.0  # nothing fired
    encoded = rng.random(n_docs) < 0.9
    acts2 = np.round(rng.exponential(1.0, size=(n_docs, 10)), 1) * (rng.random((n_docs, 10)) < 0.3)
    return {"dataset": dataset, "acts": acts, "encoded": encoded, "acts2": acts2}


def long_rows(acts: np.ndarray, doc_ids: np.ndarray, sae_id: int) -> pa.Table:
    rows, latents = np.nonzero(acts)
    return pa.table(
        {
            "doc_id": pa.array(doc_ids[rows], pa.int64()),
            "sae_id": pa.array(np.full(rows.size, sae_id), pa.int32()),
            "latent_id": pa.array(latents, pa.int32()),
            "max_act": pa.array(acts[rows, latents], pa.float32()),
        }
    )


def build_store(path: Path, data: dict[str, np.ndarray]) -> Path:
    """A store file with the schema, the catalog and ``data`` (see :func:`random_acts`)."""
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        fill(con, data)
    return path


def fill(con: duckdb.DuckDBPyConnection, data: dict[str, np.ndarray]) -> None:
    """Insert ``data`` (see :func:`random_acts`) into an empty store, through Arrow."""
    n_docs = data["acts"].shape[0]
    doc_ids = np.arange(1, n_docs + 1, dtype=np.int64) * 7
    encoded = data["encoded"]
    tables = {
        "datasets": pa.table(
            {
                "dataset_id": pa.array(list(DATASETS), pa.int32()),
                "name": list(DATASETS.values()),
            }
        ),
        "documents": pa.table(
            {
                "doc_id": doc_ids,
                "dataset_id": pa.array(data["dataset"], pa.int32()),
                "external_id": [str(d) for d in doc_ids],
                "text": ["x"] * n_docs,
                "text_sha256": ["0" * 64] * n_docs,
                "n_tokens": pa.array(np.ones(n_docs), pa.int32()),
                "run_id": pa.array(np.ones(n_docs), pa.int32()),
            }
        ),
        "doc_encodings": pa.concat_tables(
            pa.table(
                {
                    "doc_id": doc_ids[encoded],
                    "sae_id": pa.array(np.full(int(encoded.sum()), sae), pa.int32()),
                    "run_id": pa.array(np.ones(int(encoded.sum())), pa.int32()),
                    "n_latents": pa.array(np.zeros(int(encoded.sum())), pa.int32()),
                }
            )
            for sae in (1, 2)
        ),
        # every document's rows, encoded or not: the unencoded ones must not count
        "doc_latents": pa.concat_tables(
            [long_rows(data["acts"], doc_ids, 1), long_rows(data["acts2"], doc_ids, 2)]
        ),
    }
    for table, rows in tables.items():
        con.register("incoming", rows)
        columns = ", ".join(catalog.quote_identifier(c) for c in rows.column_names)
        extra = ""
        if table == "doc_latents":
            columns += ", sum_act, n_active, max_char_start, max_char_end"
            extra = ", max_act, 1, 0, 1"
        con.execute(
            f"INSERT INTO {table} ({columns}) SELECT {', '.join(rows.column_names)}{extra} "
            "FROM incoming"
        )
        con.unregister("incoming")
    for sae, d_sae in ((1, data["acts"].shape[1]), (2, data["acts2"].shape[1])):
        con.execute(
            "INSERT INTO saes (sae_id, name, reader_model, hook_name, layer, architecture, "
            "d_in, d_sae, weights_sha256, path, config) "
            "VALUES (?, ?, 'reader', 'hook', 0, 'topk', 8, ?, 'sha', 'path', '{}')",
            [sae, f"sae{sae}", d_sae],
        )
    con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")


def reference(
    data: dict[str, np.ndarray],
    datasets: list[str] | None = None,
    sae: int = 1,
    min_count: int = 5,
    threshold: float = 0.0,
) -> pd.DataFrame:
    """Every pair, with plain numpy on the dense document x latent matrix."""
    acts = data["acts"] if sae == 1 else data["acts2"]
    chosen = data["encoded"].copy()
    if datasets is not None:
        ids = [i for i, n in DATASETS.items() if n in datasets]
        chosen &= np.isin(data["dataset"], ids)
    fired = (acts[chosen].astype(np.float32) > np.float32(threshold)).astype(np.int64)
    n_docs = int(chosen.sum())
    both = fired.T @ fired
    count = np.diag(both)
    i, j = np.nonzero(np.triu(both >= max(min_count, 1), k=1))
    p_i, p_j, p_ij = count[i] / n_docs, count[j] / n_docs, both[i, j] / n_docs
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.log(p_ij / (p_i * p_j)) / -np.log(p_ij)
    npmi = np.where(both[i, j] == n_docs, 1.0, npmi)
    return pd.DataFrame(
        {
            "latent_i": i,
            "latent_j": j,
            "n_i": count[i],
            "n_j": count[j],
            "n_both": both[i, j],
            "n_docs": n_docs,
            "npmi": npmi,
        }
    )


def assert_pairs_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same pairs and counts; npmi equal to 1e-9 and never NaN or infinite."""
    assert np.isfinite(got.npmi.to_numpy(dtype=float)).all()
    assert ((got.npmi >= -1.0) & (got.npmi <= 1.0)).all()
    got = got[PAIR_COLUMNS].sort_values(["latent_i", "latent_j"]).reset_index(drop=True)
    want = want[PAIR_COLUMNS].sort_values(["latent_i", "latent_j"]).reset_index(drop=True)
    assert len(got) == len(want)
    for column in PAIR_COLUMNS[:-1]:
        assert got[column].astype(np.int64).tolist() == want[column].astype(np.int64).tolist()
    np.testing.assert_allclose(got.npmi.to_numpy(float), want.npmi.to_numpy(float), atol=1e-9)


def npmi_sql(con: duckdb.DuckDBPyConnection, **params: object) -> pd.DataFrame:
    names = ", ".join(f"{k} := ${k}" for k in params)
    return con.execute(f"SELECT * FROM npmi({names})", params).fetchdf()


def table_rows(store: Store, scope: str = "all", sae: int = 1) -> pd.DataFrame:
    return store.sql(
        "SELECT * EXCLUDE (computed_at) FROM latent_cooccurrence "
        "WHERE sae_id = ? AND scope = ? ORDER BY latent_i, latent_j",
        [sae, scope],
    )


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return random_acts(seed=11)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Iterator[Store]:
    path = build_store(tmp_path_factory.mktemp("npmi") / "store.duckdb", data)
    with saedb.open(path) as opened:
        yield opened


# -- the SQL macros against numpy ------------------------------------------------------------

SCOPES = [
    None,
    ["alpha"],
    ["beta", "gamma, the third"],
    ["alpha", "empty"],
    ["empty"],
]


@pytest.mark.parametrize("datasets", SCOPES, ids=str)
@pytest.mark.parametrize(
    "min_count, threshold, sae", [(5, 0.0, 1), (1, 0.0, 1), (3, 0.5, 1), (0, 1.1, 1), (2, 0.0, 2)]
)
def test_npmi_macro_matches_numpy(
    store: Store,
    data: dict[str, np.ndarray],
    datasets: list[str] | None,
    min_count: int,
    threshold: float,
    sae: int,
) -> None:
    got = npmi_sql(store.con, datasets=datasets, sae=sae, min_count=min_count, threshold=threshold)
    assert list(got.columns) == PAIR_COLUMNS + LABEL_COLUMNS
    want = reference(data, datasets, sae, min_count, threshold)
    assert_pairs_equal(got, want)
    # sorted by npmi, largest first, ties by (latent_i, latent_j)
    order = got.sort_values(["npmi", "latent_i", "latent_j"], ascending=[False, True, True])
    assert got.index.tolist() == order.index.tolist()


def test_latents_firing_everywhere_have_npmi_one(store: Store) -> None:
    got = npmi_sql(store.con, datasets=["alpha"], min_count=1)
    row = got[(got.latent_i == 0) & (got.latent_j == 1)].iloc[0]
    assert row.n_both == row.n_docs == row.n_i == row.n_j
    assert row.npmi == 1.0
    # a latent everywhere is independent of every other latent: npmi 0 up to rounding
    others = got[(got.latent_i == 0) & (got.latent_j > 1)]
    assert len(others) and np.allclose(others.npmi, 0.0, atol=1e-12)


@pytest.mark.parametrize("datasets", [None, ["beta", "gamma, the third"]], ids=str)
@pytest.mark.parametrize("min_count, threshold", [(5, 0.0), (1, 0.5)])
def test_npmi_targets_matches_numpy(
    store: Store,
    data: dict[str, np.ndarray],
    datasets: list[str] | None,
    min_count: int,
    threshold: float,
) -> None:
    d_sae = data["acts"].shape[1]
    targets = [0, 3, 3, 7, d_sae - 1, 999]  # a duplicate, one that never fires, an unknown id
    got = store.con.execute(
        "SELECT * FROM npmi_targets($t, datasets := $d, min_count := $m, threshold := $x)",
        {"t": targets, "d": datasets, "m": min_count, "x": threshold},
    ).fetchdf()
    assert list(got.columns) == [
        "target_latent",
        "latent_id",
        "n_target",
        "n_latent",
        "n_both",
        "npmi",
        *LABEL_COLUMNS,
    ]
    pairs = reference(data, datasets, 1, min_count, threshold)
    both_ways = pd.concat(
        [
            pairs.rename(columns={"latent_i": "target_latent", "latent_j": "latent_id"}),
            pairs.rename(
                columns={
                    "latent_j": "target_latent",
                    "latent_i": "latent_id",
                    "n_j": "n_i",
                    "n_i": "n_j",
                }
            ),
        ]
    )
    want = both_ways[both_ways.target_latent.isin(targets)]
    assert set(got.target_latent) <= {0, 3, 7}
    assert_pairs_equal(
        got.rename(
            columns={
                "target_latent": "latent_i",
                "latent_id": "latent_j",
                "n_target": "n_i",
                "n_latent": "n_j",
            }
        ).assign(n_docs=0),
        want.rename(columns={"target_latent": "latent_i", "latent_id": "latent_j"}).assign(
            n_docs=0
        ),
    )
    order = got.sort_values(["target_latent", "npmi", "latent_id"], ascending=[True, False, True])
    assert got.index.tolist() == order.index.tolist()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM npmi(datasets := ['alpha', 'nope', 'zilch'])",
        "SELECT * FROM npmi_targets([1, 2], datasets := ['zilch', 'nope'])",
    ],
)
def test_unknown_datasets_are_named(store: Store, sql: str) -> None:
    with pytest.raises(duckdb.Error, match="there is no dataset named nope, zilch"):
        store.con.execute(sql).fetchall()


def test_unknown_dataset_is_named_even_in_an_empty_store(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "empty.duckdb")) as con:
        migrations.migrate(con)
        catalog.install(con)
        for sql in (
            "SELECT * FROM npmi(datasets := ['nope'], sae := 1)",
            "SELECT * FROM npmi_targets([1], datasets := ['nope'], sae := 1)",
        ):
            with pytest.raises(duckdb.Error, match="there is no dataset named nope"):
                con.execute(sql).fetchall()
        assert con.execute("SELECT count(*) FROM npmi(sae := 1)").fetchall() == [(0,)]


def test_plain_duckdb_can_query_the_objects(store: Store, tmp_path: Path) -> None:
    """No saedb, no Python UDFs: a separate plain duckdb process runs the macros and view."""
    refresh_cooccurrence(store, progress=False)
    store.con.execute("CHECKPOINT")
    copy = tmp_path / "copy.duckdb"
    store.con.execute(f"ATTACH '{copy}' AS plain_copy")
    store.con.execute("COPY FROM DATABASE store TO plain_copy")
    store.con.execute("DETACH plain_copy")
    script = (
        "import duckdb, sys\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "for q in ('SELECT count(*) FROM npmi()', 'SELECT count(*) FROM npmi_targets([0, 2])',\n"
        "          'SELECT count(*) FROM latent_npmi'):\n"
        "    print(con.execute(q).fetchall()[0][0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    counts = [int(x) for x in result.stdout.split()]
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 2 * counts[0]


# -- the materialised table -----------------------------------------------------------------


@pytest.mark.parametrize("datasets", SCOPES, ids=str)
@pytest.mark.parametrize("min_count, threshold, sae", [(5, 0.0, 1), (1, 0.5, 1), (2, 0.0, 2)])
def test_refresh_equals_the_macro(
    store: Store,
    data: dict[str, np.ndarray],
    datasets: list[str] | None,
    min_count: int,
    threshold: float,
    sae: int,
) -> None:
    summary = refresh_cooccurrence(
        store,
        datasets=datasets,
        sae=sae,
        min_count=min_count,
        threshold=threshold,
        block_latents=5,
        progress=False,
    )
    scope = scope_name(datasets)
    assert summary["scope"] == scope and summary["sae_id"] == sae
    got = table_rows(store, scope, sae)
    assert (got.sae_id == sae).all() and (got.scope == scope).all()
    macro = npmi_sql(
        store.con, datasets=datasets, sae=sae, min_count=min_count, threshold=threshold
    )
    assert_pairs_equal(got, macro)
    assert_pairs_equal(got, reference(data, datasets, sae, min_count, threshold))
    assert summary["n_pairs"] == len(got)
    ids = [i for i, n in DATASETS.items() if datasets is None or n in datasets]
    assert summary["n_docs"] == int((data["encoded"] & np.isin(data["dataset"], ids)).sum())
    recorded = store.sql(
        "SELECT datasets, min_count, threshold, n_docs, n_pairs FROM latent_cooccurrence_scopes "
        "WHERE sae_id = ? AND scope = ?",
        [sae, scope],
    )
    assert len(recorded) == 1
    assert recorded.n_pairs[0] == len(got) and recorded.min_count[0] == min_count
    assert recorded.threshold[0] == threshold and recorded.n_docs[0] == summary["n_docs"]
    listed = store.con.execute(
        "SELECT datasets FROM latent_cooccurrence_scopes WHERE sae_id = ? AND scope = ?",
        [sae, scope],
    ).fetchall()[0][0]
    assert listed == (None if datasets is None else sorted(datasets))


def test_refresh_is_idempotent_and_blocking_does_not_matter(store: Store) -> None:
    results = []
    for block in (None, 1, 2, 7, 1000, None):
        summary = refresh_cooccurrence(
            store, datasets=["alpha", "beta"], min_count=2, block_latents=block, progress=False
        )
        results.append(table_rows(store, summary["scope"]))
        assert summary["n_blocks"] == math.ceil(summary["n_latents"] / summary["block_latents"])
    for other in results[1:]:
        pd.testing.assert_frame_equal(results[0], other)
    # other scopes and SAEs are left alone
    refresh_cooccurrence(store, datasets=["alpha"], min_count=2, progress=False)
    assert len(table_rows(store, "alpha,beta")) == len(results[0])
    counts = store.sql(
        "SELECT count(*) AS n FROM latent_cooccurrence_scopes WHERE scope = 'alpha,beta'"
    )
    assert counts.n[0] == 1


def test_refresh_rolls_back_when_interrupted(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from saedb import cooccurrence

    refresh_cooccurrence(store, datasets=["beta"], min_count=1, progress=False)
    before = table_rows(store, "beta")
    calls = []

    def failing_append(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(*args)

    original = cooccurrence._append
    monkeypatch.setattr(cooccurrence, "_append", failing_append)
    with pytest.raises(KeyboardInterrupt):
        refresh_cooccurrence(store, datasets=["beta"], min_count=3, block_latents=2, progress=False)
    pd.testing.assert_frame_equal(table_rows(store, "beta"), before)


def test_latent_npmi_view_shows_pairs_both_ways(store: Store) -> None:
    refresh_cooccurrence(store, datasets=["gamma, the third"], min_count=1, progress=False)
    scope = scope_name(["gamma, the third"])
    assert scope == "gamma\\, the third"
    pairs = table_rows(store, scope)
    view = store.sql(
        "SELECT * EXCLUDE (computed_at) FROM latent_npmi WHERE sae_id = 1 AND scope = ?", [scope]
    )
    assert list(view.columns) + ["computed_at"] == list(
        {o.name: o for o in catalog.load_catalog()}["latent_npmi"].columns
    )
    assert len(view) == 2 * len(pairs)
    assert (view.sae == "sae1").all() and (view.min_count == 1).all()
    mine = view[view.latent_id == 3]
    want = pairs[(pairs.latent_i == 3) | (pairs.latent_j == 3)]
    assert sorted(mine.other_latent) == sorted(
        np.where(want.latent_i == 3, want.latent_j, want.latent_i)
    )
    assert np.isfinite(view.npmi).all()


def test_refresh_refuses_bad_arguments(store: Store) -> None:
    with pytest.raises(ConfigError, match="no dataset named 'nope'"):
        refresh_cooccurrence(store, datasets=["alpha", "nope"], progress=False)
    with pytest.raises(ConfigError, match="empty list"):
        refresh_cooccurrence(store, datasets=[], progress=False)
    with pytest.raises(ConfigError, match="block_latents"):
        refresh_cooccurrence(store, block_latents=0, progress=False)
    with pytest.raises(ConfigError, match="threshold"):
        refresh_cooccurrence(store, threshold=float("nan"), progress=False)
    with pytest.raises(ConfigError, match="not found"):
        refresh_cooccurrence(store, sae=99, progress=False)


def test_scope_names_are_unambiguous() -> None:
    assert scope_name(None) == "all"
    assert scope_name("beta") == scope_name(["beta"]) == "beta"
    assert scope_name(["beta", "alpha", "beta"]) == "alpha,beta"
    assert scope_name(["all"]) == "\\all" != scope_name(None)
    assert scope_name(["a,b"]) != scope_name(["a", "b"])
    assert scope_name(["a\\", "b"]) != scope_name(["a\\,b"])


def test_single_document_store(tmp_path: Path) -> None:
    data = {
        "dataset": np.array([2]),
        "acts": np.array([[0.0, 1.0, 2.0, 0.3]]),
        "encoded": np.array([True]),
        "acts2": np.zeros((1, 3)),
    }
    with saedb.open(build_store(tmp_path / "one.duckdb", data)) as one:
        got = npmi_sql(one.con, min_count=1)
        assert got[["latent_i", "latent_j", "npmi"]].values.tolist() == [
            [1, 2, 1.0],
            [1, 3, 1.0],
            [2, 3, 1.0],
        ]
        refresh_cooccurrence(one, min_count=1, progress=False)
        assert_pairs_equal(table_rows(one), got)
        assert npmi_sql(one.con, min_count=2).empty
        assert npmi_sql(one.con, datasets=["alpha"], min_count=1).empty
        summary = refresh_cooccurrence(one, datasets=["alpha"], min_count=1, progress=False)
        assert summary["n_docs"] == 0 and summary["n_pairs"] == 0


def test_scipy_is_imported_only_when_refreshing() -> None:
    script = "import sys, saedb.cooccurrence; print('scipy' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# -- property tests -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    empty = {
        "dataset": np.array([1]),
        "acts": np.zeros((1, 1)),
        "encoded": np.array([False]),
        "acts2": np.zeros((1, 1)),
    }
    with saedb.open(build_store(tmp_path_factory.mktemp("prop") / "p.duckdb", empty)) as s:
        yield s


@st.composite
def small_stores(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n_docs = draw(st.integers(1, 9))
    d_sae = draw(st.integers(1, 7))
    cells = st.sampled_from([0.0, 0.0, 0.5, 1.0])
    acts = np.array(
        draw(
            st.lists(
                st.lists(cells, min_size=d_sae, max_size=d_sae), min_size=n_docs, max_size=n_docs
            )
        )
    )
    dataset = np.array(draw(st.lists(st.sampled_from([1, 2, 3]), min_size=n_docs, max_size=n_docs)))
    encoded = np.array(draw(st.lists(st.booleans(), min_size=n_docs, max_size=n_docs)))
    return {"dataset": dataset, "acts": acts, "encoded": encoded, "acts2": np.zeros((n_docs, 1))}


def refill(store: Store, data: dict[str, np.ndarray]) -> None:
    """Replace the scratch store's documents and latents with ``data``."""
    con = store.con
    for table in ("doc_latents", "doc_encodings", "documents", "datasets", "saes", "settings"):
        con.execute(f"DELETE FROM {table}")
    con.execute("DELETE FROM latent_cooccurrence")
    con.execute("DELETE FROM latent_cooccurrence_scopes")
    fill(con, data)


@settings(max_examples=40, deadline=None)
@given(
    data=small_stores(),
    datasets=st.sampled_from([None, ["alpha"], ["beta", "gamma, the third"]]),
    min_count=st.integers(0, 3),
    threshold=st.sampled_from([0.0, 0.5]),
    block=st.integers(1, 8),
)
def test_property_all_paths_agree(
    scratch: Store,
    data: dict[str, np.ndarray],
    datasets: list[str] | None,
    min_count: int,
    threshold: float,
    block: int,
) -> None:
    refill(scratch, data)
    want = reference(data, datasets, 1, min_count, threshold)
    got = npmi_sql(scratch.con, datasets=datasets, min_count=min_count, threshold=threshold)
    assert_pairs_equal(got, want)
    refresh_cooccurrence(
        scratch,
        datasets=datasets,
        min_count=min_count,
        threshold=threshold,
        block_latents=block,
        progress=False,
    )
    assert_pairs_equal(table_rows(scratch, scope_name(datasets)), want)
    targets = scratch.con.execute(
        "SELECT * FROM npmi_targets(range(0, 8), datasets := $d, min_count := $m, threshold := $x)",
        {"d": datasets, "m": min_count, "x": threshold},
    ).fetchdf()
    assert len(targets) == 2 * len(want)
    assert np.isfinite(targets.npmi.to_numpy(float)).all()


def test_npmi_score_edges() -> None:
    con = duckdb.connect()
    from saedb import catalog

    catalog.install(con, [o for o in catalog.load_catalog() if o.name == "npmi_score"])
    got = con.execute(
        "SELECT npmi_score(10, 10, 10, 10), npmi_score(25, 50, 50, 100), "
        "npmi_score(5, 5, 5, 100), npmi_score(1, 90, 90, 100)"
    ).fetchall()[0]
    assert got[0] == 1.0  # fired together in every document
    assert abs(got[1]) < 1e-12  # independent: p(i,j) = p(i) p(j)
    assert abs(got[2] - 1.0) < 1e-12  # always together
    assert -1.0 <= got[3] < 0  # avoid each other
