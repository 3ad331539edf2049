"""The LLM labeler (saedb.llm_labels) and ``saedb label`` with an endpoint, against a real
OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py: it labels a latent by the
word most often marked as its peak and judges a text by whether it holds the label's word).

The store is a real DuckDB file with the schema and catalog, filled with pyarrow: documents
of filler words, with a latent peaking on a planted "zebra" that mostly comes with "savanna"
(its own latent: the zebra latent's partner, which makes savanna-without-zebra documents its
near misses), a "kettle" latent, a latent peaking on random words, and one that never fires.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

import saedb
from saedb import catalog, llm, llm_labels, migrations
from saedb.cli import main
from saedb.errors import ConfigError
from tests.openai_server import embed
from tests.test_sql_analyses import insert

FILLER = (
    "the a of and river market window green table walk music paper stone cloud garden letter "
    "train morning light city bridge summer winter chair song door field lamp road"
).split()
ZEBRA, SAVANNA, KETTLE, RANDOM, SILENT = 10, 11, 20, 30, 99
WORDS = {ZEBRA: "zebra", SAVANNA: "savanna", KETTLE: "kettle"}
N_DOCS, N_UNENCODED = 160, 4
KEY = "sk-labels-test-key-7f3a9c"
REPO = Path(__file__).resolve().parent.parent


def synthetic_data(seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    docs, latents, encodings = [], [], []
    for doc_id in range(1, N_DOCS + 1):
        dataset = 1 if doc_id <= N_DOCS // 2 else 2
        ws = list(rng.choice(FILLER, size=int(rng.integers(12, 30))))
        zebra = rng.random() < 0.35
        planted = []
        if zebra:
            planted.append(ZEBRA)
        if rng.random() < (0.8 if zebra else 0.15):
            planted.append(SAVANNA)
        if rng.random() < 0.3:
            planted.append(KETTLE)
        for latent in planted:
            ws.insert(int(rng.integers(0, len(ws) + 1)), WORDS[latent])
        text = " ".join(ws)
        starts = np.cumsum([0] + [len(w) + 1 for w in ws[:-1]])
        fired = [(lat, ws.index(WORDS[lat])) for lat in planted]
        if rng.random() < 0.4:
            fired.append((RANDOM, int(rng.integers(0, len(ws)))))
        docs.append((doc_id, dataset, f"ext-{doc_id}", text))
        for latent, j in fired:
            act = float(rng.uniform(0.5, 5.0))
            latents.append(
                (doc_id, 1, latent, act, act, 1, int(starts[j]), int(starts[j]) + len(ws[j]))
            )  # noqa: E501
        if doc_id <= N_DOCS - N_UNENCODED:
            encodings.append((doc_id, 1, 1, len(fired)))
    documents = pd.DataFrame(docs, columns=["doc_id", "dataset_id", "external_id", "text"])
    documents["metadata"] = json.dumps({})
    documents["text_sha256"] = "0" * 64
    documents["n_tokens"] = np.int32(5)
    documents["run_id"] = np.int32(1)
    documents["dataset_id"] = documents.dataset_id.astype(np.int32)
    cols = ["doc_id", "sae_id", "latent_id", "max_act", "sum_act", "n_active"]
    doc_latents = pd.DataFrame(latents, columns=cols + ["max_char_start", "max_char_end"]).astype(
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
    doc_encodings = pd.DataFrame(
        encodings, columns=["doc_id", "sae_id", "run_id", "n_latents"]
    ).astype({"sae_id": np.int32, "run_id": np.int32, "n_latents": np.int32})
    datasets = pd.DataFrame({"dataset_id": np.array([1, 2], np.int32), "name": ["news", "blogs"]})
    return {
        "datasets": datasets,
        "documents": documents,
        "doc_encodings": doc_encodings,
        "doc_latents": doc_latents,
    }


DATA = synthetic_data()
FIRING = sorted(set(DATA["doc_latents"].latent_id))


def build_store(path: Path) -> Path:
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
        for table in ("datasets", "documents", "doc_encodings", "doc_latents"):
            insert(con, table, DATA[table])
        con.execute(
            "INSERT INTO saes (sae_id, name, reader_model, hook_name, layer, architecture, d_in, "
            "d_sae, weights_sha256, path, config) VALUES (1, 'synthetic', 'none', "
            "'blocks.0.hook_resid_post', 0, 'topk', 4, 128, '', '', '{}')"
        )
        con.execute("INSERT INTO settings VALUES ('default_sae_id', '1')")
    return path


@pytest.fixture
def store(tmp_path):
    with saedb.open(build_store(tmp_path / "llm-labels.duckdb")) as s:
        yield s


def config(server, **kw) -> llm.LLMConfig:
    base = {"base_url": server.base_url, "model": "fake-llm", "backoff": 0.01, "timeout": 2.0}
    return llm.LLMConfig(**{**base, **kw})


def fake_judge(label: str, snippet: str) -> bool:
    """What the test server answers: does the text hold the label's first word?"""
    from tests.openai_server import words

    return words(label)[0] in words(snippet)


