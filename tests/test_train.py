"""TopK SAE training on synthetic data drawn from a known sparse dictionary."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.sae import load_sae, save_saelens
from ingest.train import TrainConfig, _TopKSAE, geometric_median, train_topk
from saedb.errors import ConfigError

D_IN, N_ATOMS, ACTIVE, N = 64, 256, 4, 20_000
META = {"model_name": "synthetic", "hook_name": "blocks.0.hook_resid_post"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small matmuls gain nothing from threads, and lose a lot on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def atoms() -> np.ndarray:
    """The known dictionary: 256 random unit vectors in 64 dimensions."""
    a = np.random.default_rng(1).standard_normal((N_ATOMS, D_IN))
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic(atoms: np.ndarray) -> np.ndarray:
    """x = sum of 4 of 256 atoms with weights in [0.5, 2], an offset and a little noise."""
    rng = np.random.default_rng(0)
    which = np.argsort(rng.random((N, N_ATOMS)), axis=1)[:, :ACTIVE]
    coef = rng.uniform(0.5, 2.0, (N, ACTIVE))
    x = np.einsum("na,nad->nd", coef, atoms[which]) + 0.5
    x += 0.01 * rng.standard_normal((N, D_IN))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def trained(synthetic: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, synthetic)
    acts = np.load(path, mmap_mode="r")  # training reads a memmap in batches
    cfg = TrainConfig(
        d_sae=N_ATOMS,
        k=8,
        lr=5e-3,
        batch_size=128,
        epochs=4,
        dead_tokens_threshold=2_000,
        val_fraction=0.1,
        seed=0,
        normalize_activations="none",  # the raw-space math; normalised training is below
    )
    sae, history = train_topk(acts, cfg, metadata=META, progress=False)
    return cfg, sae, history


def test_normalised_training_is_scale_invariant_and_recorded(synthetic: np.ndarray) -> None:
    cfg = TrainConfig(
        d_sae=N_ATOMS,
        k=8,
        lr=5e-3,
        batch_size=128,
        epochs=2,
        dead_tokens_threshold=2_000,
        val_fraction=0.1,
        seed=0,
        normalize_activations="constant_norm_rescale",
    )
    # Give a few rows a huge norm, as real residual streams have: they must not matter.
    acts = synthetic.copy()
    acts[::50] *= 20
    sae, history = train_topk(acts, cfg, metadata=META, progress=False)
    assert sae.normalize_activations == "constant_norm_rescale"
    assert sae.cfg["normalize_activations"] == "constant_norm_rescale"
    assert history[-1]["fvu"] < 0.3
    x = torch.from_numpy(synthetic[:200])
    torch.testing.assert_close(sae.encode(3.0 * x), sae.encode(x))


def test_training_reconstructs(trained, atoms: np.ndarray) -> None:
    cfg, sae, history = trained
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert {"epoch", "train_loss", "fvu", "l0", "dead_fraction", "aux_loss"} <= h.keys()
        assert 0 < h["l0"] <= cfg.k and 0 <= h["dead_fraction"] <= 1 and h["aux_loss"] >= 0
    # The initial random dictionary leaves FVU ~0.73; a working trainer gets to ~0.15 on
    # this data in four epochs and finds most atoms (~80% at cosine > 0.9).
    assert history[-1]["fvu"] < 0.2
    assert history[-1]["fvu"] < history[0]["fvu"]
    assert history[-1]["dead_fraction"] < 0.1
    best_cosine = (sae.W_dec.numpy() @ atoms.T).max(axis=0)
    assert (best_cosine > 0.9).mean() > 0.6


def test_trained_sae(trained, synthetic: np.ndarray, tmp_path: Path) -> None:
    cfg, sae, history = trained
    assert sae.architecture == "topk" and sae.k == cfg.k
    assert (sae.d_in, sae.d_sae) == (D_IN, N_ATOMS)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N_ATOMS))
    training = sae.metadata["training"]
    assert sae.metadata["model_name"] == "synthetic"
    assert sae.metadata["hook_name"] == META["hook_name"]
    for field in (
        "d_sae",
        "k",
        "aux_k",
        "aux_coef",
        "lr",
        "batch_size",
        "epochs",
        "dead_tokens_threshold",
        "seed",
        "val_fraction",
    ):
        assert field in training
    assert training["aux_k"] == D_IN // 2
    assert training["n_tokens"] + training["n_val_tokens"] == N
    assert training["final_metrics"] == history[-1]

    x = torch.from_numpy(synthetic[:500])
    f = sae.encode(x)
    assert ((f > 0).sum(dim=1) <= cfg.k).all()
    recon = sae.decode(f)
    fvu = float((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.25

    back = load_sae(save_saelens(sae, tmp_path / "sae"))
    assert back.cfg == sae.cfg
    assert torch.equal(back.encode(x), f)
    for a, b in zip(back.encode_sparse(x), sae.encode_sparse(x), strict=True):
        assert torch.equal(a, b)


def test_auxk_loss_reaches_dead_latents() -> None:
    g = torch.Generator().manual_seed(0)
    model = _TopKSAE(8, 32, torch.zeros(8), g)
    x = torch.randn(64, 8, generator=g)
    none_dead = torch.zeros(32, dtype=torch.bool)
    _, _, aux, _ = model.losses(x, none_dead, k=2, aux_k=4)
    assert aux.item() == 0.0
    dead = none_dead.clone()
    dead[20:] = True
    sse, total_var, aux, idx = model.losses(x, dead, k=2, aux_k=4)
    assert aux.item() > 0 and idx.shape == (64, 2)
    aux.backward()
    enc_grad = model.W_enc.grad.abs().sum(dim=0)
    assert (enc_grad[20:] > 0).any() and (enc_grad[:20] == 0).all()  # only dead latents learn
    assert model.b_enc.grad is not None and (model.b_enc.grad[:20] == 0).all()


def test_geometric_median_resists_outliers() -> None:
    pts = torch.zeros(101, 3)
    pts[:50] = 1.0
    pts[-1] = 1000.0
    med = geometric_median(pts)
    assert float(med.norm()) < 1.5 and float(pts.mean(0).norm()) > 10


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"d_sae": 0}, "d_sae must be a positive integer"),
        ({"k": 100, "d_sae": 64}, r"k \(100\) must not exceed d_sae \(64\)"),
        ({"aux_k": 0}, "aux_k must be a positive integer"),
        ({"aux_coef": -1.0}, "aux_coef must be >= 0"),
        ({"lr": 0.0}, r"lr must be in \(0, 1\)"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer"),
        ({"val_fraction": 1.0}, "val_fraction must be a float in"),
        ({"dead_tokens_threshold": -5}, "dead_tokens_threshold must be a positive integer"),
    ],
)
def test_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kw)


def test_defaults_resolve() -> None:
    recipe = TrainConfig(d_sae=4096).resolved(d_in=576)
    assert recipe["aux_k"] == 288
    assert math.isclose(recipe["lr"], 2e-4 / math.sqrt(4096 / 2**14))


def test_needs_model_and_hook(synthetic: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="metadata\\['hook_name'\\]"):
        train_topk(
            synthetic, TrainConfig(d_sae=32, k=2), metadata={"model_name": "m"}, progress=False
        )
    with pytest.raises(ConfigError, match="float array"):
        train_topk(synthetic[:, 0], TrainConfig(d_sae=32, k=2), metadata=META, progress=False)
