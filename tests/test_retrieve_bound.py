"""retrieve's shortcut (a first pass over the rows above retrieve_thresholds) against numpy.

tests/test_retrieve.py's stores have no latent_counts, so retrieve sums every document there.
Here a real DuckDB file holds 6,000 documents shaped like SAE embeddings (Zipf-like latent
popularity, exponential activations, one latent with negative activations, duplicated
documents that tie) with latent_counts computed as Store computes them, so the bound holds
and most documents are never summed. Each case checks, with numpy, that the shortcut really
applied (or really did not), and that the answer is the plain top k all the same: with the
counts current, stale or gone, with negative weights, with a document planted just under
every threshold and one that only the unseen-latent term of the bound keeps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from test_retrieve import retrieve_reference, run_retrieve
from test_sql_analyses import DATASETS, insert

from saedb import catalog, migrations
from saedb.store import REFRESH_LATENT_COUNTS_SQL

N_DOCS = 6000
N_LATENTS = 60
NEGATIVE_LATENT = 59  # fires with negative max_act (as abstopk SAEs can)
WORDS = ["alpha", "beta", "gamma", "delta", "naïve", "漢字", "🎉", "zeta"]


def make_data(seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 12))) for _ in range(N_DOCS)]
    doc_ids = np.arange(1, N_DOCS + 1, dtype=np.int64) * 2
    documents = pd.DataFrame(
        {
            "doc_id": doc_ids,
            "dataset_id": rng.choice([1, 2, 3], size=N_DOCS).astype(np.int32),
            "external_id": [f"x{i}" for i in range(N_DOCS)],
            "text": texts,
            "text_sha256": ["0" * 64] * N_DOCS,
            "n_tokens": np.array([len(t.split()) for t in texts], dtype=np.int32),
            "run_id": np.ones(N_DOCS, dtype=np.int32),
        }
    )
    popularity = 0.7 / np.arange(1, N_LATENTS + 1) ** 0.7
    scale = rng.uniform(0.5, 3.0, size=N_LATENTS)
    fired = rng.random((N_DOCS, N_LATENTS)) < popularity
    acts = rng.exponential(scale, size=(N_DOCS, N_LATENTS)).astype(np.float32)
    acts[:, NEGATIVE_LATENT] *= -1
    # every 50th document copies the rows of the one before it: whole documents tie
    fired[1::50] = fired[0:-1:50]
    acts[1::50] = acts[0:-1:50]
    doc_index, latent = np.nonzero(fired)
    lengths = np.array([len(t) for t in texts])
    start = (rng.random(len(doc_index)) * (lengths[doc_index] - 1)).astype(np.int32)
    doc_latents = pd.DataFrame(
        {
            "doc_id": doc_ids[doc_index],
            "sae_id": np.ones(len(doc_index), dtype=np.int32),
            "latent_id": latent.astype(np.int32),
            "max_act": acts[doc_index, latent],
            "sum_act": acts[doc_index, latent],
            "n_active": np.ones(len(doc_index), dtype=np.int32),
            "max_char_start": start,
            "max_char_end": start + 1,
        }
    ).sort_values(["latent_id", "doc_id"])
    doc_encodings = pd.DataFrame(
        {
            "doc_id": doc_ids,
            "sae_id": np.ones(N_DOCS, dtype=np.int32),
            "run_id": np.ones(N_DOCS, dtype=np.int32),
            "n_latents": fired.sum(axis=1).astype(np.int32),
        }
    )
    return {"documents": documents, "doc_encodings": doc_encodings, "doc_latents": doc_latents}


@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return make_data()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data: dict[str, pd.DataFrame]) -> Path:
    path = tmp_path_factory.mktemp("bound") / "store.duckdb"
    datasets = pd.DataFrame({"dataset_id": [1, 2, 3], "name": [DATASETS[i] for i in (1, 2, 3)]})
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        insert(con, "datasets", datasets.astype({"dataset_id": np.int32}))
        for table in ("documents", "doc_encodings", "doc_latents"):
            insert(con, table, data[table])
        con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
        for statement in REFRESH_LATENT_COUNTS_SQL:
            con.execute(statement)
    return path


@pytest.fixture()
def con(built: Path, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable copy of the store, so that a test may change it."""
    path = tmp_path / "store.duckdb"
    shutil.copy(built, path)
    connection = duckdb.connect(str(path))
    yield connection
    connection.close()


