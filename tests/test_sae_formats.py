"""Formats whose libraries cannot be installed here (Gemma Scope 1 and 2, Goodfire, Llama
Scope, dictionary_learning): fixtures written from the documented layouts
(shared/reference/sae-formats.md), loaded by saedb, and the latents checked against the
formulas in plain float64 numpy on the raw tensors as the files store them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ingest.sae_formats import SAE_FORMATS, detect_sae_format, load_sae, sha256_file
from saedb.errors import ModelError

D_IN, D_SAE, N, K = 16, 64, 40, 5


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def x_batch(seed: int = 1) -> np.ndarray:
    return (rng(seed).standard_normal((N, D_IN)) + 0.2).astype(np.float32)


def f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def assert_latents(path: Path, fmt: str, ref: np.ndarray, x: np.ndarray, **kw) -> None:
    """saedb's encode of ``x`` equals ``ref``: nonzeros exactly, values to float32."""
    assert detect_sae_format(path) == fmt
    sae = load_sae(path, **kw)
    assert sae.format == fmt and sae.d_in == D_IN and sae.d_sae == D_SAE
    assert 0 < (ref != 0).sum() < ref.size
    got = sae.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    tok, lat, val = sae.encode_sparse(torch.from_numpy(x))
    rows, cols = np.nonzero(ref)
    np.testing.assert_array_equal(tok.numpy(), rows)
    np.testing.assert_array_equal(lat.numpy(), cols)


