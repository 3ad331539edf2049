"""The evaluation's metric functions, checked against hand-computed values, its SQL pieces
against numpy on a small synthetic store, and its report writer. Seconds, no model."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from eval import metrics
from eval.corpora import email_text
from eval.planted import NPMI_DOCS_SQL
from eval.report import StudyResult, Table, fmt, render
from eval.retrieval import bm25_rank
from eval.search import LabelIndex
from saedb import catalog, migrations
from saedb.labels import EMBEDDING_MODEL

# -- metrics by hand ---------------------------------------------------------------------------


def test_average_precision_by_hand():
    # relevant at ranks 1, 3, 5: (1/1 + 2/3 + 3/5) / 3
    assert metrics.average_precision([1, 2, 3, 4, 5], {1, 3, 5}) == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3
    )
    # a relevant item never ranked contributes 0: (1/2) / 2
    assert metrics.average_precision([2, 1], {1, 9}) == pytest.approx(0.25)
    assert metrics.average_precision([1, 2], set()) == 0.0
    assert metrics.average_precision([3, 4], {1}) == 0.0


def test_mean_average_precision_by_hand():
    runs = [([1, 2, 3], {1}), ([1, 2, 3], {3}), ([1, 2], {1, 2})]
    assert metrics.mean_average_precision(runs) == pytest.approx((1 + 1 / 3 + 1) / 3)


def test_full_ranking_keeps_prefix_and_covers_universe():
    universe = list(range(10))
    r = metrics.full_ranking([7, 3], universe, seed=1)
    assert r[:2] == [7, 3]
    assert sorted(r) == universe
    assert r == metrics.full_ranking([7, 3], universe, seed=1)  # deterministic


def test_precision_at_k_by_hand():
    assert metrics.precision_at_k([True, False, True], 2) == 0.5
    # fewer items than k: the missing ones are misses
    assert metrics.precision_at_k([True, False, True], 5) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        metrics.precision_at_k([True], 0)


def test_keyword_hit_prefix_only_for_long_keywords():
    assert metrics.keyword_hit(["programmers / code"], ["program"]) == "program"
    assert metrics.keyword_hit(["help desk"], ["he"]) is None
    assert metrics.keyword_hit(["he said"], ["he"]) == "he"
    assert metrics.keyword_hit(["no match", "Money back"], ["cash", "money"]) == "money"


def test_planted_rank_by_hand():
    assert metrics.planted_rank([5, 3, 9, 7], {7, 9}) == (3, 9)
    assert metrics.planted_rank([5, 3], {7}) == (0, -1)


def test_phrase_latents_by_hand():
    starts = {1: 10, 2: 20}  # planted docs and where their phrase starts
    peaks = [
        (1, 100, 12, 15),  # latent 100 peaks inside the phrase in both docs
        (2, 100, 25, 27),
        (1, 200, 3, 5),  # latent 200 peaks before it in doc 1 and inside it in doc 2
        (2, 200, 21, 22),
        (1, 300, 2, 4),  # latent 300 never inside
        (9, 400, 50, 51),  # not a planted doc
    ]
    assert metrics.phrase_latents(peaks, starts, 0.5) == {100: 1.0, 200: 0.5}
    assert metrics.phrase_latents(peaks, starts, 0.75) == {100: 1.0}


def test_adjusted_rand_by_hand():
    # contingency (0,0)=2, (0,1)=1, (1,1)=3: index 4, expected 6*7/15, max 6.5
    truth, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]
    assert metrics.adjusted_rand(truth, pred) == pytest.approx((4 - 2.8) / (6.5 - 2.8))
    assert metrics.adjusted_rand(["a", "a", "b"], [5, 5, -1]) == pytest.approx(1.0)


def test_npmi_formula_by_hand():
    # p(i)=p(j)=1/2, p(i,j)=1/4: independent -> 0
    assert metrics.npmi(25, 50, 50, 100) == pytest.approx(0.0)
    # always together -> 1
    assert metrics.npmi(10, 10, 10, 100) == pytest.approx(1.0)
    assert metrics.npmi(100, 100, 100, 100) == 1.0


# -- SQL pieces against numpy ---------------------------------------------------------------


@pytest.fixture
def synthetic(tmp_path: Path):
    """A store with one dataset of 60 documents and a random binary latent matrix."""
    rng = np.random.default_rng(3)
    fired = rng.random((60, 12)) < rng.uniform(0.05, 0.6, size=12)
    fired[:20, 0] = True
    fired[:20, 5] = True  # latents 0 and 5 co-fire in the first 20 documents
    path = tmp_path / "synthetic.duckdb"
    con = duckdb.connect(str(path))
    migrations.migrate(con)
    catalog.install(con)
    doc_ids = np.arange(1, 61, dtype=np.int64)
    rows, lats = np.nonzero(fired)
    con.execute("INSERT INTO datasets (dataset_id, name) VALUES (1, 'd')")
    con.register(
        "docs",
        pa.table({"doc_id": doc_ids, "external_id": [str(d) for d in doc_ids]}),
    )
    con.execute(
        "INSERT INTO documents (doc_id, dataset_id, external_id, text, text_sha256, n_tokens, "
        "run_id) SELECT doc_id, 1, external_id, 'x', repeat('0', 64), 1, 1 FROM docs"
    )
    con.register(
        "lat",
        pa.table({"doc_id": doc_ids[rows], "latent_id": pa.array(lats, pa.int32())}),
    )
    con.execute("INSERT INTO doc_latents SELECT doc_id, 1, latent_id, 1.0, 1.0, 1, 0, 1 FROM lat")
    yield con, fired, doc_ids
    con.close()


def test_npmi_docs_sql_matches_numpy(synthetic):
    con, fired, doc_ids = synthetic
    subset = list(range(0, 60, 2)) + [1, 3, 5]  # a document list, not a dataset
    rows = con.execute(
        NPMI_DOCS_SQL,
        {"docs": [int(doc_ids[i]) for i in subset], "sae": 1, "target": 0, "min_count": 2},
    ).fetchall()
    f = fired[subset]
    expected = {}
    for j in range(1, 12):
        both = int((f[:, 0] & f[:, j]).sum())
        if both >= 2:
            expected[j] = metrics.npmi(both, int(f[:, 0].sum()), int(f[:, j].sum()), len(subset))
    assert {r[0]: r[3] for r in rows} == pytest.approx(expected)
    assert rows[0][0] == 5  # the planted co-firing partner comes first
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)


def test_label_index_ranks_by_cosine(synthetic):
    con, _, _ = synthetic
    vecs = {3: [1.0, 0.0], 7: [0.6, 0.8], 9: [0.0, 1.0]}
    for i, (lat, v) in enumerate(vecs.items(), start=1):
        con.execute(
            "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, labeler, n_examples) "
            "VALUES (?, 1, ?, ?, 'offline', 1)",
            [i, lat, f"label {lat}"],
        )
        con.execute(
            "INSERT INTO label_embeddings (label_id, model, embedding) VALUES (?, ?, ?)",
            [i, EMBEDDING_MODEL, v],
        )

    class _Store:  # LabelIndex needs only .arrow
        def arrow(self, q, params):
            return con.sql(q, params=params).to_arrow_table()

    idx = LabelIndex(_Store(), 1)
    top = idx.top(np.array([0.8, 0.6], np.float32), 2)
    assert [t[0] for t in top] == [7, 3]
    assert top[0][1] == pytest.approx(0.6 * 0.8 + 0.8 * 0.6)
    assert top[0][2] == "label 7"


# -- baselines and corpus cleaning ---------------------------------------------------------------


def test_bm25_rank_puts_matching_documents_first():
    texts = ["the cat sat on the mat", "stocks fell sharply", "a cat and a dog", "dog days"]
    order = bm25_rank(texts, "cat")
    assert set(order[:2]) == {0, 2}
    assert sorted(order) == [0, 1, 2, 3]


def test_email_text_keeps_subject_and_body_only():
    raw = (
        "From: a@b.c\nReceived: from x by y\nSubject: Cheap   offer\n"
        'MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="B"\n\n'
        "--B\nContent-Type: text/html\n\n<html><style>p{}</style><p>Buy&nbsp;now</p></html>\n"
        "--B--\n"
    )
    text = email_text(raw, 200)
    assert text.startswith("Subject: Cheap offer\n\n")
    assert "Buy" in text and "now" in text
    assert "Received" not in text and "<p>" not in text and "p{}" not in text
    assert len(email_text(raw, 12)) <= 12


# -- report -------------------------------------------------------------------------------------


def test_fmt_cells():
    assert fmt(0.12345) == "0.123"
    assert fmt(2.5e-7) == "2.5e-07"
    assert fmt(math.nan) == "—"
    assert fmt(None) == "—"
    assert fmt(True) == "yes"
    assert fmt(12) == "12"
    assert fmt("a\nb\t") == "a\\nb\\t"  # one line per row, whatever the token


def test_table_text_and_markdown():
    t = Table("Scores", ["method", "MAP"], [["saedb", 0.5], ["bm25|x", 0.25]])
    text = t.text().splitlines()
    assert text[0] == "== Scores =="
    assert text[1].split() == ["method", "MAP"]
    assert text[3].split() == ["saedb", "0.500"]
    md = t.markdown().splitlines()
    assert md[2] == "| method | MAP |"
    assert md[3] == "|---|---|"
    assert md[5] == "| bm25\\|x | 0.250 |"


def test_render_writes_every_table_and_plot(tmp_path: Path):
    img = tmp_path / "img" / "p.png"
    res = [
        StudyResult(
            "one",
            "1. First study",
            "How it was done.",
            [Table("T1", ["a"], [[1]]), Table("T2", ["b"], [[0.5]])],
            [img],
            findings="It works.",
            seconds=3.0,
        ),
        StudyResult("two", "2. Second", "Method two.", [Table("T3", ["c"], [["x"]])]),
    ]
    md = render(
        res, command="make eval", setup="## Setup\n\nS.", total_seconds=90, doc_dir=tmp_path
    )
    for needle in (
        "Generated by `make eval`",
        "## 1. First study",
        "**T1**",
        "**T2**",
        "**T3**",
        "| 0.500 |",
        "![1. First study](img/p.png)",
        "**What this shows.** It works.",
        "1.5 min",
        "[2. Second](#2-second)",
    ):
        assert needle in md, needle


def test_partial_and_quick_runs_never_write_into_docs(tmp_path):
    from eval.config import EvalConfig

    full = EvalConfig(cache=tmp_path / "cache", docs=tmp_path / "docs")
    assert full.report_path == tmp_path / "docs" / "evaluation.md"
    assert full.img_dir == tmp_path / "docs" / "img"
    for cfg in (
        EvalConfig(cache=tmp_path / "cache", docs=tmp_path / "docs", partial=True),
        EvalConfig(cache=tmp_path / "cache", docs=tmp_path / "docs", quick=True),
    ):
        assert cfg.report_path.is_relative_to(tmp_path / "cache")
        assert cfg.img_dir.is_relative_to(tmp_path / "cache")
