"""Latent labels: example selection (latent_examples), the offline labeler, current_labels,
label embeddings with the real MiniLM, and ``saedb label``.

The store is a real DuckDB file with the schema and catalog, filled with pyarrow (as in
tests/test_sql_analyses.py): two datasets of random filler text, a latent whose peaks sit on
a planted word, a latent that peaks on random words, a latent that never fires, and a few
documents that were never encoded.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

import saedb
from saedb import catalog, labels, migrations
from saedb.cli import main
from saedb.errors import ConfigError
from tests.test_sql_analyses import insert, mark_reference

FILLER = (
    "the a of and river market window green table walk music paper stone cloud garden letter "
    "train coffee morning light city café naïve bridge summer winter chair song door field"
).split()
PLANTED, RANDOM, SILENT = 7, 3, 99
WORD = "zebra"
N_DOCS, N_UNENCODED = 200, 6


def synthetic_data(seed: int = 11) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    docs, latents, encodings = [], [], []
    for doc_id in range(1, N_DOCS + 1):
        dataset = 1 if doc_id <= N_DOCS // 2 else 2
        ws = list(rng.choice(FILLER, size=int(rng.integers(15, 40))))
        planted = rng.random() < (0.5 if dataset == 1 else 0.1)
        at = int(rng.integers(0, len(ws)))
        if planted:
            ws.insert(at, WORD)
        text = " ".join(ws)
        starts = np.cumsum([0] + [len(w) + 1 for w in ws[:-1]])
        docs.append((doc_id, dataset, f"ext-{doc_id}", text))
        encoded = doc_id <= N_DOCS - N_UNENCODED
        fired = []
        if planted:
            fired.append((PLANTED, starts[at], starts[at] + len(WORD)))
        if rng.random() < 0.5:
            j = int(rng.integers(0, len(ws)))
            fired.append((RANDOM, starts[j], starts[j] + len(ws[j])))
        for latent, start, end in fired:
            act = float(rng.uniform(0.5, 5.0))
            latents.append((doc_id, 1, latent, act, act, 1, int(start), int(end)))
        if encoded:
            encodings.append((doc_id, 1, 1, len(fired)))
    documents = pd.DataFrame(docs, columns=["doc_id", "dataset_id", "external_id", "text"])
    documents["metadata"] = json.dumps({})
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
    with saedb.open(build_store(tmp_path / "labels.duckdb")) as s:
        yield s


@pytest.fixture(scope="module")
def encoder():
    return labels.MiniLM()


def examples(store, latent: int, **params) -> pd.DataFrame:
    named = "".join(f", {k} := ${k}" for k in params)
    return store.sql(f"SELECT * FROM latent_examples($latent{named})", {"latent": latent, **params})


# -- latent_examples ------------------------------------------------------------------------


def test_examples_are_deterministic_for_a_seed_and_differ_across_seeds(store) -> None:
    a = examples(store, PLANTED, seed=0)
    b = examples(store, PLANTED, seed=0)
    c = examples(store, PLANTED, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.kind) == ["positive"] * 10 + ["negative"] * 10
    assert list(a["rank"]) == list(range(1, 11)) * 2
    for kind in ("positive", "negative"):
        assert set(a.doc_id[a.kind == kind]) != set(c.doc_id[c.kind == kind]), kind


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_positives_come_from_the_top_and_negatives_did_not_fire(store, seed) -> None:
    dl = DATA["doc_latents"]
    rows = dl[dl.latent_id == PLANTED].sort_values(["max_act", "doc_id"], ascending=[False, True])
    top = set(rows.doc_id[:12])
    ex = examples(store, PLANTED, n_pos=5, top=12, n_neg=7, seed=seed)
    pos, neg = ex[ex.kind == "positive"], ex[ex.kind == "negative"]
    assert len(pos) == 5 and set(pos.doc_id) <= top
    assert len(neg) == 7
    encoded = set(DATA["doc_encodings"].doc_id)
    assert set(neg.doc_id) <= encoded - set(rows.doc_id)
    assert neg.max_act.isna().all() and neg.token.isna().all()


def test_snippets_mark_the_peak_span(store) -> None:
    docs = DATA["documents"].set_index("doc_id")
    dl = DATA["doc_latents"]
    peaks = dl[dl.latent_id == RANDOM].set_index("doc_id")
    ex = examples(store, RANDOM, context=15, n_pos=8, n_neg=8)
    for r in ex.itertuples():
        text = docs.text[r.doc_id]
        if r.kind == "positive":
            start, end = peaks.max_char_start[r.doc_id], peaks.max_char_end[r.doc_id]
            assert r.snippet == mark_reference(text, start, end, 15)
            assert r.token == text[start:end]
            assert r.dataset == ("news" if r.doc_id <= N_DOCS // 2 else "blogs")
        else:
            assert r.snippet == text[:30] + ("…" if len(text) > 30 else "")


def test_no_examples_for_a_latent_that_never_fired_and_fewer_than_asked(store) -> None:
    assert examples(store, SILENT).kind.tolist() == ["negative"] * 10
    few = examples(store, PLANTED, n_pos=50, top=3)
    assert (few.kind == "positive").sum() == 3


# -- the offline labeler --------------------------------------------------------------------


def test_planted_word_comes_first_in_the_label(store) -> None:
    assert labels.label_offline(store, [PLANTED, RANDOM, SILENT], progress=False) == 2
    got = store.sql(
        "SELECT * EXCLUDE (created_at) FROM current_labels ORDER BY latent_id"
    ).set_index("latent_id")
    assert got.label[PLANTED].split(" / ")[0] == WORD
    assert f'"{WORD}"' in got.description[PLANTED]
    assert got.label[RANDOM].strip()  # never empty, whatever it says
    assert SILENT not in got.index
    row = got.loc[PLANTED]
    assert (row.labeler, row.model, row.prompt_version) == ("offline", "log-odds", "offline-1")
    assert pd.isna(row.score) and row.n_examples == 20


def test_a_second_run_adds_nothing_and_selection_modes(store) -> None:
    assert labels.choose_latents(store, 1, all_firing=True) == [RANDOM, PLANTED]
    assert PLANTED in labels.choose_latents(store, 1, top_diff=("news", "blogs"))
    assert labels.choose_latents(store, 1, [9, 8, 9, 1], limit=2) == [9, 8]
    run = labels.label_offline_run(store, all_firing=True, progress=False)
    assert sorted(run.labelled) == [RANDOM, PLANTED]
    again = labels.label_offline_run(store, all_firing=True, progress=False)
    assert again.labelled == [] and sorted(again.already) == [RANDOM, PLANTED]
    assert store.sql("SELECT count(*) AS n FROM latent_labels").n[0] == 2
    with pytest.raises(ConfigError):
        labels.label_offline(store, progress=False)
    with pytest.raises(ConfigError):
        labels.label_offline(store, [1], all_firing=True, progress=False)


def test_nothing_distinctive_is_said_with_the_top_peak_token() -> None:
    negatives = ["alpha beta gamma delta"] * 5
    positives = [
        ("alpha beta <<one>> gamma", "one"),
        ("alpha <<two>> beta gamma", " two"),
        ("alpha beta gamma <<one>>", "one"),
        ("beta gamma <<three>>", "three"),
    ]
    answer = labels.offline_label(positives[:2] + positives[3:], negatives)
    assert answer.terms == ()
    assert answer.label == 'no distinctive terms (peaks on "one")'
    assert '"one"' in answer.description
    # two positives peaking on "one" make it distinctive
    assert labels.offline_label(positives, negatives).terms[0] == "one"


def test_stopwords_only_when_the_latent_peaks_on_them() -> None:
    negatives = ["river market window"] * 6
    positives = [(f"the <<of>> the {w}", "of") for w in ("green", "stone", "cloud")]
    answer = labels.offline_label(positives, negatives)
    assert answer.terms[0] == "of" and "the" not in answer.terms


# -- current_labels -------------------------------------------------------------------------


def test_current_labels_picks_by_score_then_recency(store) -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def at(days: int) -> dt.datetime:
        return t0 + dt.timedelta(days=days)

    rows = [  # label_id, latent, label, score, created_at
        (1, 1, "best scored", 0.8, at(0)),
        (2, 1, "lower score", 0.5, at(1)),
        (3, 1, "newest, unscored", None, at(3)),
        (4, 2, "old unscored", None, at(0)),
        (5, 2, "new unscored", None, at(1)),
        (6, 3, "tie, older", 0.7, at(0)),
        (7, 3, "tie, newer", 0.7, at(2)),
        (8, 4, "same time, first", None, at(0)),
        (9, 4, "same time, last", None, at(0)),
    ]
    for label_id, latent, label, score, created in rows:
        store.con.execute(
            "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, labeler, score, "
            "n_examples, created_at) VALUES (?, 1, ?, ?, 'test', ?, 0, ?)",
            [label_id, latent, label, score, created],
        )
    got = store.sql("SELECT latent_id, label, n_versions FROM current_labels ORDER BY latent_id")
    assert got.label.tolist() == ["best scored", "new unscored", "tie, newer", "same time, last"]
    assert got.n_versions.tolist() == [3, 2, 2, 2]
    with pytest.raises(duckdb.ConstraintException):
        store.con.execute(
            "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, labeler, n_examples) "
            "VALUES (10, 1, 5, '  ', 'test', 0)"
        )


# -- label embeddings -----------------------------------------------------------------------


def test_embeddings_are_unit_384_and_similar_labels_are_closer(store, encoder) -> None:
    texts = ["computer / software / program", "computers / programming / code", "soup / recipe"]
    for i, text in enumerate(texts, start=1):
        store.con.execute(
            "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, labeler, n_examples) "
            "VALUES (?, 1, ?, ?, 'test', 0)",
            [i, i, text],
        )
    assert labels.embed_labels(store, encoder=encoder) == 3
    assert labels.embed_labels(store, encoder=encoder) == 0  # already embedded
    got = store.sql(
        "SELECT label_id, model, embedding FROM label_embeddings ORDER BY label_id"
    ).set_index("label_id")
    assert set(got.model) == {labels.EMBEDDING_MODEL}
    vectors = np.stack([np.asarray(v, dtype=np.float64) for v in got.embedding])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[1, 0] > sim[1, 2] + 0.1
    # the same text embeds the same way alone or in a padded batch
    alone = encoder.encode([texts[2]])[0]
    np.testing.assert_allclose(alone, vectors[2], atol=1e-5)


# -- saedb label ----------------------------------------------------------------------------


def test_cli_label_labels_embeds_and_reports(tmp_path, capsys) -> None:
    path = build_store(tmp_path / "cli.duckdb")
    ids = f"{PLANTED},{RANDOM},{SILENT}"
    assert main(["label", str(path), "--latents", ids, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "labelled 2 latents offline" in out
    assert f"1 never fired, so not labelled: {SILENT}" in out
    assert "embedded 2 labels" in out
    with saedb.open(path, read_only=True) as s:
        got = s.sql(
            "SELECT c.latent_id, c.label, len(e.embedding) AS dim FROM current_labels c "
            "JOIN label_embeddings e USING (label_id) ORDER BY latent_id"
        )
    assert got.latent_id.tolist() == [RANDOM, PLANTED] and set(got.dim) == {384}
    assert got.label[1].startswith(WORD)
    assert main(["label", str(path), "--top-diff", "news", "blogs", "-q"]) == 0
    out = capsys.readouterr().out
    assert "labelled 0 latents" in out and "embedded 0 labels" in out
    assert main(["label", str(path), "--latents", "x", "-q"]) == 2
    assert "--latents expects" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["label", str(path)])
    assert exc.value.code == 2
