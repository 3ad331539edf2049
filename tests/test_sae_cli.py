"""`saedb sae add` / `saedb sae list`, and ingest refusing a reader that does not fit its SAE.

Real parts throughout: the builtin SmolLM2 reader, real DuckDB stores, SAEs written in their
libraries' layouts (sparsify by eai-sparsify itself)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.sae import SAE, save_saelens
from ingest.sae_formats import sha256_file
from saedb.cli import main
from tests.conftest import fortunes, write_jsonl

D_IN, D_SAE = 576, 256  # SmolLM2's hidden size


def saelens_dir(path: Path, *, model: str, hook: str, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(
        architecture="standard",
        W_enc=torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        W_dec=torch.randn(D_SAE, D_IN, generator=g),
        b_dec=torch.zeros(D_IN),
        b_enc=torch.full((D_SAE,), -0.05),
        metadata={"model_name": model, "hook_name": hook},
    )
    return save_saelens(sae, path)


def sparsify_dir(root: Path, hookpoint: str) -> Path:
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    coder = SparseCoder(D_IN, SparseCoderConfig(k=16, num_latents=D_SAE))
    coder.save_to_disk(root / hookpoint)
    return root / hookpoint


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys, store: Path) -> dict[str, dict]:
    code, out, _ = run(capsys, "sae", "list", store, "-f", "json")
    assert code == 0
    return {row["name"]: row for row in json.loads(out)}


def test_add_sparsify_and_list(tmp_path: Path, capsys) -> None:
    store = tmp_path / "s.duckdb"
    sae = sparsify_dir(tmp_path / "ckpt", "layers.4")
    code, out, err = run(capsys, "sae", "add", store, sae, "--model-name", "SmolLM2-135M-Instruct")
    assert code == 0, err
    assert "SAE 'layers.4'" in out and "sparsify" in out and "blocks" not in out
    rows = listed(capsys, store)
    row = rows["layers.4"]
    assert row["format"] == "sparsify" and row["architecture"] == "topk"
    assert (row["d_in"], row["d_sae"]) == (D_IN, D_SAE)
    assert row["hook_name"] == "layers.4" and row["reader_model"] == "SmolLM2-135M-Instruct"
    assert row["weights_sha256"] == sha256_file(sae / "sae.safetensors")
    assert row["is_default"] is True and row["force_reader"] is False
    # the same again is a no-op; another name for the same weights is a second SAE
    assert run(capsys, "sae", "add", store, sae, "--model-name", "SmolLM2-135M-Instruct")[0] == 0
    assert run(capsys, "sae", "add", store, sae, "--name", "again")[0] == 0
    assert list(listed(capsys, store)) == ["layers.4", "again"]


def test_add_refuses_what_does_not_fit(tmp_path: Path, capsys) -> None:
    store = tmp_path / "s.duckdb"
    gpt2 = saelens_dir(tmp_path / "gpt2-sae", model="gpt2", hook="blocks.3.hook_resid_post")
    code, _, err = run(capsys, "sae", "add", store, gpt2)
    assert code == 1
    assert "trained on gpt2, but the reader is HuggingFaceTB/SmolLM2-135M-Instruct" in err
    assert "--force" in err
    z = saelens_dir(tmp_path / "z", model="HuggingFaceTB/SmolLM2-135M", hook="blocks.3.attn.hook_z")
    code, _, err = run(capsys, "sae", "add", store, z)
    assert code == 1 and "cannot be honoured" in err and "attention" in err
    deep = saelens_dir(tmp_path / "deep", model="SmolLM2", hook="blocks.40.hook_resid_post")
    code, _, err = run(capsys, "sae", "add", store, deep, "--force")
    assert code == 1 and "layer 40 does not exist" in err and "30 layers" in err
    np.savez(tmp_path / "params.npz", W_enc=np.zeros((D_IN, 8), np.float32))
    code, _, err = run(capsys, "sae", "add", store, tmp_path / "params.npz")
    assert code == 1 and "params.npz has no tensor 'W_dec'" in err
    code, _, err = run(capsys, "sae", "add", store, gpt2, "--format", "pickle")
    assert code == 2 and "SAE format 'pickle' not found. Valid SAE formats are:" in err
    assert not store.exists() or listed(capsys, store) == {}


def other_reader(tmp_path: Path) -> Path:
    """The builtin reader's weights under another model name (same hidden size)."""
    from ingest.reader import DEFAULT_READER, resolve_reader

    real = resolve_reader(DEFAULT_READER).path
    copy = tmp_path / "renamed-reader"
    copy.mkdir()
    for f in real.iterdir():
        if f.name != "config.json":
            (copy / f.name).symlink_to(f)
    cfg = json.loads((real / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "acme/Tiny-576"}))
    return copy


