"""Parity with the reference libraries: SAEs built and saved by the real ``sae-lens`` and
``eai-sparsify`` packages (random weights, small sizes, their own save functions), loaded by
saedb, give the same latents on the same inputs: the same nonzero (token, latent) pairs
exactly, values to float32 tolerance. And the other way: SAEs that saedb saved or trained
load in ``sae-lens`` and give there the latents they give in saedb."""

from __future__ import annotations

from pathlib import Path

import pytest
import sae_lens  # dev dependencies (pyproject dev extra, make venv)
import sparsify  # noqa: F401 - eai-sparsify
import torch

from ingest.sae import SAE, load_sae, save_saelens
from ingest.sae_formats import detect_sae_format
from saedb.errors import ModelError

D_IN, D_SAE, K, N = 16, 64, 6, 50
META = {
    "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "hook_name": "blocks.3.hook_resid_post",
}


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(N, D_IN, generator=torch.Generator().manual_seed(seed)) + 0.3


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter and float buffer, biased so some latents fire."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if not p.is_floating_point() or p.ndim == 0:
                continue
            v = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "threshold" in name:
                v = v.abs() * 0.3
            elif p.ndim == 2:
                v = v / D_IN**0.5
            else:
                v = v * 0.4 - 0.1
            p.copy_(v.to(p.dtype))


def assert_same_latents(ours: SAE, reference: torch.Tensor, x: torch.Tensor) -> None:
    """Dense and sparse encodes of ``ours`` against the library's dense activations."""
    ref = reference.detach().float()
    assert 0 < int((ref != 0).sum()) < ref.numel()  # the data exercises the activation
    dense = ours.encode(x)
    assert torch.equal(dense != 0, ref != 0)
    torch.testing.assert_close(dense, ref, rtol=1e-5, atol=1e-5)
    tok, lat, val = ours.encode_sparse(x)
    rows, cols = torch.nonzero(ref, as_tuple=True)
    assert torch.equal(tok, rows) and torch.equal(lat, cols)
    torch.testing.assert_close(val, ref[rows, cols], rtol=1e-5, atol=1e-5)


# --- SAELens ---------------------------------------------------------------------------------


def saelens_sae(arch: str, seed: int = 0, **cfg: object):
    """An inference SAE of ``arch`` built by SAELens itself, with random weights."""
    config = {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": dict(META),
        **cfg,
    }
    if arch in ("topk", "abstopk"):
        config.setdefault("k", K)
    sae = sae_lens.SAE.from_dict(config)
    randomize(sae, seed)
    sae.eval()
    return sae


SAELENS_CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("standard", {"normalize_activations": "layer_norm"}),
    ("topk", {}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("abstopk", {}),
    ("jumprelu", {}),
    ("jumprelu", {"normalize_activations": "layer_norm", "apply_b_dec_to_input": False}),
    ("gated", {}),
    ("gated", {"normalize_activations": "constant_norm_rescale"}),
]


@pytest.mark.parametrize(("arch", "cfg"), SAELENS_CASES, ids=lambda v: str(v))
def test_saelens_inference_saes(tmp_path: Path, arch: str, cfg: dict) -> None:
    ref = saelens_sae(arch, **cfg)
    ref.save_model(tmp_path / "sae")
    assert detect_sae_format(tmp_path / "sae") == "saelens"
    ours = load_sae(tmp_path / "sae")
    assert (ours.architecture, ours.format, ours.d_in, ours.d_sae) == (arch, "saelens", D_IN, D_SAE)
    assert ours.metadata["hook_name"] == META["hook_name"]
    x = inputs()
    with torch.no_grad():
        assert_same_latents(ours, ref.encode(x), x)


