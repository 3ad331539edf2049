"""SAE encode / decode against a plain numpy reference written from the formulas in
shared/reference/sae-formats.md (random weights, small sizes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ingest import sae as sae_mod
from ingest.sae import ARCHITECTURES, SAE, register_architecture
from saedb.errors import ModelError, RegistryError

N, D_IN, D_SAE, K = 40, 16, 64, 6
MODES = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")
SCALE = 2.5  # the norm_scaling_factor used for expected_average_only_in
GROUPS = 8  # k of groupmax SAEs: its number of groups (D_SAE must divide by it)


def random_params(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in SAELens shapes, biased so that some latents fire."""
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.standard_normal((D_IN, D_SAE)) / np.sqrt(D_IN),
        "W_dec": rng.standard_normal((D_SAE, D_IN)) * rng.uniform(0.5, 2.0, (D_SAE, 1)),
        "b_dec": rng.standard_normal(D_IN) * 0.3,
    }
    if arch == "gated":
        p |= {
            "b_gate": rng.standard_normal(D_SAE) * 0.5 - 0.3,
            "r_mag": rng.standard_normal(D_SAE) * 0.3,
            "b_mag": rng.standard_normal(D_SAE) * 0.5,
        }
    else:
        p["b_enc"] = rng.standard_normal(D_SAE) * 0.5 - 0.3
    if arch == "jumprelu":
        p["threshold"] = rng.uniform(-0.3, 0.8, D_SAE)
    return {k: v.astype(np.float32) for k, v in p.items()}


def reference_encode(
    p: dict[str, np.ndarray],
    arch: str,
    x: np.ndarray,
    *,
    normalize: str = "none",
    apply_b_dec: bool = True,
    k: int = K,
    rescale: bool = False,
) -> np.ndarray:
    """The formulas, in float64 numpy, with the scaling factor applied to the input."""
    q = {name: v.astype(np.float64) for name, v in p.items()}
    x = x.astype(np.float64)
    if normalize == "constant_norm_rescale":
        x = x * np.sqrt(D_IN) / np.linalg.norm(x, axis=1, keepdims=True)
    elif normalize == "layer_norm":
        x = x - x.mean(axis=1, keepdims=True)
        x = x / (x.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    elif normalize == "expected_average_only_in":
        x = x * SCALE
    if apply_b_dec:
        x = x - q["b_dec"]
    if arch == "gated":
        gate = (x @ q["W_enc"] + q["b_gate"]) > 0
        mag = np.maximum(x @ (q["W_enc"] * np.exp(q["r_mag"])) + q["b_mag"], 0.0)
        return gate * mag
    h = x @ q["W_enc"] + q["b_enc"]
    if arch == "standard":
        return np.maximum(h, 0.0)
    if arch == "jumprelu":
        return np.maximum(h, 0.0) * (h > q["threshold"])
    if arch == "groupmax":  # k groups of consecutive latents, each keeps its max, then ReLU
        groups = h.reshape(len(h), GROUPS, -1)
        best = groups.argmax(axis=2)[..., None]
        f = np.zeros_like(groups)
        np.put_along_axis(f, best, np.take_along_axis(groups, best, axis=2), axis=2)
        return np.maximum(f.reshape(h.shape), 0.0)
    assert arch in ("topk", "abstopk")
    if rescale:
        h = h * np.linalg.norm(q["W_dec"], axis=1)
    if arch == "abstopk":  # the k largest |h|, signed, no ReLU
        top = np.argsort(-np.abs(h), axis=1)[:, :k]
        f = np.zeros_like(h)
        np.put_along_axis(f, top, np.take_along_axis(h, top, axis=1), axis=1)
        return f
    top = np.argsort(-h, axis=1)[:, :k]
    f = np.zeros_like(h)
    np.put_along_axis(f, top, np.take_along_axis(h, top, axis=1), axis=1)
    return np.maximum(f, 0.0)


def make_sae(
    p: dict[str, np.ndarray],
    arch: str,
    *,
    normalize: str = "none",
    apply_b_dec: bool = True,
    k: int = K,
    rescale: bool = False,
) -> SAE:
    """An SAE from numpy params; expected_average_only_in gets SCALE folded in."""
    t = {name: torch.from_numpy(v.copy()) for name, v in p.items()}
    if normalize == "expected_average_only_in":
        t["W_enc"], t["W_dec"], t["b_dec"] = (
            t["W_enc"] * SCALE,
            t["W_dec"] / SCALE,
            t["b_dec"] / SCALE,
        )
    return SAE(
        architecture=arch,
        **t,
        k=GROUPS if arch == "groupmax" else k if arch in ("topk", "abstopk") else None,
        rescale_acts_by_decoder_norm=rescale,
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=normalize,
        norm_scaling_factor=SCALE if normalize == "expected_average_only_in" else None,
    )


def inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, D_IN)).astype(np.float32) + 0.2