def current(con: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame]:
    """The store's tables as retrieve_reference takes them."""
    return {t: con.execute(f"SELECT * FROM {t}").df() for t in ("documents", "doc_latents")}


def shortcut_applies(
    con: duckdb.DuckDBPyConnection,
    pairs: list[tuple[int, float]],
    k: int,
    datasets: list[str] | None = None,
) -> bool:
    """Whether retrieve's bound holds on this store: recomputed with numpy from
    retrieve_thresholds' thresholds (the rounding allowances are far below the margins)."""
    kwargs = "" if datasets is None else ", datasets := ?"
    params = [[{"latent_id": i, "weight": w} for i, w in pairs], k]
    rows = con.execute(
        f"SELECT latent_id, weight, threshold, budget FROM retrieve_thresholds(?, k := ?{kwargs})",
        params + ([datasets] if datasets is not None else []),
    ).fetchall()
    threshold = {r[0]: r[2] for r in rows}
    weight = {r[0]: r[1] for r in rows}
    budget = rows[0][3] if rows else None
    total = sum(threshold.values())
    lat = current(con)["doc_latents"]
    docs = current(con)["documents"].set_index("doc_id")
    lat = lat[lat.latent_id.isin(list(weight))]
    if datasets is not None:
        ids = [i for i, n in DATASETS.items() if n in datasets]
        lat = lat[lat.doc_id.map(docs.dataset_id).isin(ids)]
    c = lat.latent_id.map(weight).to_numpy() * lat.max_act.to_numpy(dtype=np.float64)
    t = lat.latent_id.map(threshold).to_numpy()
    strong = (c > t) | (c < 0)
    seen = pd.Series(c[strong]).groupby(lat.doc_id.to_numpy()[strong]).sum()
    if budget is None or not budget > 0 or len(seen) < k:
        return False
    kth = np.sort(seen.to_numpy())[-k]
    return total * (1 + 1e-6) < kth


