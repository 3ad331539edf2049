"""Training TopK, BatchTopK and Matryoshka SAEs on streamed activations, with checkpoints.

The architectures (``TrainConfig.architecture``), all with ``h = (x - b_dec) W_enc + b_enc``
and ``x_hat = z W_dec + b_dec``:

- ``topk`` (Gao et al. 2024): per token, keep the ``k`` largest of ``ReLU(h)``;
- ``batchtopk`` (Bussmann et al. 2024): keep the ``k x batch`` largest of ``ReLU(h)`` over
  the whole batch, so tokens get as many latents as they need and ``k`` on average. At
  inference a threshold replaces the batch: the moving average (``threshold_decay``) of the
  smallest activation the batch top-k kept. The SAE is saved as ``jumprelu`` with that
  threshold for every latent, so it encodes one token at a time;
- ``matryoshka`` (Bussmann et al. 2025, Nabeshima 2024): BatchTopK whose nested dictionary
  prefixes (``matryoshka_prefixes``, e.g. the first d/8, d/4, d/2 and all d latents) must
  each reconstruct the input on their own: the loss is the mean over the prefixes of their
  reconstruction losses, which pushes general features to the first latents. Saved as
  ``jumprelu`` like batchtopk.

The loss is each reconstruction's ``||x - x_hat||^2 / ||x - mean(x)||^2`` over the batch (its
FVU) plus ``aux_coef`` times the AuxK loss: the ``aux_k`` largest pre-activations among *dead*
latents (not fired for ``dead_tokens_threshold`` tokens) reconstruct the residual ``x -
x_hat`` (detached). ``b_dec`` starts at the geometric median of a sample, ``W_dec`` rows at
random unit vectors, ``W_enc = W_dec^T``, ``b_enc = 0``; Adam; the gradient's component
along each decoder row is removed before the step and the rows renormalised after it.

Activations come from a source of ``ingest.activations`` through a ``ShuffleBuffer``: never
all in memory. Every ``checkpoint_every`` steps and at each epoch end the whole state
(weights, optimizer, step, RNG states, the buffer's rows, the source position, the
held-out rows, the history) is written to one file; ``resume=True`` continues from it and
ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ingest.activations import ShuffleBuffer
from ingest.config import TrainConfig
from ingest.sae import SAE
from ingest.train_model import TrainableSAE, evaluate, geometric_median, normalize, to_sae
from saedb.errors import ConfigError

__all__ = ["TrainResult", "TrainableSAE", "evaluate", "geometric_median", "to_sae", "train"]

#: Rows used to initialise b_dec (geometric median).
_INIT_SAMPLE = 8192
#: TrainConfig fields that may differ between a checkpoint and the run resuming it.
_RESUMABLE_CHANGES = ("epochs", "max_steps", "checkpoint_every")
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What ``train`` returns: the SAE, one metrics row per completed epoch, and whether it
    ran to the end (False when ``max_steps`` stopped it: ``final`` is then that partial
    epoch's metrics, else the last epoch's)."""

    sae: SAE
    history: list[dict[str, Any]]
    final: dict[str, Any]
    finished: bool