# -- near misses -----------------------------------------------------------------------------


def near_miss_reference(latent: int, n: int, top: int, n_partners: int) -> pd.DataFrame:
    dl = DATA["doc_latents"]
    docs = DATA["documents"].set_index("doc_id")
    mine = dl[dl.latent_id == latent].sort_values(["max_act", "doc_id"], ascending=[False, True])
    strongest = list(mine.doc_id[:top])
    in_top = dl[dl.doc_id.isin(strongest) & (dl.latent_id != latent)]
    counts = in_top.groupby("latent_id").size().reset_index(name="n_top")
    counts = counts.sort_values(["n_top", "latent_id"], ascending=[False, True])[: 3 * n_partners]
    n_enc = len(DATA["doc_encodings"])
    encoded = set(DATA["doc_encodings"].doc_id)  # shares are of encoded documents
    weights = {}
    for r in counts.itertuples():
        n_docs = ((dl.latent_id == r.latent_id) & dl.doc_id.isin(encoded)).sum()
        w = r.n_top / len(strongest) - n_docs / n_enc
        if w > 0:
            weights[r.latent_id] = w
    weights = dict(sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n_partners])
    datasets = set(docs.dataset_id[strongest])
    fired = set(mine.doc_id)
    rows = dl[dl.latent_id.isin(weights) & ~dl.doc_id.isin(fired)]
    rows = rows[rows.doc_id.map(docs.dataset_id).isin(datasets)]
    scores = rows.groupby("doc_id").latent_id.apply(lambda s: sum(weights[x] for x in s))
    return scores.sort_values(ascending=False)


@pytest.mark.parametrize("counts", ["stale", "fresh"])
def test_near_misses_match_a_pandas_reference(store, counts) -> None:
    # the store's rows were written directly, so latent_counts is empty (stale) until refreshed
    if counts == "fresh":
        store.refresh_latent_counts()
    got = store.sql(
        "SELECT * FROM latent_near_misses(10, n := 8, top := 30, n_partners := 5, context := 12)"
    )
    ref = near_miss_reference(ZEBRA, 8, 30, 5)
    assert len(got) == 8 and list(got["rank"]) == list(range(1, 9))
    np.testing.assert_allclose(got.score, ref.values[:8], rtol=1e-9)
    assert set(got.doc_id) <= set(ref.index)
    # the zebra latent's near misses are savanna documents without zebra
    texts = DATA["documents"].set_index("doc_id").text
    for r in got.itertuples():
        assert "zebra" not in texts[r.doc_id].split() and "savanna" in texts[r.doc_id].split()
        assert r.partner == SAVANNA and "savanna" in r.snippet and "<<" not in r.snippet
    assert store.sql("SELECT * FROM latent_near_misses(99)").empty


def test_shown_and_held_out_examples_do_not_overlap(store) -> None:
    ex = llm_labels.latent_examples(store, 1, ZEBRA)
    shown = {e.doc_id for e in ex.shown}
    held = {e.doc_id for e in ex.held_out}
    assert not shown & held
    kinds = Counter(e.kind for e in ex.shown)
    assert kinds == {"positive": 10, "negative": 5, "near": 5}
    assert Counter(e.kind for e in ex.held_out) == kinds
    fired = set(DATA["doc_latents"].query("latent_id == @ZEBRA").doc_id)
    assert all((e.doc_id in fired) == e.positive for e in ex.shown + ex.held_out)
    again = llm_labels.relabel_examples(store, 1, ZEBRA, 1, ex.held_out)
    assert not {e.doc_id for e in again} & held and {e.doc_id for e in again} != shown


# -- the labeler -----------------------------------------------------------------------------