def jumprelu(h: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    return np.where(h > threshold, np.maximum(h, 0.0), 0.0)


def gemma_params(seed: int) -> dict[str, np.ndarray]:
    r = rng(seed)
    return {
        "W_enc": f32(r.standard_normal((D_IN, D_SAE)) / 4),
        "W_dec": f32(r.standard_normal((D_SAE, D_IN))),
        "b_enc": f32(r.standard_normal(D_SAE) * 0.3),
        "b_dec": f32(r.standard_normal(D_IN) * 0.5),
        "threshold": f32(r.uniform(0.0, 0.6, D_SAE)),
    }


def gemma_reference(p: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Gemma Scope: jumprelu on x W_enc + b_enc; b_dec is not subtracted."""
    q = {k: v.astype(np.float64) for k, v in p.items()}
    return jumprelu(x.astype(np.float64) @ q["W_enc"] + q["b_enc"], q["threshold"])


def test_gemmascope_npz(tmp_path: Path) -> None:
    p = gemma_params(0)
    where = tmp_path / "gemma-scope-2b-pt-res" / "layer_20" / "width_16k" / "average_l0_71"
    where.mkdir(parents=True)
    np.savez(where / "params.npz", **p)
    x = x_batch()
    assert_latents(where, "gemmascope", gemma_reference(p, x), x)
    sae = load_sae(where / "params.npz")  # the file itself works too
    assert sae.metadata["model_name"] == "google/gemma-2-2b"
    assert sae.metadata["hook_name"] == "blocks.20.hook_resid_post"
    assert not sae.apply_b_dec_to_input
    assert sae.weights_sha256 == sha256_file(where / "params.npz")
    mlp = tmp_path / "gemma-scope-9b-it-mlp" / "layer_3" / "width_16k" / "canonical"
    mlp.mkdir(parents=True)
    np.savez(mlp / "params.npz", **p)
    meta = load_sae(mlp).metadata
    assert (meta["model_name"], meta["hook_name"]) == (
        "google/gemma-2-9b-it",
        "blocks.3.hook_mlp_out",
    )


def test_gemmascope_npz_missing_key(tmp_path: Path) -> None:
    p = gemma_params(1)
    del p["threshold"]
    np.savez(tmp_path / "params.npz", **p)
    with pytest.raises(ModelError, match=r"params.npz has no tensor 'threshold'.*it holds: W_dec"):
        load_sae(tmp_path)


def gemmascope2_dir(where: Path, p: dict[str, np.ndarray], cfg: dict | None) -> Path:
    where.mkdir(parents=True)
    save_file({k.lower(): torch.from_numpy(v) for k, v in p.items()}, where / "params.safetensors")
    if cfg is not None:
        (where / "config.json").write_text(json.dumps({"architecture": "jump_relu", **cfg}))
    return where


def test_gemmascope2_safetensors(tmp_path: Path) -> None:
    p = gemma_params(2)
    where = gemmascope2_dir(
        tmp_path / "resid_post" / "layer_7_width_16k_l0_small",
        p,
        {"model_name": "gemma-v3-1b-pt", "hf_hook_point_in": "model.layers.7.output"},
    )
    x = x_batch(3)
    assert_latents(where, "gemmascope2", gemma_reference(p, x), x)
    meta = load_sae(where).metadata
    assert (meta["model_name"], meta["hook_name"]) == (
        "google/gemma-3-1b-pt",
        "blocks.7.hook_resid_post",
    )
    cfg = json.loads((where / "config.json").read_text())
    (where / "config.json").write_text(json.dumps({**cfg, "hf_hook_point_out": "x"}))
    with pytest.raises(ModelError, match="transcoders are not supported"):
        load_sae(where)


@pytest.mark.parametrize(
    ("model_name", "hf_hook", "expected"),
    [
        # Gemma 3 270m is published without -pt (google/gemma-3-270m); the others with it
        (
            "gemma-v3-270m-pt",
            "model.layers.3.output",
            ("google/gemma-3-270m", "blocks.3.hook_resid_post"),
        ),
        (
            "google/gemma-3-270m-it",
            "model.layers.3.output",
            ("google/gemma-3-270m-it", "blocks.3.hook_resid_post"),
        ),
        (
            "google/gemma-3-27b-it",
            "model.layers.17.post_feedforward_layernorm.output",
            ("google/gemma-3-27b-it", "blocks.17.hook_mlp_out"),
        ),
        # multimodal Gemma 3 (4b and up): the text model under language_model
        (
            "google/gemma-3-4b-pt",
            "model.language_model.layers.9.output",
            ("google/gemma-3-4b-pt", "blocks.9.hook_resid_post"),
        ),
        (
            "google/gemma-3-4b-pt",
            "language_model.model.layers.9.output",
            ("google/gemma-3-4b-pt", "blocks.9.hook_resid_post"),
        ),
        (
            "google/gemma-3-12b-it",
            "model.language_model.layers.5.post_feedforward_layernorm.output",
            ("google/gemma-3-12b-it", "blocks.5.hook_mlp_out"),
        ),
        (
            "google/gemma-3-12b-it",
            "model.language_model.layers.5.self_attn.o_proj.input",
            ("google/gemma-3-12b-it", "blocks.5.attn.hook_z"),
        ),
    ],
)
def test_gemmascope2_config_names(
    tmp_path: Path, model_name: str, hf_hook: str, expected: tuple[str, str]
) -> None:
    where = gemmascope2_dir(
        tmp_path / "sae", gemma_params(2), {"model_name": model_name, "hf_hook_point_in": hf_hook}
    )
    meta = load_sae(where).metadata
    assert (meta["model_name"], meta["hook_name"]) == expected


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        (
            "gemma-scope-2-1b-pt/resid_post/layer_10_width_16k_l0_small",
            ("google/gemma-3-1b-pt", "blocks.10.hook_resid_post"),
        ),
        (
            "gemma-scope-2-4b-it/resid_post_all/layer_7_width_262k_l0_big",
            ("google/gemma-3-4b-it", "blocks.7.hook_resid_post"),
        ),
        (
            "gemma-scope-2-270m-pt/mlp_out_all/layer_3_width_16k_l0_medium",
            ("google/gemma-3-270m", "blocks.3.hook_mlp_out"),
        ),
    ],
)
def test_gemmascope2_names_from_the_release_path(
    tmp_path: Path, release: str, expected: tuple[str, str]
) -> None:
    """Without a config.json, model and hook come from the release's directory names."""
    where = gemmascope2_dir(tmp_path / release, gemma_params(2), None)
    meta = load_sae(where).metadata
    assert (meta["model_name"], meta["hook_name"]) == expected


def test_goodfire_pth(tmp_path: Path) -> None:
    r = rng(4)
    enc_w = f32(r.standard_normal((D_SAE, D_IN)) / 4)  # nn.Linear layout: [out, in]
    enc_b = f32(r.standard_normal(D_SAE) * 0.3 - 0.1)
    dec_w = f32(r.standard_normal((D_IN, D_SAE)))
    dec_b = f32(r.standard_normal(D_IN))
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    torch.save(
        {
            "encoder_linear.weight": torch.from_numpy(enc_w),
            "encoder_linear.bias": torch.from_numpy(enc_b),
            "decoder_linear.weight": torch.from_numpy(dec_w),
            "decoder_linear.bias": torch.from_numpy(dec_b),
        },
        path,
    )
    x = x_batch(5)
    ref = np.maximum(x.astype(np.float64) @ enc_w.T.astype(np.float64) + enc_b, 0.0)
    assert_latents(path, "goodfire", ref, x)
    assert detect_sae_format(tmp_path) == "goodfire"  # a directory with one .pth
    sae = load_sae(path)
    assert sae.metadata["model_name"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert sae.metadata["hook_name"] == "blocks.19.hook_resid_post"
    f = sae.encode(torch.from_numpy(x)).numpy().astype(np.float64)
    np.testing.assert_allclose(
        sae.decode(torch.from_numpy(f.astype(np.float32))).numpy(),
        f @ dec_w.T + dec_b,
        rtol=1e-4,
        atol=1e-4,
    )


class Payload:
    """An arbitrary pickled object: weights-only loading must not construct it."""


def test_goodfire_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"encoder_linear.weight": Payload()}, path)
    with pytest.raises(ModelError, match="cannot read it as a torch state dict"):
        load_sae(path)


def test_llamascope(tmp_path: Path) -> None:
    r = rng(6)
    enc_w = f32(r.standard_normal((D_SAE, D_IN)) / 4)
    enc_b = f32(r.standard_normal(D_SAE) * 0.3)
    dec_w = f32(r.standard_normal((D_IN, D_SAE)))
    dec_b = f32(r.standard_normal(D_IN))
    avg_norm, jrt = 9.0, 0.4
    where = tmp_path / "Llama3_1-8B-Base-L15R-8x"
    (where / "checkpoints").mkdir(parents=True)
    save_file(
        {
            "encoder.weight": torch.from_numpy(enc_w),
            "encoder.bias": torch.from_numpy(enc_b),
            "decoder.weight": torch.from_numpy(dec_w),
            "decoder.bias": torch.from_numpy(dec_b),
        },
        where / "checkpoints" / "final.safetensors",
    )
    hp = {
        "d_model": D_IN,
        "d_sae": D_SAE,
        "hook_point_in": "blocks.15.hook_resid_post",
        "hook_point_out": "blocks.15.hook_resid_post",
        "jump_relu_threshold": jrt,
        "dataset_average_activation_norm": {"in": avg_norm, "out": avg_norm},
    }
    (where / "hyperparams.json").write_text(json.dumps(hp))
    x = x_batch(7) * 3
    # SAELens's reading: s folded into W_enc, threshold jrt * s, no b_dec subtraction
    s = np.sqrt(D_IN) / avg_norm
    h = x.astype(np.float64) @ (enc_w.T.astype(np.float64) * s) + enc_b
    assert_latents(where, "llamascope", jumprelu(h, jrt * s), x)
    sae = load_sae(where)
    assert sae.normalize_activations == "expected_average_only_in"
    assert sae.norm_scaling_factor == pytest.approx(s)
    assert sae.metadata["hook_name"] == "blocks.15.hook_resid_post"
    (where / "hyperparams.json").write_text(
        json.dumps({**hp, "hook_point_out": "blocks.15.hook_mlp_out"})
    )
    with pytest.raises(ModelError, match="transcoders"):
        load_sae(where)


def dl_dir(tmp_path: Path, dict_class: str, state: dict[str, np.ndarray], **trainer) -> Path:
    where = tmp_path / dict_class
    where.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, where / "ae.pt")
    cfg = {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "layer": 3,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            **trainer,
        },
        "buffer": {"ctx_len": 128},
    }
    (where / "config.json").write_text(json.dumps(cfg))
    return where


