"""Training a TopK SAE on the reader's activations, with the AuxK loss against dead latents.

The recipe of Gao et al. 2024, "Scaling and evaluating sparse autoencoders":

- ``z = TopK(ReLU)((x - b_dec) W_enc + b_enc)``, ``x_hat = z W_dec + b_dec``;
- loss = ``||x - x_hat||^2 / ||x - mean(x)||^2`` over the batch (the batch's FVU) plus
  ``aux_coef`` times the AuxK loss: the ``aux_k`` largest pre-activations among *dead* latents
  (not fired for ``dead_tokens_threshold`` tokens) reconstruct the residual
  ``e = x - x_hat`` (detached): ``||e - z_aux W_dec||^2 / ||x - mean(x)||^2``. The aux
  pre-activations are used as they are (no ReLU), so latents that died negative still get a
  gradient; with no dead latents the term is 0;
- ``b_dec`` starts at the geometric median of a sample, ``W_dec`` rows at random unit vectors,
  ``W_enc = W_dec^T``, ``b_enc = 0``; Adam; after each step the decoder rows are renormalised
  to unit norm, and before it the gradient component parallel to each row is removed.

Activations are read from a numpy array or memmap in shuffled batches (never all at once).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ingest.config import TrainConfig
from ingest.sae import SAE
from saedb.errors import ConfigError

#: Rows used to initialise b_dec (geometric median).
_INIT_SAMPLE = 8192


def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-8) -> torch.Tensor:
    """Geometric median of the rows of ``x`` (Weiszfeld's iterations, float64)."""
    points = x.double()
    median = points.mean(dim=0)
    for _ in range(iters):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * points).sum(dim=0) / weights.sum()
        if (new - median).norm() <= eps * (1 + median.norm()):
            median = new
            break
        median = new
    return median.float()