@pytest.mark.slow
def test_ingest_refuses_a_mismatched_reader_unless_forced(tmp_path: Path, capsys) -> None:
    store = tmp_path / "s.duckdb"
    smol = saelens_dir(
        tmp_path / "smol", model="HuggingFaceTB/SmolLM2-135M-Instruct", hook="blocks.2.hook_mlp_out"
    )
    acme = saelens_dir(tmp_path / "acme", model="acme/Tiny-576", hook="layers.2", seed=1)
    assert run(capsys, "sae", "add", store, smol, "--name", "smol")[0] == 0
    code, out, err = run(capsys, "sae", "add", store, acme, "--name", "acme", "--force")
    assert code == 0, err
    assert "--force: the SAE was trained on acme/Tiny-576" in err
    assert listed(capsys, store)["acme"]["force_reader"] is True
    src = write_jsonl(tmp_path / "d.jsonl", fortunes("food", 4))
    reader = other_reader(tmp_path)
    code, _, err = run(capsys, "ingest", store, src, "--dataset", "x", "--sae", "smol",
                       "--reader", reader, "-q")  # fmt: skip
    assert code == 1
    assert "trained on HuggingFaceTB/SmolLM2-135M-Instruct, but the reader is acme/Tiny-576" in err
    # the builtin reader fits 'smol': its MLP output (hook_mlp_out) is encoded
    code, out, err = run(capsys, "ingest", store, src, "--dataset", "x", "--sae", "smol", "-q")
    assert code == 0, err
    assert json.loads(out)["documents"] == 4
    # 'acme' was forced onto the builtin reader: ingest accepts the pair
    code, out, err = run(capsys, "ingest", store, src, "--dataset", "y", "--sae", "acme", "-q")
    assert code == 0, err
    import saedb

    with saedb.open(store, read_only=True) as s:
        n = s.sql(
            "SELECT s.name, count(DISTINCT e.doc_id) AS n FROM doc_encodings e "
            "JOIN saes s USING (sae_id) GROUP BY ALL ORDER BY 1"
        )
    assert n.to_dict("records") == [{"name": "acme", "n": 4}, {"name": "smol", "n": 4}]


def narrow_reader(tmp_path: Path, name: str = "acme/Narrow-64") -> Path:
    """A real (randomly initialised, 4-layer) Llama reader of hidden size 64 with the builtin
    reader's tokenizer: a model that cannot feed a 576-wide SAE."""
    import transformers

    from ingest.reader import DEFAULT_READER, resolve_reader

    real = resolve_reader(DEFAULT_READER).path
    cfg = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    where = tmp_path / "narrow-reader"
    transformers.LlamaForCausalLM(cfg).save_pretrained(where)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (where / f).symlink_to(real / f)
    config = json.loads((where / "config.json").read_text())
    (where / "config.json").write_text(json.dumps({**config, "_name_or_path": name}))
    return where


def test_add_refuses_another_hidden_size_even_forced(tmp_path: Path, capsys) -> None:
    store = tmp_path / "s.duckdb"
    sae = saelens_dir(tmp_path / "sae", model="acme/Narrow-64", hook="blocks.1.hook_resid_post")
    reader = narrow_reader(tmp_path)
    for force in ((), ("--force",)):
        code, _, err = run(capsys, "sae", "add", store, sae, "--reader", reader, *force)
        assert code == 1, err
        assert "reader acme/Narrow-64 has hidden size 64 but SAE 'sae' expects d_in=576" in err
    assert not store.exists() or listed(capsys, store) == {}


@pytest.mark.slow
def test_ingest_refuses_another_hidden_size_even_forced(tmp_path: Path, capsys) -> None:
    """--force lets a reader of another name through, never one of another hidden size."""
    import saedb

    store = tmp_path / "s.duckdb"
    sae = saelens_dir(
        tmp_path / "smol", model="HuggingFaceTB/SmolLM2-135M-Instruct",
        hook="blocks.1.hook_resid_post", seed=2,
    )  # fmt: skip
    code, _, err = run(capsys, "sae", "add", store, sae, "--name", "smol", "--force")
    assert code == 0, err
    src = write_jsonl(tmp_path / "d.jsonl", fortunes("food", 3))
    code, _, err = run(capsys, "ingest", store, src, "--dataset", "x", "--sae", "smol",
                       "--reader", narrow_reader(tmp_path), "-q")  # fmt: skip
    assert code == 1
    assert "reader acme/Narrow-64 has hidden size 64 but SAE 'smol' expects d_in=576" in err
    with saedb.open(store, read_only=True) as s:
        assert s.sql("SELECT count(*) AS n FROM documents")["n"][0] == 0