def check(con: duckdb.DuckDBPyConnection, pairs, k: int, datasets=None) -> list[dict]:
    kwargs = {"k": k} | ({} if datasets is None else {"datasets": datasets})
    got = run_retrieve(con, pairs, **kwargs)
    want = retrieve_reference(current(con), pairs, 1, k, datasets)
    assert [r["doc_id"] for r in got] == [r["doc_id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], rel=1e-12)
        assert g["contributions"] == w["contributions"]
        assert g["snippet"] == w["snippet"]
    assert got, "the case should test something"
    return got


PRUNED = [
    ([(0, 1.0), (1, 0.8), (2, 0.5), (5, 1.2)], 10, None),
    ([(i, 0.2 + 0.1 * i) for i in range(10)], 100, None),
    ([(0, 1.0), (3, 2.0), (7, 0.5)], 25, ["beta"]),
    ([(0, 1.0), (4, 1.0), (NEGATIVE_LATENT, 1.0), (9, -0.5)], 20, None),  # negative rows
    ([(2, 1.0), (2, 0.5), (11, 1.0), (58, 3.0)], 1, ["alpha", "gamma's"]),  # 2 listed twice
]


@pytest.mark.parametrize("pairs, k, datasets", PRUNED)
def test_the_shortcut_gives_the_exact_top_k(con, pairs, k, datasets) -> None:
    assert shortcut_applies(con, pairs, k, datasets), "the case should take the shortcut"
    check(con, pairs, k, datasets)


def test_without_the_shortcut_the_answer_is_the_same(con) -> None:
    pairs = [(0, 1.0), (1, 0.8), (2, 0.5)]
    # more documents than fire: the bound cannot hold
    assert not shortcut_applies(con, pairs, N_DOCS)
    check(con, pairs, N_DOCS)
    # every weight negative: no threshold, no budget
    negative = [(0, -1.0), (1, -0.3)]
    assert not shortcut_applies(con, negative, 10)
    check(con, negative, 10)
    # no counts at all
    con.execute("DELETE FROM latent_counts")
    assert not shortcut_applies(con, pairs, 10)
    check(con, pairs, 10)


def test_stale_counts_change_the_work_not_the_answer(con) -> None:
    pairs = [(0, 1.0), (1, 0.8), (2, 0.5), (5, 1.2)]
    before = con.execute("SELECT * FROM retrieve_thresholds(?, k := 10)", [pairs_arg(pairs)])
    before = before.fetchall()
    # counts that say the latents fire 100x as often, 100x as weakly: other thresholds
    con.execute("UPDATE latent_counts SET n_fired = n_fired * 100")
    after = con.execute("SELECT * FROM retrieve_thresholds(?, k := 10)", [pairs_arg(pairs)])
    assert after.fetchall() != before
    check(con, pairs, 10)
    # and new strong rows written without refreshing the counts
    new_rows = pd.DataFrame(
        {
            "doc_id": np.array([4, 6], dtype=np.int64),  # existing documents, new latents rows
            "sae_id": np.ones(2, dtype=np.int32),
            "latent_id": np.array([58, 58], dtype=np.int32),
            "max_act": np.array([1000.0, 999.0], dtype=np.float32),
            "sum_act": np.ones(2, dtype=np.float32),
            "n_active": np.ones(2, dtype=np.int32),
            "max_char_start": np.zeros(2, dtype=np.int32),
            "max_char_end": np.ones(2, dtype=np.int32),
        }
    )
    con.execute("DELETE FROM doc_latents WHERE latent_id = 58 AND doc_id IN (4, 6)")
    insert(con, "doc_latents", new_rows)
    got = check(con, [*pairs, (58, 1.0)], 10)
    assert {r["doc_id"] for r in got[:2]} == {4, 6}


def pairs_arg(pairs: list[tuple[int, float]]) -> list[dict]:
    return [{"latent_id": i, "weight": w} for i, w in pairs]


def planted(doc_id: int, acts: dict[int, float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "doc_id": np.full(len(acts), doc_id, dtype=np.int64),
            "sae_id": np.ones(len(acts), dtype=np.int32),
            "latent_id": np.array(list(acts), dtype=np.int32),
            "max_act": np.array(list(acts.values()), dtype=np.float32),
            "sum_act": np.ones(len(acts), dtype=np.float32),
            "n_active": np.ones(len(acts), dtype=np.int32),
            "max_char_start": np.zeros(len(acts), dtype=np.int32),
            "max_char_end": np.ones(len(acts), dtype=np.int32),
        }
    )


def test_documents_near_the_thresholds(con) -> None:
    """Two documents written after the counts (so the thresholds stay as they were): one
    just under every threshold, which the bound says cannot reach the top k, and one with a
    single row above its threshold, below the k-th best score, whose rows just under the
    others lift it into the top k: only the thresholds of its unseen latents keep it in the
    running."""
    pairs = [(i, 1.0) for i in range(12)]
    k = 5
    rows = con.execute(
        "SELECT latent_id, threshold FROM retrieve_thresholds(?, k := ?)", [pairs_arg(pairs), k]
    ).fetchall()
    threshold = {i: t for i, t in rows if t > 0}  # rarer latents have 0: all rows count
    assert len(threshold) >= 4, rows
    top = check(con, pairs, k)
    under = {i: float(np.nextafter(np.float32(t), np.float32(0))) for i, t in threshold.items()}
    # the other: its one row above a threshold is below the k-th best score, and only its
    # rows just under the other thresholds lift it into the top k (just above the k-th)
    first = min(threshold, key=lambda i: threshold[i])
    rest = sum(v for i, v in under.items() if i != first)
    peak = top[-1]["score"] - rest + 1e-3
    assert threshold[first] < peak < top[-1]["score"]
    best = dict(under) | {first: peak}
    docs = con.execute("SELECT doc_id FROM documents ORDER BY doc_id DESC LIMIT 2").fetchall()
    low_doc, best_doc = (d for (d,) in docs)
    for doc, acts in ((low_doc, under), (best_doc, best)):
        con.execute(f"DELETE FROM doc_latents WHERE doc_id = {doc}")
        insert(con, "doc_latents", planted(doc, acts))
    assert shortcut_applies(con, pairs, k)
    got = check(con, pairs, k)
    assert [r["doc_id"] for r in got] == [r["doc_id"] for r in top[:-1]] + [best_doc]
    assert low_doc not in [r["doc_id"] for r in got]


def test_thresholds_follow_the_model(con) -> None:
    """retrieve_thresholds against the water-filling it describes, computed with numpy."""
    pairs = [(0, 1.0), (1, 0.8), (3, 0.5), (8, 1.5), (30, 1.0), (40, 0.0), (9, -1.0)]
    k = 50
    got = con.execute("SELECT * FROM retrieve_thresholds(?, k := ?)", [pairs_arg(pairs), k]).df()
    assert got.latent_id.tolist() == sorted(i for i, _ in pairs)
    counts = (
        con.execute(
            "SELECT latent_id, sum(n_fired) AS n, sum(sum_max_act) AS s FROM latent_counts "
            "GROUP BY latent_id"
        )
        .df()
        .set_index("latent_id")
    )
    weight = dict(pairs)
    n = np.array([counts.n[i] for i, _ in pairs], dtype=np.float64)
    mu = np.array([weight[i] * counts.s[i] / counts.n[i] for i, _ in pairs])
    positive = mu > 0
    budget = 0.6 * max(m * np.log(c / k) for m, c in zip(mu[positive], n[positive], strict=True))

    def spent(level: float) -> float:
        a = np.log(n[positive] / mu[positive])
        return float(np.sum(mu[positive] * np.maximum(a - level, 0)))

    lo, hi = -50.0, 50.0
    for _ in range(200):  # bisection on the water level
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spent(mid) > budget else (lo, mid)
    a = np.log(n / np.where(positive, mu, 1.0))
    want = np.where(positive, mu * np.maximum(a - lo, 0), 0.0)
    by_latent = got.set_index("latent_id")
    for (i, _), t in zip(pairs, want, strict=True):
        assert by_latent.threshold[i] == pytest.approx(t, rel=1e-9, abs=1e-12), i
    assert by_latent.threshold.sum() == pytest.approx(budget, rel=1e-9)
    assert by_latent.budget.tolist() == pytest.approx([budget] * len(pairs), rel=1e-12)
    assert by_latent.threshold[40] == 0 and by_latent.threshold[9] == 0
    with pytest.raises(duckdb.Error, match="no dataset named nope"):
        con.execute(
            "SELECT * FROM retrieve_thresholds(?, datasets := ['nope'])", [pairs_arg(pairs)]
        ).fetchall()


def test_a_document_under_every_threshold_is_found_when_it_can_rank(con) -> None:
    """Counts that overstate the activations give thresholds whose sum a document can reach
    with no row above any of them; when such a document belongs in the top k the bound cannot
    hold, and retrieve must find it anyway."""
    pairs = [(i, 1.0) for i in range(12)]
    con.execute("UPDATE latent_counts SET sum_max_act = sum_max_act * 4")
    (low_doc,) = con.execute("SELECT max(doc_id) FROM documents").fetchone()
    for k in (5, 10, 20, 40, 80, 160, 320):  # the thresholds depend on k
        rows = con.execute(
            "SELECT latent_id, threshold FROM retrieve_thresholds(?, k := ?)",
            [pairs_arg(pairs), k],
        ).fetchall()
        under = {i: float(np.nextafter(np.float32(t), np.float32(0))) for i, t in rows if t > 0}
        con.execute(f"DELETE FROM doc_latents WHERE doc_id = {low_doc}")
        insert(con, "doc_latents", planted(low_doc, under))
        want = retrieve_reference(current(con), pairs, 1, k)
        if low_doc in [r["doc_id"] for r in want]:
            break
    else:
        pytest.fail("the planted document never reaches the top k")
    assert not shortcut_applies(con, pairs, k)
    got = check(con, pairs, k)
    assert low_doc in [r["doc_id"] for r in got]