def test_labels_scores_and_writes(openai_server, store) -> None:
    store.con.execute("SET enable_progress_bar = false")
    saedb.labels.label_offline(store, [ZEBRA], progress=False)  # an unscored offline label
    run = llm_labels.label_llm_run(
        store, config(openai_server, price_in=1.0, price_out=1.0), all_firing=True, progress=False
    )
    assert run.labelled == FIRING and not run.failed
    got = store.sql(
        "SELECT latent_id, label, labeler, model, prompt_version, score, n_examples "
        "FROM current_labels ORDER BY latent_id"
    ).set_index("latent_id")
    for latent, word in WORDS.items():
        assert got.label[latent] == word and got.score[latent] == 1.0
    assert got.labeler.unique().tolist() == ["llm"]  # scored LLM labels beat the offline one
    assert set(got.model) == {"fake-llm"} and set(got.prompt_version) == {llm_labels.PROMPT_VERSION}
    assert got.n_examples[ZEBRA] == 20
    # every score is the balanced accuracy of the judge's answers on the held-out examples
    scores = store.sql(
        "SELECT s.*, l.label FROM label_scores s JOIN latent_labels l USING (label_id)"
    )
    assert sorted(scores.latent_id) == FIRING
    for r in scores.itertuples():
        items = llm_labels.detection_items(
            llm_labels.latent_examples(store, 1, r.latent_id).held_out, r.latent_id
        )
        said = [fake_judge(r.label, llm_labels.detection_text(e.snippet)) for e in items]
        tp = sum(e.positive and s for e, s in zip(items, said, strict=True))
        fp = sum(not e.positive and s for e, s in zip(items, said, strict=True))
        n_pos = sum(e.positive for e in items)
        n_neg = len(items) - n_pos
        assert (r.true_pos, r.false_pos, r.n_positive, r.n_negative) == (tp, fp, n_pos, n_neg)
        assert r.recall == pytest.approx(tp / n_pos)
        assert r.balanced_accuracy == pytest.approx((tp / n_pos + (n_neg - fp) / n_neg) / 2)
        assert got.score[r.latent_id] == pytest.approx(r.balanced_accuracy)
        if tp + fp:
            assert r.precision == pytest.approx(tp / (tp + fp))
    assert got.score[RANDOM] < 1.0
    # two calls per latent (label, score); a second run skips everything
    assert len(openai_server.requests) == 2 * len(FIRING)
    assert run.stats.ok == 2 * len(FIRING) and run.stats.cost > 0
    again = llm_labels.label_llm_run(store, config(openai_server), all_firing=True, progress=False)
    assert again.labelled == [] and sorted(again.already) == FIRING
    assert len(openai_server.requests) == 2 * len(FIRING)


def test_no_score_leaves_score_null(openai_server, store) -> None:
    run = llm_labels.label_llm_run(
        store, config(openai_server), [ZEBRA, SILENT], score=False, progress=False
    )
    assert run.labelled == [ZEBRA] and run.never_fired == [SILENT]
    got = store.sql("SELECT label, score FROM latent_labels")
    assert got.label.tolist() == ["zebra"] and got.score.isna().all()
    assert store.sql("SELECT count(*) AS n FROM label_scores").n[0] == 0
    assert len(openai_server.requests) == 1


def test_bad_json_is_retried_and_blank_labels_are_failures(openai_server, store) -> None:
    openai_server.fail("malformed", match="<<zebra>>")
    openai_server.fail("blank", times=2, match="<<kettle>>")
    openai_server.fail("empty", times=2, match="Label: savanna")
    run = llm_labels.label_llm_run(
        store, config(openai_server, concurrency=2), [ZEBRA, KETTLE, SAVANNA], progress=False
    )
    assert run.labelled == [ZEBRA]
    assert sorted(run.failed) == [SAVANNA, KETTLE]
    assert "label: the answer has no label" in run.failed[KETTLE]
    assert run.failed[SAVANNA].startswith("score: the answer is empty")
    assert openai_server.pending_failures() == 0
    labels = store.sql("SELECT latent_id, label FROM latent_labels")
    assert labels.latent_id.tolist() == [ZEBRA] and labels.label.tolist() == ["zebra"]
    fails = store.sql("SELECT latent_id, stage, error FROM label_failures ORDER BY latent_id")
    assert fails.latent_id.tolist() == [SAVANNA, KETTLE]
    assert fails.stage.tolist() == ["score", "label"]
    assert not store.sql("SELECT * FROM latent_labels WHERE trim(label) = ''").shape[0]
    # a second run labels them; the savanna label call was paid for and comes from the cache
    n_before = len(openai_server.requests)
    again = llm_labels.label_llm_run(
        store, config(openai_server), [ZEBRA, KETTLE, SAVANNA], progress=False
    )
    assert again.labelled == [SAVANNA, KETTLE] and again.already == [ZEBRA]
    assert again.stats.cached == 1
    assert len(openai_server.requests) - n_before == 3  # kettle: label + score; savanna: score