def test_saelens_expected_average_only_in(tmp_path: Path) -> None:
    """Saved unfolded with the mode set; SAELens folds the release's factor at load, we take
    it as norm_scaling_factor (--norm-scaling-factor)."""
    s = 0.37
    ref = saelens_sae("jumprelu", seed=3, normalize_activations="expected_average_only_in")
    ref.save_model(tmp_path / "sae")
    with pytest.raises(ModelError, match="no norm_scaling_factor is given"):
        load_sae(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae", norm_scaling_factor=s)
    ref.fold_activation_norm_scaling_factor(s)
    x = inputs(4) * 5
    with torch.no_grad():
        assert_same_latents(ours, ref.encode(x), x)
        torch.testing.assert_close(ours.decode(ours.encode(x)), ref.decode(ref.encode(x)))


def test_saelens_legacy_topk_cfg(tmp_path: Path) -> None:
    """A pre-6.0 flat cfg (activation_fn topk) loads the same as in SAELens 6."""
    import json

    ref = saelens_sae("topk", seed=5)
    ref.save_model(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    legacy = {
        "architecture": "standard",
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": K},
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_name": META["hook_name"],
        "model_name": META["model_name"],
        "apply_b_dec_to_input": cfg["apply_b_dec_to_input"],
        "normalize_activations": "none",
    }
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(legacy))
    x = inputs(6)
    with torch.no_grad():
        assert_same_latents(load_sae(tmp_path / "sae"), ref.encode(x), x)


def training_sae(arch: str, seed: int, rescale: bool):
    """A BatchTopK or Matryoshka BatchTopK training SAE with a learned-looking threshold."""
    common = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "k": K,
        "dtype": "float32",
        "device": "cpu",
        "rescale_acts_by_decoder_norm": rescale,
        "metadata": sae_lens.saes.sae.SAEMetadata(**META),
    }
    if arch == "batchtopk":
        cfg = sae_lens.BatchTopKTrainingSAEConfig(**common)
        sae = sae_lens.BatchTopKTrainingSAE(cfg)
    else:
        cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(**common, matryoshka_widths=[16, 64])
        sae = sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)
    randomize(sae, seed)
    sae.topk_threshold = torch.tensor(0.21, dtype=torch.double)
    return sae


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_batchtopk_as_jumprelu(tmp_path: Path, arch: str, rescale: bool) -> None:
    """SAELens saves BatchTopK / Matryoshka for inference as jumprelu; its training
    checkpoint (save_model: topk_threshold) loads in saedb as the same jumprelu."""
    train = training_sae(arch, seed=7, rescale=rescale)
    train.save_inference_model(tmp_path / "inference")
    train.save_model(tmp_path / "checkpoint")
    ref = sae_lens.SAE.load_from_disk(tmp_path / "inference")
    assert ref.cfg.architecture() == "jumprelu"
    x = inputs(8)
    with torch.no_grad():
        expected = ref.encode(x)
    for where in ("inference", "checkpoint"):
        ours = load_sae(tmp_path / where)
        assert ours.architecture == "jumprelu"
        assert_same_latents(ours, expected, x)
    assert load_sae(tmp_path / "checkpoint").metadata["saved_architecture"] == arch


# --- saedb -> SAELens -------------------------------------------------------------------------


def saedb_sae(arch: str, seed: int, **kw: object) -> SAE:
    """An SAE of ``arch`` built by saedb, with random weights biased so some latents fire."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 0.4,
    }
    if arch == "gated":
        t |= {n: torch.randn(D_SAE, generator=g) * 0.4 - 0.1 for n in ("b_gate", "r_mag", "b_mag")}
    else:
        t["b_enc"] = torch.randn(D_SAE, generator=g) * 0.4 - 0.1
    if arch == "jumprelu":
        t["threshold"] = torch.rand(D_SAE, generator=g) * 0.4
    k = K if arch in ("topk", "abstopk") else None
    return SAE(architecture=arch, **t, k=k, metadata=dict(META), **kw)  # type: ignore[arg-type]


SAVED_CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False, "normalize_activations": "layer_norm"}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("topk", {}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("abstopk", {}),
    ("jumprelu", {}),
    # saved with the factor folded in and normalize_activations none: SAELens reads raw x
    ("jumprelu", {"normalize_activations": "expected_average_only_in", "norm_scaling_factor": 0.3}),
    ("gated", {}),
]


def assert_saelens_agrees(path: Path, ours: SAE, x: torch.Tensor) -> None:
    """SAELens loads the directory saedb wrote, and its latents are saedb's: those of the SAE
    in memory and of saedb's reload of the directory."""
    ref = sae_lens.SAE.load_from_disk(path, device="cpu")
    assert ref.cfg.metadata.hook_name == META["hook_name"]
    assert ref.cfg.metadata.model_name == META["model_name"]
    ref.eval()
    with torch.no_grad():
        expected = ref.encode(x)
    assert_same_latents(ours, expected, x)
    assert_same_latents(load_sae(path), expected, x)