class _TopKSAE(torch.nn.Module):
    """The trainable parameters and the forward pass used during training."""

    def __init__(self, d_in: int, d_sae: int, b_dec: torch.Tensor, gen: torch.Generator):
        super().__init__()
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(b_dec.clone())

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - b_dec) W_enc + b_enc``, as ``x W_enc + (b_enc - b_dec W_enc)``: the b_dec
        gradient then costs a vector-matrix product, not a second [batch, d_in] matmul."""
        return torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x, self.W_enc)

    def decode(self, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """``sum_j vals[:, j] * W_dec[idx[:, j]]`` without building the dense code."""
        return F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum")

    def losses(
        self, x: torch.Tensor, dead: torch.Tensor, k: int, aux_k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (sum of squared errors, total variance, AuxK loss, topk idx) of a batch."""
        pre = self.pre_acts(x)
        vals, idx = pre.topk(k, dim=1, sorted=False)
        vals = vals.relu()
        err = x - (self.decode(idx, vals) + self.b_dec)
        sse = err.pow(2).sum()
        total_var = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        dead_idx = torch.nonzero(dead).squeeze(1)
        if len(dead_idx) == 0:
            aux = pre.new_zeros(())
        else:  # top aux_k among the dead columns only: cheap while few latents are dead
            dead_pre = pre.index_select(1, dead_idx)
            aux_vals, pos = dead_pre.topk(min(aux_k, len(dead_idx)), dim=1, sorted=False)
            aux_rec = self.decode(dead_idx[pos], aux_vals)
            aux = (aux_rec - err.detach()).pow(2).sum() / total_var
        idx = idx.masked_fill(vals <= 0, -1)  # -1 marks slots that did not fire
        return sse, total_var, aux, idx

    @torch.no_grad()
    def constrain_decoder(self, grad_only: bool) -> None:
        """Remove the radial part of W_dec's gradient, or renormalise W_dec's rows."""
        if grad_only:
            if self.W_dec.grad is not None:
                radial = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
                self.W_dec.grad -= radial * self.W_dec
        else:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _rows(acts: np.ndarray, take: np.ndarray, normalize: str) -> torch.Tensor:
    """Rows of ``acts`` as a float32 tensor, normalised as the SAE will see them."""
    x = torch.from_numpy(np.ascontiguousarray(acts[take], dtype=np.float32))
    if normalize == "constant_norm_rescale":
        x = x * (math.sqrt(x.shape[1]) / x.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return x


def _batches(
    acts: np.ndarray, rows: np.ndarray, batch_size: int, normalize: str = "none"
) -> Iterator[torch.Tensor]:
    """Yield float32 tensors of the given rows, ``batch_size`` at a time (sorted per batch
    so a memmap is read in order)."""
    for start in range(0, len(rows), batch_size):
        yield _rows(acts, np.sort(rows[start : start + batch_size]), normalize)


def _evaluate(
    model: _TopKSAE, acts: np.ndarray, rows: np.ndarray, dead: torch.Tensor, recipe: dict
) -> dict[str, float]:
    """FVU, l0, dead fraction and AuxK loss on the held-out rows."""
    d_in = acts.shape[1]
    sse = aux_sum = 0.0
    s1 = torch.zeros(d_in, dtype=torch.float64)
    s2 = 0.0
    active = 0
    fired = torch.zeros(recipe["d_sae"], dtype=torch.bool)
    with torch.no_grad():
        for x in _batches(acts, rows, recipe["batch_size"], recipe["normalize_activations"]):
            b_sse, b_var, b_aux, idx = model.losses(x, dead, recipe["k"], recipe["aux_k"])
            sse += float(b_sse)
            aux_sum += float(b_aux) * float(b_var)
            s1 += x.double().sum(dim=0)
            s2 += float(x.double().pow(2).sum())
            hit = idx[idx >= 0]
            active += hit.numel()
            fired[hit] = True
    n = len(rows)
    total_var = max(s2 - float(s1.pow(2).sum()) / n, 1e-12)
    return {
        "fvu": sse / total_var,
        "l0": active / n,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "aux_loss": aux_sum / total_var,
    }


def train_topk(
    acts: np.ndarray, cfg: TrainConfig, *, metadata: dict[str, Any], progress: bool = True
) -> tuple[SAE, list[dict[str, Any]]]:
    """Train a TopK SAE on ``acts [N, d_in]`` (array or memmap); return it and per-epoch
    metrics (epoch, train_loss, and on the held-out split fvu, l0, dead_fraction, aux_loss).

    ``metadata`` (at least ``model_name`` and ``hook_name``) goes into the SAE's cfg
    metadata, with the training recipe under ``metadata["training"]``.
    """
    for key in ("model_name", "hook_name"):
        if not isinstance(metadata.get(key), str):
            raise ConfigError(
                f"train_topk needs metadata['{key}'] (a string) to record "
                "which reader and hook the SAE belongs to"
            )
    if acts.ndim != 2 or not np.issubdtype(acts.dtype, np.floating):
        raise ConfigError(
            f"activations must be a float array [N, d_in], got {acts.dtype} {acts.shape}"
        )
    n_rows, d_in = acts.shape
    n_val = max(1, round(n_rows * cfg.val_fraction))
    if n_rows - n_val < cfg.k or n_val < 2:
        raise ConfigError(f"too few activations to train on: {n_rows} rows")
    recipe = cfg.resolved(d_in)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = rng.permutation(n_rows)
    val_rows, train_rows = perm[:n_val], perm[n_val:]

    init = np.sort(train_rows[:_INIT_SAMPLE])
    b_dec = geometric_median(_rows(acts, init, cfg.normalize_activations))
    model = _TopKSAE(d_in, cfg.d_sae, b_dec, gen)
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    history: list[dict[str, Any]] = []
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    bar = tqdm(
        total=steps_per_epoch * cfg.epochs, disable=not progress, unit="step", desc="train SAE"
    )
    try:
        for epoch in range(1, cfg.epochs + 1):
            loss_sum = 0.0
            batches = _batches(
                acts, rng.permutation(train_rows), cfg.batch_size, cfg.normalize_activations
            )
            for x in batches:
                dead = since_fired >= cfg.dead_tokens_threshold
                sse, total_var, aux, idx = model.losses(x, dead, cfg.k, recipe["aux_k"])
                loss = sse / total_var + cfg.aux_coef * aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                model.constrain_decoder(grad_only=True)
                opt.step()
                model.constrain_decoder(grad_only=False)
                since_fired += x.shape[0]
                since_fired[idx[idx >= 0]] = 0
                loss_sum += loss.item() * x.shape[0]
                bar.update()
                bar.set_postfix(
                    epoch=epoch, loss=f"{loss.item():.4f}", dead=int(dead.sum()), refresh=False
                )
            metrics = _evaluate(
                model, acts, val_rows, since_fired >= cfg.dead_tokens_threshold, recipe
            )
            history.append({"epoch": epoch, "train_loss": loss_sum / len(train_rows), **metrics})
    finally:
        bar.close()

    recipe.update(
        n_tokens=len(train_rows),
        n_val_tokens=n_val,
        final_metrics=dict(history[-1]),
        history=[dict(h) for h in history],
    )
    sae = SAE(
        architecture="topk",
        W_enc=model.W_enc.detach(),
        b_enc=model.b_enc.detach(),
        W_dec=model.W_dec.detach(),
        b_dec=model.b_dec.detach(),
        k=cfg.k,
        apply_b_dec_to_input=True,
        normalize_activations=cfg.normalize_activations,
        metadata={**metadata, "training": recipe},
    )
    return sae, history