def test_relabel_keeps_the_better_label(openai_server, store) -> None:
    run = llm_labels.label_llm_run(
        store,
        config(openai_server),
        [ZEBRA, RANDOM],
        relabel_below=0.99,
        max_rounds=3,
        progress=False,
    )
    assert run.labelled == [ZEBRA, RANDOM] and run.relabelled == [RANDOM]
    rounds = store.sql("SELECT latent_id, round, balanced_accuracy FROM label_scores")
    rounds = rounds.set_index("latent_id")
    assert rounds.loc[ZEBRA, "round"] == 1
    # the random latent went through 3 rounds; the best of them was kept
    label_reqs = [r for r in openai_server.answered if "feature fires:" in r.text]
    score_reqs = [r for r in openai_server.answered if "\nLabel: " in r.text]
    assert len(label_reqs) == 4  # zebra 1, random 3
    assert sum("An earlier label" in r.text for r in label_reqs) == 2
    per_round = store.sql(
        "SELECT purpose, count(*) AS n FROM llm_calls WHERE latent_id = 30 GROUP BY purpose"
    ).set_index("purpose")
    # a round that finds a label scored before answers its score from the cache
    assert per_round.n.to_dict() == {"label": 1, "relabel": 2, "score": 3}
    held = llm_labels.detection_items(llm_labels.latent_examples(store, 1, RANDOM).held_out, RANDOM)
    values = {}
    for r in score_reqs:
        label = r.text.split("\nLabel: ")[1].split("\n")[0]
        if label == "zebra":
            continue
        said = json.loads(r.content)["matches"]
        values[label] = llm_labels.confusion(held, [bool(x) for x in said]).balanced_accuracy
    best = max(values.values())
    got = store.sql("SELECT label, score FROM latent_labels WHERE latent_id = 30")
    assert len(got) == 1 and got.score[0] == pytest.approx(best)
    assert values[got.label[0]] == pytest.approx(best)
    assert store.sql("SELECT count(*) AS n FROM latent_labels").n[0] == 2


def test_bad_settings_are_refused(openai_server, store) -> None:
    with pytest.raises(ConfigError, match="relabel_below"):
        llm_labels.label_llm_run(store, config(openai_server), [ZEBRA], relabel_below=2)
    with pytest.raises(ConfigError, match="needs scoring"):
        llm_labels.label_llm_run(
            store, config(openai_server), [ZEBRA], relabel_below=0.5, score=False
        )
    with pytest.raises(ConfigError, match="model"):
        llm_labels.label_llm_run(store, llm.LLMConfig(base_url="http://127.0.0.1:9/v1"), [1])


# -- saedb label -----------------------------------------------------------------------------


def cli_args(path: Path, server, *extra: str) -> list[str]:
    return [
        "label",
        str(path),
        "--base-url",
        server.base_url,
        "--model",
        "fake-llm",
        "--api-key-env",
        "SAEDB_TEST_KEY",
        "--quiet",
        *extra,
    ]


def store_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_cli_labels_reports_spend_and_embeds_from_an_endpoint(
    openai_server, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "cli.duckdb")
    argv = cli_args(
        path, openai_server, "--all-firing", "--price-in", "2", "--price-out", "4",
        "--embed-base-url", openai_server.base_url, "--embed-model", "fake-embed",
    )  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert f"labelled {len(FIRING)} latents with the LLM fake-llm" in out
    answered = openai_server.answered
    tokens_in = sum(_usage(r)[0] for r in answered if "chat" in r.path)
    tokens_out = sum(_usage(r)[1] for r in answered if "chat" in r.path)
    cost = (tokens_in * 2 + tokens_out * 4) / 1e6
    assert f"tokens {tokens_in} in + {tokens_out} out; estimated cost ${cost:.4f}" in out
    assert f"embedded {len(FIRING)} labels with fake-embed" in out
    assert KEY not in out + err
    assert all(r.authorization == f"Bearer {KEY}" for r in openai_server.requests)
    with saedb.open(path, read_only=True) as s:
        emb = s.sql(
            "SELECT c.label, e.model, e.embedding FROM current_labels c "
            "JOIN label_embeddings e USING (label_id)"
        )
        spend = s.sql("SELECT sum(cost) AS cost, sum(requests) AS n FROM llm_spend").iloc[0]
    assert set(emb.model) == {"fake-embed"} and len(emb) == len(FIRING)
    for r in emb.itertuples():
        np.testing.assert_allclose(r.embedding, embed(r.label), rtol=1e-6)
    # the embeddings request is priced too (its input tokens)
    cost_all = sum(_usage(r)[0] * 2 + _usage(r)[1] * 4 for r in openai_server.answered) / 1e6
    assert cost_all > cost
    assert spend.n == len(openai_server.requests) and spend.cost == pytest.approx(cost_all)
    assert KEY.encode() not in store_bytes(path)


