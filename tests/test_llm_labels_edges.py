"""The LLM labeler's edges, against the real OpenAI-compatible HTTP server on 127.0.0.1
(tests/openai_server.py) and the synthetic store of tests/test_llm_labels.py: what the scoring
prompt shows, latents too rare to score, Ctrl-C, bad embeddings from an endpoint, and
natural-language queries against labels embedded by an endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

import saedb
from saedb import llm, llm_labels, query
from saedb.cli import main
from saedb.errors import ConfigError
from tests.openai_server import embed
from tests.proc_util import EVENT_LOOP_WAIT, default_sigint, wait_until_blocked
from tests.test_llm_labels import (
    DATA,
    FIRING,
    KETTLE,
    KEY,
    RANDOM,
    REPO,
    ZEBRA,
    build_store,
    cli_args,
    config,
    store_bytes,
)

RARE = 77
"""A latent added by a test that fired in one document only."""


@pytest.fixture
def store(tmp_path):
    with saedb.open(build_store(tmp_path / "edges.duckdb")) as s:
        yield s


def add_rare_latent(con) -> str:
    """Make RARE fire in document 1, peaking on its first word; returns that word."""
    text = DATA["documents"].set_index("doc_id").text[1]
    word = text.split()[0]
    con.execute(
        "INSERT INTO doc_latents (doc_id, sae_id, latent_id, max_act, sum_act, n_active, "
        "max_char_start, max_char_end) VALUES (1, 1, ?, 2.0, 2.0, 1, 0, ?)",
        [RARE, len(word)],
    )
    return word


# -- the scoring prompt ------------------------------------------------------------------


def test_scoring_texts_carry_no_cut_marks(store) -> None:
    texts = DATA["documents"].set_index("doc_id").text
    for latent in (ZEBRA, KETTLE):
        ex = llm_labels.latent_examples(store, 1, latent)
        assert any(e.snippet.startswith("…") for e in ex.held_out if e.positive)
        items = llm_labels.detection_items(ex.held_out, latent)
        prompt = llm_labels.detection_messages("zebra", "a word", items)[1]["content"]
        lines = [ln for ln in prompt.splitlines() if ln.startswith("[")]
        assert len(lines) == len(items)
        for line, e in zip(lines, items, strict=True):
            shown = line.split("] ", 1)[1]
            assert "…" not in shown and "<<" not in shown and ">>" not in shown
            # whole words of the document: neither a cut nor its start gives a positive away
            doc = texts[e.doc_id]
            at = doc.find(shown)
            assert at >= 0, (shown, doc)
            assert at == 0 or doc[at - 1] == " ", (shown, doc)
            end = at + len(shown)
            assert end == len(doc) or doc[end] == " ", (shown, doc)


@pytest.mark.parametrize(
    ("snippet", "shown"),
    [
        ("…ver the lazy <<dog>> and the fox jum…", "the lazy dog and the fox"),
        ("The start of a document and so on…", "The start of a document and so"),
        ("…<<dog>> runs far…", "dog runs"),  # the peak itself is never dropped
        ("…漢字<<字>>漢字…", "漢字字漢字"),  # no spaces: nothing to drop
        ("A whole text.", "A whole text."),
    ],
)
def test_detection_text(snippet, shown) -> None:
    assert llm_labels.detection_text(snippet) == shown


# -- latents too rare to score -----------------------------------------------------------


def test_a_latent_too_rare_to_score_is_labelled_and_reported(
    openai_server, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "rare.duckdb")
    with saedb.open(path) as s:
        word = add_rare_latent(s.con)
        run = llm_labels.label_llm_run(s, config(openai_server), [RARE, ZEBRA], progress=False)
        assert run.labelled == [ZEBRA, RARE] and run.unscored == [RARE] and not run.failed
        got = s.sql("SELECT latent_id, label, score FROM latent_labels ORDER BY latent_id")
    assert got.label.tolist() == ["zebra", word.lower()]
    assert got.score.notna().tolist() == [True, False]
    # the command says so
    path = build_store(tmp_path / "rare2.duckdb")
    with saedb.open(path) as s:
        add_rare_latent(s.con)
    assert main(cli_args(path, openai_server, "--latents", f"{RARE}")) == 0
    out = capsys.readouterr().out
    assert (
        f"1 labelled without a score (too few examples to hold any out for scoring): {RARE}" in out
    )


# -- Ctrl-C ------------------------------------------------------------------------------


def test_ctrl_c_says_what_was_saved_and_spent(openai_server, tmp_path) -> None:
    path = build_store(tmp_path / "int.duckdb")
    env = {**os.environ, "SAEDB_TEST_KEY": KEY, "PYTHONPATH": str(REPO)}
    argv = cli_args(path, openai_server, "--all-firing", "--concurrency", "1")
    code = "import sys; from saedb.cli import main; sys.exit(main(sys.argv[1:]))"
    openai_server.hang_after(4)  # two latents labelled and scored, then the endpoint hangs
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while len(openai_server.requests) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_until_blocked(
            proc.pid, EVENT_LOOP_WAIT
        )  # waiting on the hung request, not inside DuckDB
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        openai_server.release()
    assert proc.returncode == 130, err
    assert "interrupted after labelling 2 latents; they are saved" in err
    # the request cut short is accounted too: the endpoint saw it and may charge for it
    assert "LLM calls: 5 requests (4 ok, 0 retried, 1 failed)" in err
    with saedb.open(path, read_only=True) as s:
        cut = s.sql("SELECT status, error FROM llm_calls WHERE status <> 'ok'")
    assert cut.status.tolist() == ["failed"] and "interrupted" in cut.error[0]
    assert KEY not in out + err
    with saedb.open(path, read_only=True) as s:
        assert s.sql("SELECT count(*) AS n FROM latent_labels").n[0] == 2
    assert KEY.encode() not in store_bytes(path)


# -- label embeddings from an endpoint ---------------------------------------------------


def test_a_bad_embedding_is_reported_and_asked_again(
    openai_server, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "emb.duckdb")
    emb = ["--embed-base-url", openai_server.base_url, "--embed-model", "fake-embed"]
    openai_server.fail("zero", path="/embeddings")
    ids = f"{ZEBRA},{KETTLE}"
    assert main(cli_args(path, openai_server, "--latents", ids, *emb)) == 1
    out, err = capsys.readouterr()
    assert "labelled 2 latents" in out
    assert "error: the embeddings endpoint" in err and "zero or non-finite vector" in err
    with saedb.open(path, read_only=True) as s:
        assert s.sql("SELECT count(*) AS n FROM label_embeddings").n[0] == 0
        assert s.sql("SELECT count(*) AS n FROM latent_labels").n[0] == 2
    # the bad answer was not cached: the next run asks again and embeds both labels
    assert main(cli_args(path, openai_server, "--latents", ids, *emb)) == 0
    assert "embedded 2 labels with fake-embed" in capsys.readouterr().out
    with saedb.open(path, read_only=True) as s:
        got = s.sql(
            "SELECT l.label, e.embedding FROM label_embeddings e "
            "JOIN latent_labels l USING (label_id)"
        )
    for r in got.itertuples():
        assert list(r.embedding) == pytest.approx(embed(r.label), rel=1e-6)


def test_queries_against_labels_embedded_by_an_endpoint(openai_server, store) -> None:
    run = llm_labels.label_llm_run(store, config(openai_server), all_firing=True, progress=False)
    assert run.labelled == FIRING
    embed_cfg = config(openai_server, model="fake-embed")
    assert llm_labels.embed_labels_remote(store, embed_cfg) == len(FIRING)
    with pytest.raises(ConfigError, match="EndpointEncoder"):
        query.relevant_latents(store, "boiling water kettle", model="fake-embed")
    encoder = llm.EndpointEncoder(embed_cfg, store)
    got = query.relevant_latents(store, "boiling water kettle", model="fake-embed", encoder=encoder)
    assert got.column("latent_id")[0].as_py() == KETTLE
    assert got.column("label")[0].as_py() == "kettle"
    sims = got.column("similarity").to_pylist()
    assert sims[0] == pytest.approx(3**-0.5) and sims[1] < sims[0]  # one of three words
    # the query's embedding is cached under the endpoint's model, so SQL alone finds it
    sql = store.arrow(
        "SELECT latent_id, similarity FROM latents_for_query('boiling  water kettle ', k := 2, "
        "model := 'fake-embed')"
    )
    assert sql.column("latent_id").to_pylist() == got.column("latent_id").to_pylist()[:2]
    assert sql.column("similarity")[0].as_py() == pytest.approx(
        got.column("similarity")[0].as_py(), rel=1e-6
    )
    n_calls = store.sql("SELECT count(*) AS n FROM llm_calls WHERE purpose = 'embed'").n[0]
    assert n_calls == 2  # labels, then the query: both accounted


# -- random negatives only -------------------------------------------------------------


def test_without_near_misses_every_negative_is_random(openai_server, store) -> None:
    ex = llm_labels.latent_examples(store, 1, ZEBRA, near_misses=False)
    kinds = Counter(e.kind for e in ex.shown)
    assert kinds == {"positive": 10, "negative": 10}
    assert Counter(e.kind for e in ex.held_out) == kinds
    assert not {e.doc_id for e in ex.shown} & {e.doc_id for e in ex.held_out}
    with_near = llm_labels.latent_examples(store, 1, ZEBRA)
    assert Counter(e.kind for e in with_near.shown)["near"] == 5
    run = llm_labels.label_llm_run(
        store, config(openai_server), [ZEBRA], near_misses=False, progress=False
    )
    assert run.labelled == [ZEBRA]
    prompts = [r.text for r in openai_server.answered if "feature fires:" in r.text]
    assert len(prompts) == 1 and "(similar texts)" not in prompts[0]
    # labels made with near misses are another version: both coexist
    again = llm_labels.label_llm_run(store, config(openai_server), [ZEBRA], progress=False)
    assert again.labelled == [ZEBRA] and not again.already
    versions = store.sql("SELECT prompt_version FROM latent_labels ORDER BY label_id")
    want = [llm_labels.PROMPT_VERSION + llm_labels.RANDOM_NEGATIVES, llm_labels.PROMPT_VERSION]
    assert versions.prompt_version.tolist() == want
    skipped = llm_labels.label_llm_run(
        store, config(openai_server), [ZEBRA], near_misses=False, progress=False
    )
    assert skipped.already == [ZEBRA]


# -- a failed relabelling round ----------------------------------------------------------


def test_a_failed_relabelling_round_is_a_warning(
    openai_server, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "relabel.duckdb")
    openai_server.fail("500", times=2, match="An earlier label")  # round 2's label call
    argv = ["--latents", f"{RANDOM}", "--relabel-below", "0.99", "--max-retries", "1"]
    assert main(cli_args(path, openai_server, *argv)) == 0  # the latent has a label
    out, err = capsys.readouterr()
    assert "labelled 1 latents" in out
    assert f"warning: latent {RANDOM}: relabelling round 2 failed, label kept:" in err
    assert "after 2 attempts: HTTP 500" in err
    with saedb.open(path, read_only=True) as s:
        got = s.sql(
            "SELECT l.score, r.round FROM latent_labels l JOIN label_scores r USING (label_id)"
        )
    assert got["round"].tolist() == [1] and got.score[0] < 0.99


def test_cli_no_near_misses(openai_server, tmp_path, capsys, monkeypatch) -> None:
    """saedb label --no-near-misses: random negatives only, recorded as their own version."""
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = build_store(tmp_path / "nonear.duckdb")
    argv = cli_args(path, openai_server, "--latents", str(ZEBRA), "--no-score")
    assert main([*argv, "--no-near-misses"]) == 0
    prompts = [r.text for r in openai_server.answered if "feature fires:" in r.text]
    assert len(prompts) == 1 and "(similar texts)" not in prompts[0]
    assert main(argv) == 0  # with near misses: another version, labelled again
    prompts = [r.text for r in openai_server.answered if "feature fires:" in r.text]
    assert len(prompts) == 2 and "(similar texts)" in prompts[1]
    with saedb.open(path, read_only=True) as s:
        versions = s.sql("SELECT prompt_version FROM latent_labels ORDER BY label_id")
    want = [llm_labels.PROMPT_VERSION + llm_labels.RANDOM_NEGATIVES, llm_labels.PROMPT_VERSION]
    assert versions.prompt_version.tolist() == want
