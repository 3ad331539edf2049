"""`saedb train-sae` end to end on the real reader: corpus -> activations -> SAE that loads,
records its recipe, and plugs into a store."""

from __future__ import annotations

import json

import numpy as np

import saedb
from ingest.config import IngestConfig
from ingest.pipeline import init_store, run_ingest
from ingest.sae import load_sae
from saedb.cli import main
from tests.conftest import fortunes, write_jsonl


def test_train_sae_cli_end_to_end(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", fortunes("computers", 60) + [{"text": ""}])
    out = tmp_path / "sae"
    acts = tmp_path / "acts.npy"
    code = main(
        [
            "train-sae",
            str(corpus),
            "--out",
            str(out),
            "--hook",
            "blocks.2.hook_resid_post",
            "--d-sae",
            "64",
            "--k",
            "4",
            "--max-tokens",
            "1500",
            "--batch-size",
            "256",
            "--epochs",
            "2",
            "--activations",
            str(acts),
            "--save-dtype",
            "float16",
            "-q",
        ]
    )
    assert code == 0
    assert "FVU" in capsys.readouterr().out
    assert np.load(acts, mmap_mode="r").shape == (1500, 576)  # capped, exactly
    sae = load_sae(out)
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.k) == ("topk", 576, 64, 4)
    assert sae.metadata["hook_name"] == "blocks.2.hook_resid_post"
    assert sae.normalize_activations == "constant_norm_rescale"
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["n_tokens"] == 1500 and recipe["weights_sha256"] == sae.weights_sha256
    assert len(recipe["history"]) == 2 and recipe["train"]["d_sae"] == 64
    # The trained SAE plugs into a store and ingests.
    store_path = tmp_path / "s.duckdb"
    init_store(store_path, sae=str(out), sae_name="trained")
    with saedb.open(store_path) as store:
        res = run_ingest(store, IngestConfig(source=str(corpus), dataset="c", progress=False))
        assert (res.n_docs, res.n_bad) == (60, 1)
        l0 = store.sql("SELECT avg(n_latents) a FROM doc_encodings").a[0]
        assert 4 <= l0 <= 64