@pytest.mark.parametrize(("arch", "kw"), SAVED_CASES, ids=lambda v: str(v))
def test_saelens_loads_what_saedb_saves(tmp_path: Path, arch: str, kw: dict) -> None:
    ours = saedb_sae(arch, seed=21, **kw)
    x = inputs(22) * (4 if "norm_scaling_factor" in kw else 1)
    assert_saelens_agrees(save_saelens(ours, tmp_path / "sae"), ours, x)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_saelens_loads_what_saedb_trains(tmp_path: Path, arch: str) -> None:
    """A few steps of saedb's trainer (constant_norm_rescale inputs; batchtopk and matryoshka
    saved as jumprelu), saved as ``saedb train-sae`` saves it, read by SAELens."""
    from ingest.activations import ArraySource
    from ingest.config import TrainConfig
    from ingest.train import train

    g = torch.Generator().manual_seed(23)
    acts = (torch.randn(1536, D_IN, generator=g) * torch.rand(D_IN, generator=g) * 3).numpy()
    cfg = TrainConfig(
        architecture=arch,
        d_sae=D_SAE,
        k=K,
        batch_size=128,
        max_steps=12,
        threshold_decay=0.9,
        val_fraction=0.1,
        val_tokens=128,
        shuffle_tokens=512,
        dead_tokens_threshold=256,
    )
    result = train(ArraySource(acts, val_fraction=0.1), cfg, metadata=dict(META), progress=False)
    ours = result.sae
    assert ours.architecture == ("topk" if arch == "topk" else "jumprelu")
    assert ours.normalize_activations == "constant_norm_rescale"
    x = torch.from_numpy(acts[:N]) + 0.1
    assert_saelens_agrees(save_saelens(ours, tmp_path / "sae"), ours, x)


# --- sparsify ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("activation", "k"), [("topk", K), ("groupmax", 8)])
def test_sparsify(tmp_path: Path, activation: str, k: int) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    cfg = SparseCoderConfig(activation=activation, k=k, num_latents=D_SAE)
    ref = SparseCoder(D_IN, cfg, dtype=torch.float32)
    randomize(ref, seed=11)
    root = tmp_path / "checkpoint"
    ref.save_to_disk(root / "layers.5")
    (tmp_path / "checkpoint" / "layers.9").mkdir()
    ref.save_to_disk(root / "layers.9")
    assert detect_sae_format(root / "layers.5") == "sparsify"
    with pytest.raises(ModelError, match=r"2 sparse coders \(layers.5, layers.9\)"):
        load_sae(root)
    ours = load_sae(root / "layers.5")
    assert (ours.architecture, ours.k, ours.format) == (activation, k, "sparsify")
    assert ours.metadata["hook_name"] == "layers.5" and ours.apply_b_dec_to_input
    x = inputs(12)
    with torch.no_grad():
        out = ref.encode(x)
    dense = torch.zeros(N, D_SAE).scatter_(1, out.top_indices, out.top_acts)
    assert_same_latents(ours, dense, x)
    # decode matches sparsify's on the same codes
    with torch.no_grad():
        torch.testing.assert_close(
            ours.decode(dense), ref.decode(out.top_acts, out.top_indices), rtol=1e-5, atol=1e-5
        )


def test_sparsify_transcoder_is_refused(tmp_path: Path) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    ref = SparseCoder(D_IN, SparseCoderConfig(k=K, num_latents=D_SAE, transcode=True))
    ref.save_to_disk(tmp_path / "layers.2.mlp")
    with pytest.raises(ModelError, match="transcoders and skip connections are not supported"):
        load_sae(tmp_path / "layers.2.mlp")
