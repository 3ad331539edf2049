"""`saedb train-sae` end to end on the real reader: corpus or store -> streamed activations ->
SAE that loads, records its recipe and metrics, resumes, and plugs into a store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saedb
from ingest.activations import ReaderSource, corpus_documents
from ingest.config import IngestConfig, ReaderConfig
from ingest.hooks import parse_hook
from ingest.pipeline import init_store, run_ingest
from ingest.reader import Reader, resolve_reader
from ingest.sae import load_sae
from saedb.cli import main
from tests.conftest import TEST_HOOK, fortunes, write_jsonl


@pytest.fixture(scope="module")
def small_reader() -> Reader:
    """The real reader up to layer 2, with tiny windows and batches so that one chunk of
    documents takes several forward batches."""
    cfg = ReaderConfig(window_tokens=16, window_overlap=4, batch_tokens=64)
    return Reader(resolve_reader("builtin:smollm2-135m-instruct"), parse_hook(TEST_HOOK), cfg)


def test_reader_source_resumes_from_any_position(small_reader: Reader, tmp_path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", fortunes("computers", 8))
    src = ReaderSource(
        small_reader, corpus_documents([str(corpus)]), max_tokens=250, val_fraction=0.3,
        chunk_docs=3,
    )  # fmt: skip
    chunks = list(src.chunks(epoch=1))
    rows = np.concatenate([c.x for c in chunks])
    assert len(rows) == 250  # capped exactly
    held = np.concatenate([c.held_out for c in chunks])
    assert 0 < held.mean() < 0.5  # whole documents held out
    mid = [i for i, c in enumerate(chunks) if c.position["row"] > 0]
    ends = [i for i, c in enumerate(chunks) if c.position["row"] == 0]
    assert mid and len(ends) >= 2  # positions inside a chunk of documents and between them
    for i in (mid[-1], ends[0]):
        rest = list(src.chunks(1, chunks[i].position))
        assert np.array_equal(np.concatenate([c.x for c in rest]), rows[sum(
            len(c.x) for c in chunks[: i + 1]
        ) :])  # fmt: skip
        assert np.array_equal(
            np.concatenate([c.held_out for c in rest]),
            held[sum(len(c.x) for c in chunks[: i + 1]) :],
        )


def test_train_sae_cli_end_to_end(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", fortunes("computers", 30) + [{"text": ""}])
    out = tmp_path / "sae"
    acts = tmp_path / "acts.npy"
    args = ["--hook", TEST_HOOK, "--d-sae", "64", "--k", "4", "--batch-size", "128"]
    args += ["--shuffle-tokens", "256", "-q"]
    code = main(
        ["train-sae", str(corpus), "--out", str(out), "--max-tokens", "1200", "--epochs", "2"]
        + ["--activations", str(acts), "--save-dtype", "float16", *args]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and printed.count("\n") == 4  # header, 2 epochs, saved line
    assert np.load(acts, mmap_mode="r").shape == (1200, 576)  # capped, exactly
    sae = load_sae(out)
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.k) == ("topk", 576, 64, 4)
    assert sae.metadata["hook_name"] == TEST_HOOK
    assert sae.normalize_activations == "constant_norm_rescale"
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["weights_sha256"] == sae.weights_sha256 and recipe["finished"]
    assert recipe["tokens_trained"] == 2 * (1200 - recipe["n_val_tokens"])
    assert len(recipe["history"]) == 2 and recipe["train"]["d_sae"] == 64
    metrics = json.loads((out / "metrics.json").read_text())["epochs"]
    assert metrics == recipe["history"]
    assert not (out / "checkpoint.pt").exists()

    # The trained SAE plugs into a store and ingests.
    store_path = tmp_path / "s.duckdb"
    init_store(store_path, sae=str(out), sae_name="trained")
    with saedb.open(store_path) as store:
        res = run_ingest(store, IngestConfig(source=str(corpus), dataset="c", progress=False))
        assert (res.n_docs, res.n_bad) == (30, 1)
        l0 = store.sql("SELECT avg(n_latents) a FROM doc_encodings").a[0]
        assert 4 <= l0 <= 64

    # Streaming all of the store's documents: BatchTopK, stopped after 4 steps, then
    # resumed; the result equals a run that was never stopped.
    stream = ["train-sae", "--store", str(store_path), "--datasets", "c", *args]
    stream += ["--architecture", "batchtopk", "--max-tokens", "100000", "--val-fraction", "0.2"]
    stream += ["--checkpoint-every", "2"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main([*stream, "--out", str(whole)]) == 0
    assert main([*stream, "--out", str(part), "--max-steps", "4"]) == 0
    assert (part / "checkpoint.pt").is_file()
    assert not json.loads((part / "recipe.json").read_text())["finished"]
    capsys.readouterr()
    assert main([*stream, "--out", str(part)]) == 2  # an unfinished run is never overwritten
    assert "continue it with --resume" in capsys.readouterr().err
    assert main([*stream, "--out", str(part), "--resume"]) == 0
    assert not (part / "checkpoint.pt").exists()
    a, b = load_sae(whole), load_sae(part)
    assert a.architecture == b.architecture == "jumprelu"
    for name, t in a.tensors().items():
        assert torch.equal(b.tensors()[name], t), name
    assert a.metadata["dataset_path"] == str(store_path)
    history = json.loads((part / "metrics.json").read_text())["epochs"]
    assert history == json.loads((whole / "metrics.json").read_text())["epochs"]


def test_train_sae_refuses_bad_sources(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["train-sae", "--out", out, "-q"]) == 2
    assert "needs corpus files, --store STORE" in capsys.readouterr().err
    assert main(["train-sae", "--out", out, "--architecture", "relu", "-q"]) == 2
    assert "Valid architectures are: topk, batchtopk, matryoshka" in capsys.readouterr().err
    assert main(["train-sae", "--out", out, "--datasets", "a", "-q"]) == 2
    assert "no --store given" in capsys.readouterr().err
    assert main(["train-sae", str(tmp_path / "missing.jsonl"), "--out", out, "-q"]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