def dl_params(seed: int) -> dict[str, np.ndarray]:
    r = rng(seed)
    return {
        "encoder.weight": f32(r.standard_normal((D_SAE, D_IN)) / 4),
        "encoder.bias": f32(r.standard_normal(D_SAE) * 0.3 - 0.1),
        "decoder.weight": f32(r.standard_normal((D_IN, D_SAE))),
    }


def test_dictionary_learning_standard_and_topk(tmp_path: Path) -> None:
    p = dl_params(8)
    b = f32(rng(9).standard_normal(D_IN))
    x = x_batch(10)
    h = (x - b).astype(np.float64) @ p["encoder.weight"].T.astype(np.float64) + p["encoder.bias"]
    where = dl_dir(tmp_path, "AutoEncoder", {**p, "bias": b})
    assert_latents(where, "dictionary_learning", np.maximum(h, 0.0), x)
    meta = load_sae(where).metadata
    assert (meta["model_name"], meta["hook_name"]) == (
        "EleutherAI/pythia-70m-deduped",
        "blocks.3.hook_resid_post",
    )
    top = np.argsort(-h, axis=1)[:, :K]
    ref = np.zeros_like(h)
    np.put_along_axis(ref, top, np.take_along_axis(h, top, axis=1), axis=1)
    where = dl_dir(tmp_path, "AutoEncoderTopK", {**p, "b_dec": b}, k=K)
    assert_latents(where, "dictionary_learning", np.maximum(ref, 0.0), x)


