"""SAE training (TopK, BatchTopK, Matryoshka) on synthetic data drawn from a known sparse
dictionary, through the same streaming path (source -> shuffle buffer -> steps) the CLI uses."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.activations import ArraySource
from ingest.config import TrainConfig
from ingest.sae import load_sae, save_saelens
from ingest.train import TrainableSAE, evaluate, geometric_median, train
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


def config(**kw) -> TrainConfig:
    base = dict(
        d_sae=N_ATOMS,
        k=8,
        lr=5e-3,
        batch_size=128,
        epochs=4,
        dead_tokens_threshold=2_000,
        val_fraction=0.1,
        shuffle_tokens=2048,
        threshold_decay=0.99,
        seed=0,
        normalize_activations="none",  # the raw-space math; normalised training is below
    )
    return TrainConfig(**{**base, **kw})


def source(acts: np.ndarray, cfg: TrainConfig) -> ArraySource:
    return ArraySource(acts, val_fraction=cfg.val_fraction, seed=cfg.seed, block_rows=512)


@pytest.fixture(scope="module")
def memmapped(synthetic: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, synthetic)
    return np.load(path, mmap_mode="r")  # training reads a memmap in blocks


@pytest.fixture(scope="module")
def trained(memmapped: np.ndarray):
    cfg = config()
    return cfg, train(source(memmapped, cfg), cfg, metadata=META, progress=False)


@pytest.fixture(scope="module")
def trained_batchtopk(memmapped: np.ndarray):
    cfg = config(architecture="batchtopk", epochs=3)
    return cfg, train(source(memmapped, cfg), cfg, metadata=META, progress=False)


def test_topk_reconstructs(trained, atoms: np.ndarray) -> None:
    cfg, res = trained
    history = res.history
    assert res.finished and [h["epoch"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert {"epoch", "step", "train_loss", "fvu", "l0", "dead_fraction", "dead_train"} <= set(h)
        assert 0 < h["l0"] <= cfg.k and 0 <= h["dead_fraction"] <= 1
    # The initial random dictionary leaves FVU ~0.73; a working trainer gets to ~0.14 on
    # this data in four epochs and finds most atoms (~85% at cosine > 0.9).
    assert history[-1]["fvu"] < 0.2
    assert history[-1]["fvu"] < history[0]["fvu"]
    assert history[-1]["dead_fraction"] < 0.1
    best_cosine = (res.sae.W_dec.numpy() @ atoms.T).max(axis=0)
    assert (best_cosine > 0.9).mean() > 0.6


def test_metrics_match_a_direct_computation(trained, synthetic: np.ndarray) -> None:
    """The reported FVU / L0 / dead are those of the saved SAE on the held-out rows."""
    cfg, res = trained
    from ingest.activations import held_out

    val = synthetic[held_out(np.arange(N), cfg.val_fraction)]
    assert res.sae.metadata["training"]["n_val_tokens"] == len(val)  # under val_tokens
    x = torch.from_numpy(val)
    f = res.sae.encode(x)
    recon = res.sae.decode(f)
    fvu = float((x - recon).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum())
    last = res.history[-1]
    assert math.isclose(last["fvu"], fvu, rel_tol=1e-4)
    assert math.isclose(last["l0"], float((f > 0).sum(1).double().mean()), rel_tol=1e-9)
    assert math.isclose(last["dead_fraction"], float(((f > 0).sum(0) == 0).double().mean()))


def test_trained_topk_sae_saves_and_loads(trained, synthetic: np.ndarray, tmp_path: Path) -> None:
    cfg, res = trained
    sae = res.sae
    assert sae.architecture == "topk" and sae.k == cfg.k
    assert (sae.d_in, sae.d_sae) == (D_IN, N_ATOMS)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N_ATOMS))
    training = sae.metadata["training"]
    assert sae.metadata["model_name"] == "synthetic"
    assert sae.metadata["hook_name"] == META["hook_name"]
    for field in ("architecture", "d_sae", "k", "aux_k", "lr", "batch_size", "seed"):
        assert field in training
    assert training["aux_k"] == D_IN // 2
    assert training["tokens_trained"] == 4 * (N - training["n_val_tokens"])
    assert training["final_metrics"] == res.history[-1]

    x = torch.from_numpy(synthetic[:500])
    f = sae.encode(x)
    assert ((f > 0).sum(dim=1) <= cfg.k).all()
    back = load_sae(save_saelens(sae, tmp_path / "sae"))
    assert back.cfg == sae.cfg
    assert torch.equal(back.encode(x), f)
    for a, b in zip(back.encode_sparse(x), sae.encode_sparse(x), strict=True):
        assert torch.equal(a, b)


def test_batchtopk_is_saved_as_jumprelu_with_its_threshold(
    trained_batchtopk, synthetic: np.ndarray, atoms: np.ndarray, tmp_path: Path
) -> None:
    cfg, res = trained_batchtopk
    sae = res.sae
    assert sae.architecture == "jumprelu" and sae.k is None
    thr = sae.metadata["training"]["threshold"]
    assert thr > 0 and torch.equal(sae.threshold, torch.full((N_ATOMS,), thr))
    assert sae.metadata["training"]["architecture"] == "batchtopk"
    # Per token the threshold stands in for the batch top-k: L0 ~k on average, varying.
    assert res.history[-1]["fvu"] < 0.3
    assert 0.6 * cfg.k < res.history[-1]["l0"] < 1.4 * cfg.k
    x = torch.from_numpy(synthetic[:2000])
    f = sae.encode(x)
    per_token = (f > 0).sum(dim=1)
    assert per_token.max() > per_token.min()
    pre = sae.preprocess(x) @ sae.W_enc + sae.b_enc
    assert torch.equal(f > 0, pre > thr)  # jumprelu: exactly the pre-activations above it
    best_cosine = (sae.W_dec.numpy() @ atoms.T).max(axis=0)
    assert (best_cosine > 0.9).mean() > 0.5
    # SAELens layout on disk, read back by our loader with the same encodes.
    back = load_sae(save_saelens(sae, tmp_path / "btk"))
    assert back.cfg["architecture"] == "jumprelu" and "k" not in back.cfg
    assert torch.equal(back.threshold, sae.threshold)
    assert torch.equal(back.encode(x), f)
    for a, b in zip(back.encode_sparse(x), sae.encode_sparse(x), strict=True):
        assert torch.equal(a, b)


def test_matryoshka_prefixes_reconstruct_on_their_own(
    trained_batchtopk, memmapped: np.ndarray, synthetic: np.ndarray, tmp_path: Path
) -> None:
    cfg = config(architecture="matryoshka", epochs=3, matryoshka_prefixes="32,64,128,256")
    res = train(source(memmapped, cfg), cfg, metadata=META, progress=False)
    last = res.history[-1]
    prefixes = last["fvu_prefixes"]
    assert list(prefixes) == ["32", "64", "128", "256"]
    fvus = list(prefixes.values())
    assert all(a > b for a, b in zip(fvus, fvus[1:], strict=False))  # more latents, better
    assert math.isclose(fvus[-1], last["fvu"])
    assert res.sae.architecture == "jumprelu"
    assert res.sae.metadata["training"]["matryoshka_prefixes"] == [32, 64, 128, 256]
    # The point of matryoshka: the first 32 latents alone explain far more than the first
    # 32 latents of a plain BatchTopK SAE (whose useful latents are spread over all 256).
    from ingest.activations import held_out

    val = synthetic[held_out(np.arange(N), cfg.val_fraction)]
    plain = evaluate(trained_batchtopk[1].sae, val, [32, 64, 128, 256])["fvu_prefixes"]
    assert fvus[0] < plain["32"] - 0.15
    back = load_sae(save_saelens(res.sae, tmp_path / "m"))
    x = torch.from_numpy(synthetic[:300])
    assert torch.equal(back.encode(x), res.sae.encode(x))


def test_normalised_training_is_scale_invariant_and_recorded(synthetic: np.ndarray) -> None:
    cfg = config(epochs=2, normalize_activations="constant_norm_rescale")
    # Give a few rows a huge norm, as real residual streams have: they must not matter.
    acts = synthetic.copy()
    acts[::50] *= 20
    res = train(source(acts, cfg), cfg, metadata=META, progress=False)
    sae = res.sae
    assert sae.normalize_activations == "constant_norm_rescale"
    assert sae.cfg["normalize_activations"] == "constant_norm_rescale"
    assert res.history[-1]["fvu"] < 0.3
    x = torch.from_numpy(synthetic[:200])
    torch.testing.assert_close(sae.encode(3.0 * x), sae.encode(x))


def test_auxk_loss_reaches_dead_latents() -> None:
    g = torch.Generator().manual_seed(0)
    model = TrainableSAE(8, 32, torch.zeros(8), g)
    x = torch.randn(64, 8, generator=g)
    kw = dict(architecture="topk", k=2, aux_k=4, prefixes=[32])
    none_dead = torch.zeros(32, dtype=torch.bool)
    _, aux, _ = model.losses(x, none_dead, **kw)
    assert aux.item() == 0.0
    dead = none_dead.clone()
    dead[20:] = True
    _, aux, codes = model.losses(x, dead, **kw)
    assert aux.item() > 0 and len(codes.cols) <= 64 * 2
    aux.backward()
    enc_grad = model.W_enc.grad.abs().sum(dim=0)
    assert (enc_grad[20:] > 0).any() and (enc_grad[:20] == 0).all()  # only dead latents learn
    assert model.b_enc.grad is not None and (model.b_enc.grad[:20] == 0).all()


def test_selection_per_token_and_per_batch() -> None:
    pre = torch.tensor([[5.0, 4.0, 3.0, -1.0], [0.5, 0.2, 0.1, 0.3], [9.0, 8.0, -2.0, 7.0]])
    top = TrainableSAE.select(pre, "topk", 2)
    assert top.rows.tolist() == [0, 0, 1, 1, 2, 2]
    assert sorted(zip(top.rows.tolist(), top.cols.tolist(), strict=True)) == [
        (0, 0), (0, 1), (1, 0), (1, 3), (2, 0), (2, 1)
    ]  # fmt: skip
    batch = TrainableSAE.select(pre, "batchtopk", 2)  # the 6 largest of the whole batch
    assert list(zip(batch.rows.tolist(), batch.cols.tolist(), strict=True)) == [
        (0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 3)
    ]  # fmt: skip
    assert batch.vals.tolist() == [5.0, 4.0, 3.0, 9.0, 8.0, 7.0]
    few = TrainableSAE.select(torch.tensor([[1.0, -1.0], [-2.0, -3.0]]), "batchtopk", 2)
    assert few.vals.tolist() == [1.0]  # never a non-positive activation


@pytest.mark.parametrize("skewed", [False, True])
def test_batch_topk_shortcut_equals_the_full_top_k(skewed: bool) -> None:
    """Candidates per row first, then the batch's top k x n: the same as a top-k over all
    entries, also when one row holds more of the batch's top entries than its candidates
    (the fallback)."""
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 512, generator=g)
    if skewed:
        pre[3] += 10.0  # row 3 alone beats every other entry
    codes = TrainableSAE.select(pre, "batchtopk", 4)
    vals, flat = pre.reshape(-1).topk(4 * 64)
    keep = vals > 0
    flat, order = flat[keep].sort()
    assert torch.equal(codes.rows, flat // 512) and torch.equal(codes.cols, flat % 512)
    assert torch.equal(codes.vals, vals[keep][order])
    assert ((codes.rows == 3).sum() == 256) == skewed


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
        (
            {"architecture": "relu"},
            "architecture 'relu' cannot be trained. "
            "Valid architectures are: topk, batchtopk, matryoshka",
        ),
        ({"matryoshka_prefixes": "8,64", "d_sae": 64}, "applies to --architecture matryoshka"),
        (
            {"architecture": "matryoshka", "d_sae": 64, "matryoshka_prefixes": "8,32"},
            r"must increase from >= 1 and end at d_sae \(64\)",
        ),
        (
            {"architecture": "matryoshka", "d_sae": 64, "matryoshka_prefixes": "16,8,64"},
            "must increase",
        ),
        (
            {"architecture": "matryoshka", "d_sae": 64, "matryoshka_prefixes": "a,64"},
            "comma-separated integers",
        ),
        ({"shuffle_tokens": 100, "batch_size": 128}, r"shuffle_tokens \(100\) must be at least"),
        ({"threshold_decay": 1.0}, r"threshold_decay must be a float in \[0, 1\)"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
    ],
)
def test_config_validation(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kw)


def test_defaults_resolve() -> None:
    recipe = TrainConfig(d_sae=4096).resolved(d_in=576)
    assert recipe["aux_k"] == 288
    assert math.isclose(recipe["lr"], 2e-4 / math.sqrt(4096 / 2**14))
    assert recipe["matryoshka_prefixes"] == [4096]
    m = TrainConfig(architecture="matryoshka", d_sae=4096)
    assert m.prefix_sizes() == [512, 1024, 2048, 4096]


def test_needs_model_and_hook(synthetic: np.ndarray) -> None:
    cfg = config(d_sae=32, k=2)
    with pytest.raises(ConfigError, match="metadata\\['hook_name'\\]"):
        train(source(synthetic, cfg), cfg, metadata={"model_name": "m"}, progress=False)
    with pytest.raises(ConfigError, match="float array"):
        ArraySource(synthetic[:, 0], val_fraction=0.1)
    with pytest.raises(ConfigError, match="float array"):
        ArraySource(synthetic.astype(np.int32), val_fraction=0.1)