def _usage(req) -> tuple[int, int]:
    return len(req.text.split()), len((req.content or "").split())


def test_cli_failures_are_listed_with_exit_status_1(
    openai_server, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "fail.duckdb")
    openai_server.fail("empty", times=2, match="<<kettle>>")
    openai_server.fail("500", times=3, match="Label: zebra")
    openai_server.fail("429", match="<<savanna>>", retry_after=0.1)
    ids = f"{ZEBRA},{SAVANNA},{KETTLE},{SILENT}"
    emb = ["--embed-base-url", openai_server.base_url, "--embed-model", "fake-embed"]
    assert main(cli_args(path, openai_server, "--latents", ids, "--max-retries", "2", *emb)) == 1
    out, err = capsys.readouterr()
    assert "labelled 1 latents" in out and f"never fired, so not labelled: {SILENT}" in out
    assert "error: 2 latents failed" in err
    assert f"latent {ZEBRA}: score: chat call (score) to model fake-llm" in err
    assert "after 3 attempts: HTTP 500" in err
    assert f"latent {KETTLE}: label: the answer is empty" in err
    assert "3 retried, 1 failed" in out  # zebra: 2 x 500 then gave up; savanna: 1 x 429
    assert KEY not in out + err
    # run again: the failed latents get labels, nothing already paid for is paid again
    assert main(cli_args(path, openai_server, "--latents", ids, *emb)) == 0
    out, _ = capsys.readouterr()
    assert "labelled 2 latents" in out and "1 already labelled" in out
    assert "1 answered from the cache" in out  # zebra's label call
    with saedb.open(path, read_only=True) as s:
        got = s.sql("SELECT latent_id, label FROM current_labels ORDER BY latent_id")
    assert got.latent_id.tolist() == [ZEBRA, SAVANNA, KETTLE]
    assert got.label.tolist() == ["zebra", "savanna", "kettle"]


def test_cli_stops_early_when_the_key_is_refused(openai_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "auth.duckdb")
    openai_server.fail("401", times=50)
    args = cli_args(path, openai_server, "--all-firing", "--concurrency", "1")
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert len(openai_server.requests) == 1  # no point asking again
    assert "check the API key (environment variable SAEDB_TEST_KEY)" in err
    assert err.count("not attempted") == len(FIRING) - 1
    assert KEY not in out + err and "Bearer ***" in err


def test_cli_without_an_endpoint_labels_offline(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(llm.CONFIG_ENV, str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("concurrency = 2\n")  # a config without an endpoint
    path = build_store(tmp_path / "off.duckdb")
    assert main(["label", str(path), "--latents", f"{ZEBRA}", "-q", "--no-score"]) == 2
    assert "need an LLM endpoint" in capsys.readouterr().err
    assert main(["label", str(path), "--latents", "10", "-q", "--base-url", "http://x:1/v1"]) == 2
    assert "no model" in capsys.readouterr().err


def test_an_interrupted_run_resumes_without_paying_twice(
    openai_server, tmp_path, monkeypatch
) -> None:
    path = build_store(tmp_path / "kill.duckdb")
    env = {**os.environ, "SAEDB_TEST_KEY": KEY, "PYTHONPATH": str(REPO)}
    argv = cli_args(path, openai_server, "--all-firing", "--concurrency", "2")
    code = "import sys; from saedb.cli import main; sys.exit(main(sys.argv[1:]))"
    openai_server.hang_after(5)  # 5 answers, then the client is stuck until killed
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(openai_server.requests) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(openai_server.answered) == 5
        time.sleep(0.3)  # let the client write what it got
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    first = list(openai_server.answered)
    openai_server.release()
    with saedb.open(path, read_only=True) as s:
        paid = s.sql("SELECT count(*) AS n FROM llm_calls WHERE status = 'ok'").n[0]
        done = s.sql("SELECT count(*) AS n FROM latent_labels").n[0]
    assert paid == 5 and done < len(FIRING)
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    assert main(argv) == 0
    answered = [json.dumps(r.body, sort_keys=True) for r in openai_server.answered]
    assert len(answered) == len(set(answered)), "a request was answered (paid for) twice"
    assert len(answered) == 2 * len(FIRING) and len(first) == 5
    with saedb.open(path, read_only=True) as s:
        labels = s.sql("SELECT latent_id FROM latent_labels ORDER BY latent_id").latent_id
        ok = s.sql("SELECT count(*) AS n FROM llm_calls WHERE status = 'ok'").n[0]
    assert labels.tolist() == FIRING and ok == len(answered)
    assert KEY.encode() not in store_bytes(path)