class _Run:
    """The whole mutable state of a training run (what a checkpoint holds)."""

    def __init__(self, cfg: TrainConfig, d_in: int) -> None:
        self.cfg = cfg
        self.recipe = cfg.resolved(d_in)
        self.prefixes: list[int] = self.recipe["matryoshka_prefixes"]
        self.d_in = d_in
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.buffer = ShuffleBuffer(
            cfg.shuffle_tokens, d_in, cfg.batch_size, np.random.default_rng(cfg.seed)
        )
        self.model: TrainableSAE | None = None
        self.opt: torch.optim.Adam | None = None
        self.step = 0
        self.epoch = 1
        self.position: dict[str, int] | None = None
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.threshold = -1.0
        self.val: list[np.ndarray] = []
        self.n_val = 0
        self.val_complete = False
        self.loss_sum = 0.0
        self.rows_epoch = 0
        self.rows_total = 0
        self.history: list[dict[str, Any]] = []

    # -- the optimisation ------------------------------------------------------------------

    def _init_model(self) -> None:
        sample = self.buffer.buf[: self.buffer.n]
        take = np.sort(
            self.buffer.rng.choice(len(sample), size=min(_INIT_SAMPLE, len(sample)), replace=False)
        )
        rows = normalize(torch.from_numpy(sample[take]), self.cfg.normalize_activations)
        self.model = TrainableSAE(self.d_in, self.cfg.d_sae, geometric_median(rows), self.gen)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.recipe["lr"])

    def train_step(self, batch: np.ndarray) -> float:
        if self.model is None:
            self._init_model()
        assert self.model is not None and self.opt is not None
        cfg = self.cfg
        x = normalize(torch.from_numpy(batch), cfg.normalize_activations)
        dead = self.since_fired >= cfg.dead_tokens_threshold
        loss, aux, codes = self.model.losses(
            x,
            dead,
            architecture=cfg.architecture,
            k=cfg.k,
            aux_k=self.recipe["aux_k"],
            prefixes=self.prefixes,
        )
        total = loss + cfg.aux_coef * aux
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.model.constrain_decoder(grad_only=True)
        self.opt.step()
        self.model.constrain_decoder(grad_only=False)
        self.since_fired += len(x)
        self.since_fired[codes.cols] = 0
        if cfg.architecture != "topk" and len(codes.vals):
            low = float(codes.vals.detach().min())
            # A moving average over about the last half of the steps so far, at most over
            # 1 / (1 - threshold_decay) steps: early steps, taken by a model that has since
            # changed, soon stop counting, also in short runs.
            d = min(cfg.threshold_decay, 1 - 2 / (self.step + 2))
            self.threshold = low if self.threshold < 0 else d * self.threshold + (1 - d) * low
        self.step += 1
        value = float(total.detach())
        self.loss_sum += value * len(x)
        self.rows_epoch += len(x)
        self.rows_total += len(x)
        return value

    def add_val(self, rows: np.ndarray) -> None:
        take = min(len(rows), self.cfg.val_tokens - self.n_val)
        if take > 0:
            self.val.append(np.array(rows[:take], dtype=np.float32))
            self.n_val += take

    def val_rows(self) -> np.ndarray:
        if len(self.val) > 1:
            self.val = [np.concatenate(self.val)]
        return self.val[0]

    # -- checkpoints -------------------------------------------------------------------------

    def state(self, fingerprint: dict[str, Any]) -> dict[str, Any]:
        buf = self.buffer.state()
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": fingerprint,
            "model": None if self.model is None else self.model.state_dict(),
            "opt": None if self.opt is None else self.opt.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "since_fired": self.since_fired,
            "threshold": self.threshold,
            "buffer": {
                **buf,
                "rows": torch.from_numpy(buf["rows"]),
                "queued": torch.from_numpy(buf["queued"]),
            },
            "val": torch.from_numpy(self.val_rows() if self.val else np.empty((0, self.d_in))),
            "val_complete": self.val_complete,
            "loss_sum": self.loss_sum,
            "rows_epoch": self.rows_epoch,
            "rows_total": self.rows_total,
            "history": self.history,
            "torch_rng": self.gen.get_state(),
        }

    def save(self, path: Path, fingerprint: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state(fingerprint), tmp)
        os.replace(tmp, path)

    def load(self, path: Path, fingerprint: dict[str, Any]) -> None:
        if not path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {path} (nothing to resume)")
        try:
            st = torch.load(path, weights_only=True)
        except Exception as exc:  # torch raises several error types for a bad file
            raise ConfigError(f"--resume: cannot read checkpoint {path} ({exc})") from exc
        if st.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{path}: checkpoint version {st.get('version')} is not supported")
        differ = [
            f"{key} (checkpoint {st['fingerprint'].get(key)!r}, now {fingerprint.get(key)!r})"
            for key in sorted(set(st["fingerprint"]) | set(fingerprint))
            if st["fingerprint"].get(key) != fingerprint.get(key)
        ]
        if differ:
            raise ConfigError(
                f"--resume: {path} was written with other settings: {'; '.join(differ)}. "
                f"Only {', '.join(_RESUMABLE_CHANGES)} may change when resuming"
            )
        if st["model"] is not None:
            self.model = TrainableSAE(
                self.d_in, self.cfg.d_sae, torch.zeros(self.d_in), torch.Generator()
            )
            self.model.load_state_dict(st["model"])
            self.opt = torch.optim.Adam(self.model.parameters(), lr=self.recipe["lr"])
            self.opt.load_state_dict(st["opt"])
        self.step, self.epoch, self.position = st["step"], st["epoch"], st["position"]
        self.since_fired = st["since_fired"]
        self.threshold = st["threshold"]
        buf = st["buffer"]
        self.buffer.load_state(
            {**buf, "rows": buf["rows"].numpy(), "queued": buf["queued"].numpy()}
        )
        val = st["val"].numpy().astype(np.float32)
        self.val, self.n_val = ([val] if len(val) else []), len(val)
        self.val_complete = st["val_complete"]
        self.loss_sum, self.rows_epoch = st["loss_sum"], st["rows_epoch"]
        self.rows_total = st["rows_total"]
        self.history = st["history"]
        self.gen.set_state(st["torch_rng"])


def fingerprint_of(cfg: TrainConfig, source: Any, extra: dict[str, Any] | None) -> dict[str, Any]:
    """What a checkpoint must agree on with the run that resumes it."""
    fp = {f"train.{k}": v for k, v in vars(cfg).items() if k not in _RESUMABLE_CHANGES}
    fp.update({f"source.{k}": v for k, v in source.describe().items()})
    fp["source.d_in"] = source.d_in
    fp.update({f"run.{k}": v for k, v in (extra or {}).items()})
    return fp


