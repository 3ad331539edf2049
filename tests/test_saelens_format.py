"""The SAELens directory format: round trips, legacy cfgs, scaling-factor folding, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ingest.sae import (
    SAE,
    SAE_FORMATS,
    SAELENS_CFG_VERSION,
    SAEFormat,
    load_sae,
    load_saelens,
    register_sae_format,
    save_saelens,
)
from saedb.errors import ConfigError, ModelError, RegistryError

D_IN, D_SAE = 12, 48
META = {"model_name": "HuggingFaceTB/SmolLM2-135M", "hook_name": "blocks.3.hook_resid_post"}


def random_tensors(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g) * 0.3,
    }
    if arch == "gated":
        t |= {name: torch.randn(D_SAE, generator=g) * 0.3 for name in ("b_gate", "r_mag", "b_mag")}
    else:
        t["b_enc"] = torch.randn(D_SAE, generator=g) * 0.3 - 0.1
    if arch == "jumprelu":
        t["threshold"] = torch.rand(D_SAE, generator=g) * 0.5
    return t


def make_sae(arch: str, **kw: object) -> SAE:
    return SAE(
        architecture=arch,
        **random_tensors(arch),
        k=5 if arch == "topk" else None,
        metadata=dict(META),
        **kw,
    )  # type: ignore[arg-type]


def x_batch(seed: int = 1) -> torch.Tensor:
    return torch.randn(30, D_IN, generator=torch.Generator().manual_seed(seed))


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dir(path: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a SAELens-style directory by hand."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "sae_weights.safetensors")
    return path


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        ("standard", {}),
        ("standard", {"normalize_activations": "layer_norm", "apply_b_dec_to_input": False}),
        ("jumprelu", {"normalize_activations": "constant_norm_rescale"}),
        ("gated", {}),
        ("topk", {}),
        ("topk", {"rescale_acts_by_decoder_norm": True}),
    ],
)
def test_round_trip(tmp_path: Path, arch: str, kw: dict) -> None:
    sae = make_sae(arch, **kw)
    assert sae.weights_sha256 is None
    out = save_saelens(sae, tmp_path / "sae")
    weights = out / "sae_weights.safetensors"
    assert sae.weights_sha256 == file_sha(weights)
    back = load_saelens(out)
    assert back.weights_sha256 == sae.weights_sha256
    assert back.cfg == sae.cfg
    assert back.tensors().keys() == sae.tensors().keys()
    for name, t in sae.tensors().items():
        assert torch.equal(back.tensors()[name], t), name
    assert torch.equal(back.encode(x_batch()), sae.encode(x_batch()))
    on_disk = json.loads((out / "cfg.json").read_text())
    assert on_disk == sae.cfg
    assert on_disk["metadata"]["hook_name"] == META["hook_name"]


def test_v6_cfg_fields(tmp_path: Path) -> None:
    cfg = make_sae("topk").cfg
    assert {
        "architecture",
        "d_in",
        "d_sae",
        "dtype",
        "apply_b_dec_to_input",
        "k",
        "normalize_activations",
        "reshape_activations",
        "rescale_acts_by_decoder_norm",
        "metadata",
    } <= cfg.keys()
    assert cfg["architecture"] == "topk" and cfg["k"] == 5 and cfg["d_sae"] == D_SAE
    # SAELens reads a cfg without metadata.sae_lens_version >= 6 as a flat pre-6.0 one
    assert cfg["metadata"]["sae_lens_version"] == SAELENS_CFG_VERSION == "6.0.0"
    later = make_sae("topk")
    later.metadata["sae_lens_version"] = "6.54.12"  # as SAELens itself saved it: kept
    assert later.cfg["metadata"]["sae_lens_version"] == "6.54.12"
    assert {
        "model_name",
        "hook_name",
        "hook_head_index",
        "prepend_bos",
        "context_size",
        "dataset_path",
    } <= cfg["metadata"].keys()
    assert "k" not in make_sae("standard").cfg


def test_float16_save(tmp_path: Path) -> None:
    sae = make_sae("jumprelu")
    full = save_saelens(sae, tmp_path / "f32") / "sae_weights.safetensors"
    out = save_saelens(sae, tmp_path / "f16", dtype="float16")
    weights = out / "sae_weights.safetensors"
    assert sae.weights_sha256 == file_sha(weights)
    assert weights.stat().st_size < 0.6 * full.stat().st_size
    assert json.loads((out / "cfg.json").read_text())["dtype"] == "float16"
    back = load_sae(out)
    assert back.weights_sha256 == file_sha(weights)
    for name, t in sae.tensors().items():
        got = back.tensors()[name]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, t, rtol=1e-3, atol=1e-4)


def test_save_refuses_overflow_and_bad_dtype(tmp_path: Path) -> None:
    sae = make_sae("standard")
    sae.W_dec[0, 0] = 1e6
    with pytest.raises(ModelError, match="'W_dec' has values that do not fit float16"):
        save_saelens(sae, tmp_path / "x", dtype="float16")
    with pytest.raises(ConfigError, match="Valid dtypes are: float32, float16, bfloat16"):
        save_saelens(sae, tmp_path / "x", dtype="int8")


def test_legacy_flat_cfg(tmp_path: Path) -> None:
    t = random_tensors("standard")
    cfg = {
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "hook_point_layer": 8,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cuda",
        "activation_fn_str": "relu",
        "l1_coefficient": 8e-5,
        "normalize_activations": False,
        "sae_lens_version": "2.1.3",
    }
    path = write_dir(tmp_path / "legacy", cfg, {k: v.bfloat16() for k, v in t.items()})
    sae = load_sae(path)
    assert sae.architecture == "standard" and sae.apply_b_dec_to_input
    assert sae.normalize_activations == "none"
    assert sae.metadata["hook_name"] == "blocks.8.hook_resid_pre"
    assert sae.metadata["model_name"] == "gpt2-small"
    assert sae.metadata["l1_coefficient"] == 8e-5
    assert sae.W_enc.dtype == torch.float32
    torch.testing.assert_close(sae.W_enc, t["W_enc"].bfloat16().float(), rtol=0, atol=0)
    # saved again, it is a v6 cfg: a version below 6 would make SAELens read it as flat
    saved = json.loads((save_saelens(sae, tmp_path / "v6") / "cfg.json").read_text())
    assert saved["metadata"]["sae_lens_version"] == SAELENS_CFG_VERSION
    assert saved["metadata"]["hook_name"] == "blocks.8.hook_resid_pre"


def test_legacy_topk_cfg(tmp_path: Path) -> None:
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_name": "layers.2",
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": 7},
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
    }
    sae = load_saelens(write_dir(tmp_path / "legacy", cfg, random_tensors("topk")))
    assert (sae.architecture, sae.k, sae.apply_b_dec_to_input) == ("topk", 7, False)
    assert sae.metadata["hook_name"] == "layers.2"


def test_legacy_unsupported_activation(tmp_path: Path) -> None:
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "tanh-relu"}
    with pytest.raises(ModelError, match="activation_fn 'tanh-relu' is not supported"):
        load_saelens(write_dir(tmp_path / "s", cfg, random_tensors("standard")))


def test_expected_average_only_in_is_folded(tmp_path: Path) -> None:
    s = 3.0
    t = random_tensors("jumprelu")
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "architecture": "jumprelu",
        "hook_name": "layers.1",
        "normalize_activations": True,
    }  # legacy boolean
    path = write_dir(tmp_path / "scaled", cfg, t)
    with pytest.raises(ModelError, match="no norm_scaling_factor is given"):
        load_saelens(path)
    sae = load_sae(path, norm_scaling_factor=s)
    assert sae.normalize_activations == "expected_average_only_in"
    assert sae.norm_scaling_factor == s
    raw = SAE(architecture="jumprelu", **t)  # the SAE as trained: it reads s * x
    x = x_batch()
    torch.testing.assert_close(sae.encode(x), raw.encode(s * x))
    assert torch.equal(sae.encode(x) > 0, raw.encode(s * x) > 0)
    torch.testing.assert_close(sae.decode(sae.encode(x)), raw.decode(raw.encode(s * x)) / s)

    # saved folded with normalize "none" (what SAELens reads right); reloads without refolding
    out = save_saelens(sae, tmp_path / "saved")
    on_disk = json.loads((out / "cfg.json").read_text())
    assert on_disk["normalize_activations"] == "none"
    assert on_disk["metadata"]["norm_scaling_factor_folded"] == s
    back = load_saelens(out)
    assert back.cfg == sae.cfg and back.norm_scaling_factor == s
    assert torch.equal(back.W_enc, sae.W_enc)
    with pytest.raises(ModelError, match="already fold one in"):
        load_saelens(out, norm_scaling_factor=s)


def test_v6_scaling_factor_from_cfg(tmp_path: Path) -> None:
    t = random_tensors("standard")
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "normalize_activations": "expected_average_only_in",
        "metadata": {**META, "norm_scaling_factor": 0.5},
    }
    sae = load_saelens(write_dir(tmp_path / "v6", cfg, t))
    torch.testing.assert_close(sae.W_enc, t["W_enc"] * 0.5)
    torch.testing.assert_close(sae.b_dec, t["b_dec"] / 0.5)


def test_scaling_factor_for_a_plain_sae_is_refused(tmp_path: Path) -> None:
    path = save_saelens(make_sae("standard"), tmp_path / "plain")
    with pytest.raises(ModelError, match="norm_scaling_factor given, but normalize_activations"):
        load_sae(path, norm_scaling_factor=2.0)


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    path = save_saelens(make_sae("standard"), tmp_path / "sae")
    (path / "cfg.json").unlink()
    with pytest.raises(ModelError, match=f"{path / 'cfg.json'} does not exist"):
        load_saelens(path)
    (path / "sae_weights.safetensors").unlink()
    (path / "cfg.json").write_text("{}")
    with pytest.raises(ModelError, match="sae_weights.safetensors does not exist"):
        load_saelens(path)


def test_missing_key_names_file_and_key(tmp_path: Path) -> None:
    t = random_tensors("jumprelu")
    del t["threshold"]
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "metadata": META}
    path = write_dir(tmp_path / "j", cfg, t)
    with pytest.raises(ModelError) as exc:
        load_saelens(path)
    assert str(path / "sae_weights.safetensors") in str(exc.value)
    assert "no tensor 'threshold'" in str(exc.value)


def test_log_threshold_is_accepted(tmp_path: Path) -> None:
    t = random_tensors("jumprelu")
    threshold = t.pop("threshold")
    t["log_threshold"] = threshold.log()
    cfg = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "metadata": META}
    sae = load_saelens(write_dir(tmp_path / "j", cfg, t))
    torch.testing.assert_close(sae.threshold, threshold)


def test_shape_mismatch_names_file_and_key(tmp_path: Path) -> None:
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE + 1, "metadata": META}
    path = write_dir(tmp_path / "s", cfg, random_tensors("standard"))
    with pytest.raises(ModelError) as exc:
        load_saelens(path)
    message = str(exc.value)
    assert str(path / "sae_weights.safetensors") in message
    assert "tensor 'W_enc' has shape (12, 48)" in message and "(12, 49)" in message


def test_unknown_architecture_lists_valid_names(tmp_path: Path) -> None:
    cfg = {
        "architecture": "jumprelu_skip_transcoder",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "metadata": META,
    }
    path = write_dir(tmp_path / "t", cfg, random_tensors("standard"))
    with pytest.raises(RegistryError) as exc:
        load_saelens(path)
    assert str(path / "cfg.json") in str(exc.value)
    assert (
        "Architecture 'jumprelu_skip_transcoder' not found. Valid architectures are: "
        "abstopk, gated, groupmax, jumprelu, standard, topk" in str(exc.value)
    )


def test_bad_json(tmp_path: Path) -> None:
    path = save_saelens(make_sae("standard"), tmp_path / "sae")
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read it as JSON"):
        load_sae(path)


def test_load_sae_detection_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "cfg.json").write_text("{}")
    with pytest.raises(ModelError) as exc:
        load_sae(tmp_path / "empty")
    message = str(exc.value)
    assert str(tmp_path / "empty") in message
    assert "saelens: a directory with cfg.json and sae_weights.safetensors" in message
    assert "It holds: cfg.json" in message
    with pytest.raises(RegistryError, match="Valid SAE formats are: dictionary_learning, "):
        load_sae(tmp_path / "empty", format="sparsify-v0")


def test_format_registry_refuses_duplicates() -> None:
    assert list(SAE_FORMATS) == [
        "dictionary_learning",
        "gemmascope",
        "gemmascope2",
        "goodfire",
        "llamascope",
        "saelens",
        "sparsify",
    ]
    with pytest.raises(RegistryError, match="SAE format 'saelens' is already registered"):
        register_sae_format(SAEFormat("saelens", "", lambda p: False, load_saelens))