@pytest.mark.slow
def test_ingest_refuses_weights_changed_since_added(tmp_path: Path, capsys, monkeypatch) -> None:
    """The weights file is hashed at `saedb sae add` and again at every ingest: other weights
    at the recorded path are refused (there is no override: the latents of other weights are
    another SAE, to add under another --name)."""
    import saedb
    from ingest import pipeline

    monkeypatch.setattr(pipeline, "_LOADED", {})  # no model loaded by an earlier test
    store = tmp_path / "s.duckdb"
    hook = "blocks.1.hook_resid_post"
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    sae = saelens_dir(tmp_path / "smol", model=model, hook=hook, seed=3)
    assert run(capsys, "sae", "add", store, sae, "--name", "smol")[0] == 0
    registered = listed(capsys, store)["smol"]["weights_sha256"]
    saelens_dir(sae, model=model, hook=hook, seed=4)  # retrained in place
    assert sha256_file(sae / "sae_weights.safetensors") != registered
    src = write_jsonl(tmp_path / "d.jsonl", fortunes("food", 3))
    code, _, err = run(capsys, "ingest", store, src, "--dataset", "x", "--sae", "smol", "-q")
    assert code == 1, err
    assert f"the SAE weights at {sae} changed since they were registered as 'smol'" in err
    assert registered[:12] in err
    assert "--name NEW) and ingest with --sae NEW" in err  # says what to do
    with saedb.open(store, read_only=True) as s:
        assert s.sql("SELECT count(*) AS n FROM documents")["n"][0] == 0
    # the same name with the new weights is refused; another name registers them
    code, _, err = run(capsys, "sae", "add", store, sae, "--name", "smol")
    assert code == 1 and "with other weights is already in" in err
    assert run(capsys, "sae", "add", store, sae, "--name", "smol-v2")[0] == 0


@pytest.mark.slow
def test_gemma_scope_needs_hook_and_ingests_mlp_out(tmp_path: Path, capsys) -> None:
    """A format without hook or model (a bare params.npz) needs --hook; the recorded hook is
    honoured by ingest and the encode there equals the SAE on the reader's MLP output."""
    from ingest.config import ReaderConfig
    from ingest.pipeline import load_components
    from ingest.sae_formats import load_sae

    r = np.random.default_rng(0)
    np.savez(
        tmp_path / "params.npz",
        W_enc=(r.standard_normal((D_IN, D_SAE)) / 24).astype(np.float32),
        W_dec=r.standard_normal((D_SAE, D_IN)).astype(np.float32),
        b_enc=np.zeros(D_SAE, np.float32),
        b_dec=np.zeros(D_IN, np.float32),
        threshold=np.full(D_SAE, 0.05, np.float32),
    )
    store = tmp_path / "s.duckdb"
    code, _, err = run(capsys, "sae", "add", store, tmp_path)
    assert code == 2 and "does not say which hook it reads; pass --hook" in err
    code, _, err = run(capsys, "sae", "add", store, tmp_path, "--hook", "blocks.5.hook_mlp_out",
                       "--name", "gs")  # fmt: skip
    assert code == 0, err
    assert "does not say which model it was trained on" in err
    row = listed(capsys, store)["gs"]
    assert (row["format"], row["hook_name"]) == ("gemmascope", "blocks.5.hook_mlp_out")
    import saedb

    with saedb.open(store) as s:
        reader, sae = load_components(s.get_sae("gs"), None, ReaderConfig())
    ids = torch.tensor([[1, 504, 1542, 314, 253, 1028]])
    with torch.inference_mode():
        mlp = reader._hidden_at_hook(ids, torch.ones_like(ids))[0]
        layer = reader.layers[5]
        got = []
        h = layer.mlp.register_forward_hook(lambda _m, _a, out: got.append(out))
        reader.model(input_ids=ids)
        h.remove()
    torch.testing.assert_close(mlp, got[0][0])
    expected = load_sae(tmp_path).encode(got[0][0])
    torch.testing.assert_close(sae.encode(mlp), expected)


@pytest.mark.slow
def test_init_records_the_detected_format(tmp_path: Path) -> None:
    """`saedb init --sae DIR` takes any format too, and ingest reloads it in that format."""
    import saedb
    from ingest.config import ReaderConfig
    from ingest.pipeline import init_store, load_components

    sae = sparsify_dir(tmp_path / "ckpt", "layers.1")
    rec = init_store(tmp_path / "s.duckdb", sae=str(sae), sae_name="sp")
    assert (rec.format, rec.architecture, rec.hook_name) == ("sparsify", "topk", "layers.1")
    with saedb.open(tmp_path / "s.duckdb") as store:
        got = store.get_sae("sp")
        assert (got.format, got.force_reader) == ("sparsify", False)
        _, loaded = load_components(got, None, ReaderConfig())
    assert loaded.format == "sparsify" and loaded.weights_sha256 == got.weights_sha256


def test_rows_from_before_0008_read_as_saelens(tmp_path: Path) -> None:
    """SAEs registered before migration 0008 have no format or force_reader of their own:
    they read as SAELens SAEs checked against their reader."""
    import saedb

    with saedb.open(tmp_path / "s.duckdb") as store:
        store.con.execute(
            "INSERT INTO saes (sae_id, name, reader_model, hook_name, layer, architecture, "
            "d_in, d_sae, weights_sha256, path, config) VALUES "
            "(1, 'old', 'm', 'blocks.1.hook_resid_post', 1, 'topk', 8, 16, 'ab', '/x', '{}')"
        )
        rec = store.get_sae("old")
        names = [r[0] for r in store.con.execute("SELECT name FROM schema_migrations").fetchall()]
    assert (rec.format, rec.force_reader) == ("saelens", False)
    assert "0008_sae_provenance" in names