def train(
    source: Any,
    cfg: TrainConfig,
    *,
    metadata: dict[str, Any],
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train an SAE on ``source`` (a ``ReaderSource`` or ``ArraySource``).

    ``metadata`` (at least ``model_name`` and ``hook_name``) goes into the SAE's cfg
    metadata, with the training recipe under ``metadata["training"]``. With ``checkpoint``
    the state is saved there every ``cfg.checkpoint_every`` steps, at every epoch end and
    when ``max_steps`` stops the run; ``resume`` continues from it (``fingerprint``: extra
    settings that must match, e.g. the corpus). ``on_epoch`` gets each epoch's metrics row.
    """
    for key in ("model_name", "hook_name"):
        if not isinstance(metadata.get(key), str):
            raise ConfigError(
                f"train needs metadata['{key}'] (a string) to record "
                "which reader and hook the SAE belongs to"
            )
    run = _Run(cfg, source.d_in)
    fp = fingerprint_of(cfg, source, fingerprint)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if ckpt is None:
            raise ConfigError("resume needs a checkpoint path")
        run.load(ckpt, fp)

    def save() -> None:
        if ckpt is not None:
            run.save(ckpt, fp)

    per_epoch = int(source.size_hint * (1 - cfg.val_fraction))
    bar = tqdm(
        total=per_epoch * cfg.epochs,
        initial=min(run.rows_total, per_epoch * cfg.epochs),
        disable=not progress,
        unit="tok",
        unit_scale=True,
        desc="train SAE",
        dynamic_ncols=True,
    )
    stopped = False

    def steps() -> bool:
        """Train on every batch the buffer has; False when max_steps keeps one from it."""
        while run.buffer.ready():
            if cfg.max_steps is not None and run.step >= cfg.max_steps:
                return False
            batch = run.buffer.take()
            loss = run.train_step(batch)
            bar.update(len(batch))
            bar.set_postfix(epoch=run.epoch, loss=f"{loss:.4f}", refresh=False)
            if run.step % cfg.checkpoint_every == 0:
                save()
        return True

    try:
        while run.epoch <= cfg.epochs and not stopped:
            if not run.buffer.finished:
                for chunk in source.chunks(run.epoch, run.position):
                    if not run.val_complete:
                        run.add_val(chunk.x[chunk.held_out])
                    run.buffer.put(chunk.x[~chunk.held_out])
                    run.position = chunk.position
                    if not steps():
                        stopped = True
                        break
                if not stopped:
                    run.buffer.finish()
            if not stopped and not steps():
                stopped = True
            if stopped:
                break
            if run.rows_epoch == 0:
                raise ConfigError(
                    f"no activations to train on in epoch {run.epoch} "
                    "(is the corpus empty, or val_fraction too large?)"
                )
            if run.n_val < 2:
                raise ConfigError(
                    f"only {run.n_val} held-out activations: too few to evaluate on; "
                    "raise val_fraction or give more data"
                )
            run.val_complete = True
            row = {
                "epoch": run.epoch,
                "step": run.step,
                "train_loss": run.loss_sum / run.rows_epoch,
                **evaluate(to_sae(run.model, cfg, run.threshold, {}), run.val_rows(), run.prefixes),
                "dead_train": float((run.since_fired >= cfg.dead_tokens_threshold).float().mean()),
            }
            run.history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            run.epoch += 1
            run.position, run.loss_sum, run.rows_epoch = None, 0.0, 0
            run.buffer = ShuffleBuffer(cfg.shuffle_tokens, run.d_in, cfg.batch_size, run.buffer.rng)
            save()
        if stopped:
            save()
    finally:
        bar.close()

    if run.model is None:
        raise ConfigError("no training step was taken (max_steps reached before any)")
    if stopped:
        if run.n_val < 2:
            raise ConfigError(
                "stopped before 2 held-out activations were seen: nothing to evaluate"
            )
        final = {
            "epoch": run.epoch,
            "step": run.step,
            "partial": True,
            "train_loss": run.loss_sum / max(run.rows_epoch, 1),
            **evaluate(to_sae(run.model, cfg, run.threshold, {}), run.val_rows(), run.prefixes),
        }
    else:
        final = dict(run.history[-1])
    recipe = dict(run.recipe)
    recipe.update(
        tokens_trained=run.rows_total,
        n_val_tokens=run.n_val,
        steps=run.step,
        threshold=None if cfg.architecture == "topk" else run.threshold,
        final_metrics=final,
        history=[dict(h) for h in run.history],
    )
    sae = to_sae(run.model, cfg, run.threshold, {**metadata, "training": recipe})
    return TrainResult(sae, run.history, final, finished=not stopped)