def test_dictionary_learning_batchtopk_and_gated(tmp_path: Path) -> None:
    p = dl_params(11)
    b = f32(rng(12).standard_normal(D_IN))
    x = x_batch(13)
    h = (x - b).astype(np.float64) @ p["encoder.weight"].T.astype(np.float64) + p["encoder.bias"]
    thr = np.float32(0.35)
    # BatchTopKSAE: nn.Linear encoder / decoder, b_dec, a scalar threshold and k buffers
    batchtopk = {**p, "b_dec": b, "threshold": np.array(thr), "k": np.array(K, np.int32)}
    where = dl_dir(tmp_path, "BatchTopKSAE", batchtopk, k=K)
    assert_latents(where, "dictionary_learning", jumprelu(h, thr), x)
    r = rng(14)
    gated = {
        "encoder.weight": p["encoder.weight"],
        "decoder.weight": p["decoder.weight"],
        "decoder_bias": b,
        "r_mag": f32(r.standard_normal(D_SAE) * 0.3),
        "gate_bias": f32(r.standard_normal(D_SAE) * 0.3),
        "mag_bias": f32(r.standard_normal(D_SAE) * 0.3),
    }
    proj = (x - b).astype(np.float64) @ p["encoder.weight"].T.astype(np.float64)
    ref = (proj + gated["gate_bias"] > 0) * np.maximum(
        proj * np.exp(gated["r_mag"].astype(np.float64)) + gated["mag_bias"], 0.0
    )
    assert_latents(dl_dir(tmp_path, "GatedAutoEncoder", gated), "dictionary_learning", ref, x)


def dl_parameter_layout(seed: int) -> dict[str, np.ndarray]:
    """The nn.Parameter layout of MatryoshkaBatchTopKSAE and JumpReluAutoEncoder: W_enc
    [activation_dim, dict_size], W_dec [dict_size, activation_dim] (SAELens's shapes)."""
    r = rng(seed)
    return {
        "W_enc": f32(r.standard_normal((D_IN, D_SAE)) / 4),
        "b_enc": f32(r.standard_normal(D_SAE) * 0.3 - 0.1),
        "W_dec": f32(r.standard_normal((D_SAE, D_IN))),
        "b_dec": f32(r.standard_normal(D_IN)),
    }


def test_dictionary_learning_w_enc_layout(tmp_path: Path) -> None:
    """MatryoshkaBatchTopKSAE: relu((x - b_dec) W_enc + b_enc), kept where above its scalar
    threshold; JumpReluAutoEncoder: no b_dec subtraction, a per-latent threshold."""
    p = dl_parameter_layout(16)
    x = x_batch(17)
    q = {k: v.astype(np.float64) for k, v in p.items()}
    thr = np.float32(0.3)
    state = {
        **p,
        "threshold": np.array(thr),
        "k": np.array(K, np.int32),
        "group_sizes": np.array([16, D_SAE - 16], np.int64),
    }
    where = dl_dir(tmp_path, "MatryoshkaBatchTopKSAE", state, k=K, group_sizes=[16, D_SAE - 16])
    h = (x - q["b_dec"]) @ q["W_enc"] + q["b_enc"]
    assert_latents(where, "dictionary_learning", jumprelu(h, thr), x)
    sae = load_sae(where)
    assert (sae.architecture, sae.apply_b_dec_to_input) == ("jumprelu", True)
    torch.testing.assert_close(sae.W_dec, torch.from_numpy(p["W_dec"]))  # not transposed
    thresholds = f32(rng(18).uniform(0.0, 0.6, D_SAE))
    where = dl_dir(tmp_path, "JumpReluAutoEncoder", {**p, "threshold": thresholds})
    h = x.astype(np.float64) @ q["W_enc"] + q["b_enc"]
    assert_latents(where, "dictionary_learning", jumprelu(h, thresholds), x)
    assert not load_sae(where).apply_b_dec_to_input
    # the nn.Linear layout under the W_enc name is a shape error, not a silent transpose
    (tmp_path / "bad").mkdir()
    bad = {**p, "W_enc": p["W_enc"].T.copy(), "threshold": thresholds}
    bad_dir = dl_dir(tmp_path / "bad", "JumpReluAutoEncoder", bad)
    with pytest.raises(ModelError, match=r"'W_enc' has shape \(64, 16\).*means \(16, 64\)"):
        load_sae(bad_dir)


def test_dictionary_learning_unknown_class_lists_valid(tmp_path: Path) -> None:
    where = dl_dir(tmp_path, "CrossCoder", dl_params(15))
    with pytest.raises(ModelError, match="Valid dict classes are: AutoEncoder, AutoEncoderTopK"):
        load_sae(where)


def test_detection_errors_list_every_format(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError) as exc:
        load_sae(tmp_path)
    message = str(exc.value)
    for name in SAE_FORMATS:
        assert f"{name}: " in message
    assert "It holds: notes.txt" in message
    # two formats at once: the user must choose
    np.savez(tmp_path / "params.npz", **gemma_params(0))
    save_file({"w": torch.zeros(1)}, tmp_path / "params.safetensors")
    with pytest.raises(ModelError, match="several SAE formats.*choose one with --format"):
        load_sae(tmp_path)
    assert load_sae(tmp_path, "gemmascope").format == "gemmascope"