def assert_matches(sae: SAE, x: np.ndarray, ref: np.ndarray) -> None:
    """Dense encode equals the reference (values to float32 tolerance, nonzeros exactly), and
    encode_sparse is the COO of the dense result."""
    dense = sae.encode(torch.from_numpy(x))
    assert dense.dtype == torch.float32 and dense.shape == (N, D_SAE)
    got = dense.numpy()
    np.testing.assert_array_equal(got != 0, ref != 0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    tok, lat, val = sae.encode_sparse(torch.from_numpy(x))
    assert tok.dtype == lat.dtype == torch.int64 and val.dtype == torch.float32
    rows, cols = np.nonzero(got)  # row-major: by token, then latent
    np.testing.assert_array_equal(tok.numpy(), rows)
    np.testing.assert_array_equal(lat.numpy(), cols)
    np.testing.assert_array_equal(val.numpy(), got[rows, cols])
    assert (val != 0).all()
    if sae.architecture != "abstopk":
        assert (val > 0).all()
    else:
        assert (val < 0).any() and (val > 0).any()  # signed latents survive


CASES = list(itertools.product(sorted(ARCHITECTURES), MODES))


@pytest.mark.parametrize(("arch", "normalize"), CASES)
def test_encode_matches_reference(arch: str, normalize: str) -> None:
    p, x = random_params(arch), inputs()
    ref = reference_encode(p, arch, x, normalize=normalize)
    assert 0 < (ref != 0).sum() < ref.size  # the test data has both signs
    assert_matches(make_sae(p, arch, normalize=normalize), x, ref)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_without_b_dec_subtraction(arch: str) -> None:
    p, x = random_params(arch, seed=2), inputs(seed=3)
    ref = reference_encode(p, arch, x, apply_b_dec=False)
    assert_matches(make_sae(p, arch, apply_b_dec=False), x, ref)


def test_topk_rescale_by_decoder_norm_and_decode() -> None:
    p, x = random_params("topk", seed=4), inputs(seed=5)
    sae = make_sae(p, "topk", rescale=True)
    ref = reference_encode(p, "topk", x, rescale=True)
    assert_matches(sae, x, ref)
    assert not np.array_equal(ref > 0, reference_encode(p, "topk", x) > 0)  # rescaling matters
    norms = np.linalg.norm(p["W_dec"].astype(np.float64), axis=1)
    recon = (ref / norms) @ p["W_dec"] + p["b_dec"]
    np.testing.assert_allclose(
        sae.decode(sae.encode(torch.from_numpy(x))).numpy(), recon, rtol=1e-4, atol=1e-4
    )


def test_topk_keeps_exactly_k_or_fewer_when_not_positive() -> None:
    p, x = random_params("topk", seed=6), inputs(seed=7)
    p["b_enc"] = np.full(D_SAE, 5.0, dtype=np.float32)  # every latent positive
    counts = np.bincount(make_sae(p, "topk").encode_sparse(torch.from_numpy(x))[0], minlength=N)
    assert (counts == K).all()
    p["b_enc"][:] = -50.0  # only latents 0..2 can be positive
    p["b_enc"][:3] = 50.0
    tok, lat, _ = make_sae(p, "topk").encode_sparse(torch.from_numpy(x))
    assert (np.bincount(tok, minlength=N) == 3).all() and set(lat.tolist()) == {0, 1, 2}


def test_gated_has_no_b_enc() -> None:
    p = random_params("gated")
    sae = make_sae(p, "gated")
    assert sae.b_enc is None and "b_enc" not in sae.tensors()
    assert set(sae.tensors()) == {"W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"}
    with pytest.raises(ModelError, match="gated SAE has no tensor 'b_enc'"):
        make_sae({**p, "b_enc": np.zeros(D_SAE, np.float32)}, "gated")


def test_jumprelu_threshold_is_strict() -> None:
    p = random_params("jumprelu")
    p["W_enc"][:] = 0.0  # h == b_enc exactly
    b = np.float32(0.5)
    p["b_enc"][:] = b
    p["threshold"][:] = b  # h == threshold: off
    p["threshold"][1] = np.nextafter(b, np.float32(0))  # just below: on
    p["threshold"][2] = np.nextafter(b, np.float32(1))  # just above: off
    p["b_enc"][3], p["threshold"][3] = -0.1, -0.2  # above a negative threshold but h < 0: off
    p["b_enc"][4], p["threshold"][4] = 0.0, -1.0  # h == 0: not strictly positive
    tok, lat, val = make_sae(p, "jumprelu").encode_sparse(torch.from_numpy(inputs()))
    assert set(lat.tolist()) == {1} and len(tok) == N and (val == b).all()


def test_encode_sparse_in_row_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    p, x = random_params("standard", seed=8), inputs(seed=9)
    sae = make_sae(p, "standard")
    whole = sae.encode_sparse(torch.from_numpy(x))
    monkeypatch.setattr(sae_mod, "_CHUNK_ELEMENTS", D_SAE * 7)  # 7 rows at a time
    monkeypatch.setattr(sae_mod, "_MIN_CHUNK_ROWS", 1)
    chunked = sae.encode_sparse(torch.from_numpy(x))
    assert torch.equal(whole.token_idx, chunked.token_idx)
    assert torch.equal(whole.latent_idx, chunked.latent_idx)
    # BLAS blocking depends on the row count, so values may differ in the last ulp
    torch.testing.assert_close(whole.values, chunked.values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["standard", "topk", "gated"])
@pytest.mark.parametrize(("d_in", "d_sae", "n"), [(96, 1536, 130), (2048, 1024, 600)])
def test_sparse_encode_has_the_bits_of_the_row_major_product(
    arch: str, d_in: int, d_sae: int, n: int
) -> None:
    """From d_in 2048 the SAE holds W_enc column-major and encode_sparse multiplies by it in
    256-row chunks (W_enc^T x^T); both paths must give bit-for-bit the latents and values of
    x @ W_enc with W_enc row-major, as SAELens holds it, at sizes where sgemm blocks."""
    rng = np.random.default_rng(d_in)
    w_enc = (rng.standard_normal((d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32)
    b_dec = (rng.standard_normal(d_in) * 0.1).astype(np.float32)
    bias = (rng.standard_normal(d_sae) * 0.3 - 0.6).astype(np.float32)
    row_major = torch.from_numpy(w_enc)
    assert row_major.is_contiguous()
    extra = (
        # r_mag = 0 and b_mag = b_gate: gated's f is then ReLU(x' W_enc + b_gate) as well
        {
            "b_gate": torch.from_numpy(bias),
            "r_mag": torch.zeros(d_sae),
            "b_mag": torch.from_numpy(bias),
        }
        if arch == "gated"
        else {"b_enc": torch.from_numpy(bias)}
    )
    sae = SAE(
        architecture=arch,
        W_enc=row_major,
        W_dec=torch.zeros(d_sae, d_in),
        b_dec=torch.from_numpy(b_dec),
        k=32 if arch == "topk" else None,
        **extra,
    )
    assert sae_mod._column_major(sae) == (d_in >= 2048) and torch.equal(sae.W_enc, row_major)
    x = torch.from_numpy(rng.standard_normal((n, d_in)).astype(np.float32))
    h = torch.mm(x - torch.from_numpy(b_dec), row_major) + torch.from_numpy(bias)
    if arch == "topk":
        keep = torch.zeros_like(h, dtype=torch.bool)
        keep.scatter_(1, h.topk(32, dim=1).indices, True)
        h = torch.where(keep, h, torch.zeros_like(h))
    want = h.clamp_min(0.0).numpy()
    tok, lat, val = sae.encode_sparse(x)
    rows, cols = np.nonzero(want)
    assert len(rows) > n  # several latents fire per token
    np.testing.assert_array_equal(tok.numpy(), rows)
    np.testing.assert_array_equal(lat.numpy(), cols)
    np.testing.assert_array_equal(val.numpy(), want[rows, cols])
    assert torch.equal(sae.encode(x), torch.from_numpy(want))


def test_decode_and_input_dtypes() -> None:
    p, x = random_params("standard", seed=10), inputs(seed=11)
    sae = make_sae(p, "standard")
    f = sae.encode(torch.from_numpy(x))
    np.testing.assert_allclose(
        sae.decode(f).numpy(), f.numpy() @ p["W_dec"] + p["b_dec"], rtol=1e-5, atol=1e-5
    )
    as_f64 = sae.encode(torch.from_numpy(x.astype(np.float64)))
    assert as_f64.dtype == torch.float32 and torch.equal(as_f64, f)
    with pytest.raises(ModelError, match=r"shape \[n, 16\], got \(40, 15\)"):
        sae.encode(torch.from_numpy(x[:, :15]))


def test_expected_average_only_in_decodes_to_the_raw_space() -> None:
    p, x = random_params("standard", seed=12), inputs(seed=13)
    sae = make_sae(p, "standard", normalize="expected_average_only_in")
    f = reference_encode(p, "standard", x, normalize="expected_average_only_in")
    recon = (f @ p["W_dec"] + p["b_dec"]) / SCALE  # the SAE's output, un-scaled
    np.testing.assert_allclose(
        sae.decode(sae.encode(torch.from_numpy(x))).numpy(), recon, rtol=1e-4, atol=1e-5
    )


def test_architecture_registry() -> None:
    assert sorted(ARCHITECTURES) == ["abstopk", "gated", "groupmax", "jumprelu", "standard", "topk"]
    with pytest.raises(RegistryError, match="Architecture 'standard' is already registered"):
        register_architecture("standard")(type("Again", (sae_mod.Architecture,), {}))
    with pytest.raises(RegistryError) as exc:
        make_sae(random_params("standard"), "relu")
    assert str(exc.value) == (
        "Architecture 'relu' not found. Valid architectures are: "
        "abstopk, gated, groupmax, jumprelu, standard, topk"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"b_enc": None}, "needs tensor 'b_enc'"),
        ({"b_dec": torch.zeros(D_IN + 1)}, r"'b_dec' has shape \(17,\), expected \(16,\)"),
        ({"W_dec": torch.zeros(D_IN, D_SAE)}, r"'W_dec' has shape \(16, 64\), expected \(64, 16\)"),
        ({"k": 3}, "k and rescale_acts_by_decoder_norm apply to topk SAEs only"),
        ({"normalize_activations": "l2"}, "Valid values are: none, constant_norm_rescale"),
        ({"normalize_activations": "expected_average_only_in"}, "norm_scaling_factor goes with"),
        ({"norm_scaling_factor": 2.0}, "norm_scaling_factor goes with"),
    ],
)
def test_invalid_sae(change: dict, message: str) -> None:
    t = {name: torch.from_numpy(v) for name, v in random_params("standard").items()}
    with pytest.raises(ModelError, match=message):
        SAE(**{"architecture": "standard", **t, **change})


@pytest.mark.parametrize("k", [None, 0, D_SAE + 1, 2.0])
def test_topk_needs_valid_k(k: object) -> None:
    t = {name: torch.from_numpy(v) for name, v in random_params("topk").items()}
    with pytest.raises(ModelError, match="needs an integer k"):
        SAE(architecture="topk", **t, k=k)  # type: ignore[arg-type]
