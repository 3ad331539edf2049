"""``saedb train-sae``: reader activations over a corpus -> an SAE in SAELens format.

The activations stream from the reader (corpus files, or a store's ``documents``) through a
shuffle buffer into training, or come from an ``--activations`` file collected once. The
output directory gets the SAE (``cfg.json`` + ``sae_weights.safetensors``), ``metrics.json``
(one row per epoch, rewritten as each ends), ``recipe.json`` (corpus, reader and revision,
hook, token count, every setting, the metrics: how the SAE was made) and, while a run is
unfinished, ``checkpoint.pt`` for ``--resume``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ingest import activations
from ingest.config import ReaderConfig, TrainConfig, TrainSaeConfig
from ingest.hooks import parse_hook
from ingest.reader import Reader, resolve_reader
from ingest.sae import save_saelens
from ingest.train import TrainResult, train
from saedb.errors import ConfigError

CHECKPOINT_FILE, METRICS_FILE, RECIPE_FILE = "checkpoint.pt", "metrics.json", "recipe.json"


def train_sae(cfg: TrainSaeConfig, train_cfg: TrainConfig | None = None) -> list[dict[str, Any]]:
    """Stream (or reuse) activations, train, save; return the per-epoch metrics rows, plus
    the partial epoch's when ``max_steps`` stopped the run (the last row is the final one)."""
    result = run(cfg, train_cfg)
    return result.history if result.finished else [*result.history, result.final]


def run(cfg: TrainSaeConfig, train_cfg: TrainConfig | None = None) -> TrainResult:
    """``train_sae``, returning the whole ``TrainResult``."""
    train_cfg = train_cfg or TrainConfig()
    hook = parse_hook(cfg.hook)
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT_FILE
    if ckpt.exists() and not cfg.resume:
        raise ConfigError(
            f"{ckpt} holds an unfinished run: continue it with --resume, "
            "or delete the file to start over"
        )
    resolved = resolve_reader(cfg.reader)
    acts_path = Path(cfg.activations) if cfg.activations else None
    documents: Any = None
    try:
        if acts_path is not None and acts_path.is_file():
            acts = np.load(acts_path, mmap_mode="r")
            print(f"reusing {len(acts):,} activations from {acts_path}", file=sys.stderr)
            source: Any = activations.ArraySource(
                acts, val_fraction=train_cfg.val_fraction, seed=train_cfg.seed
            )
        else:
            if cfg.store:
                documents = activations.StoreDocuments(
                    cfg.store, cfg.dataset_names(), seed=train_cfg.seed
                )
            elif cfg.corpus:
                documents = activations.corpus_documents(cfg.corpus, cfg.text_field)
            else:
                raise ConfigError(
                    "train-sae needs corpus files, --store STORE, or --activations FILE that exists"
                )
            if acts_path is None and train_cfg.epochs > 1:
                print(
                    f"note: the reader runs over the corpus again in each of the "
                    f"{train_cfg.epochs} epochs; --activations FILE computes it once",
                    file=sys.stderr,
                )
            reader = Reader(resolved, hook, ReaderConfig())
            source = activations.ReaderSource(
                reader, documents, max_tokens=cfg.max_tokens, val_fraction=train_cfg.val_fraction
            )
            if acts_path is not None:
                acts = activations.collect(source, acts_path, progress=cfg.progress)
                del reader, source  # free the model before training
                source = activations.ArraySource(
                    acts, val_fraction=train_cfg.val_fraction, seed=train_cfg.seed
                )
        metadata = {
            "model_name": resolved.model_name,
            "hook_name": hook.name,
            "reader": cfg.reader,
            "reader_revision": resolved.revision,
            "prepend_bos": True,
            "context_size": ReaderConfig().window_tokens,
            "dataset_path": [str(c) for c in (cfg.corpus or [])] or cfg.store,
            "trained_by": "saedb train-sae",
        }
        settings = asdict(cfg)
        for key in ("out", "resume", "progress", "save_dtype"):
            settings.pop(key)
        settings["reader_revision"] = resolved.revision
        out.mkdir(parents=True, exist_ok=True)
        table = _EpochTable(out / METRICS_FILE)
        result = train(
            source,
            train_cfg,
            metadata=metadata,
            progress=cfg.progress,
            checkpoint=ckpt,
            resume=cfg.resume,
            fingerprint=settings,
            on_epoch=table.add,
        )
    finally:
        if documents is not None and hasattr(documents, "close"):
            documents.close()
    if not result.finished:
        table.add(result.final)
    rows = result.history if result.finished else [*result.history, result.final]
    table.path.write_text(json.dumps({"epochs": rows}, indent=2) + "\n")  # resumed: all of them
    save_saelens(result.sae, out, dtype=cfg.save_dtype)
    recipe = {
        "train_sae": asdict(cfg),
        "train": asdict(train_cfg),
        "tokens_trained": result.sae.metadata["training"]["tokens_trained"],
        "n_val_tokens": result.sae.metadata["training"]["n_val_tokens"],
        "steps": result.sae.metadata["training"]["steps"],
        "history": result.history,
        "final": result.final,
        "finished": result.finished,
        "weights_sha256": result.sae.weights_sha256,
    }
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, default=str) + "\n")
    if result.finished:
        ckpt.unlink(missing_ok=True)
    else:
        print(f"stopped at step {result.final['step']}; continue with --resume", file=sys.stderr)
    return result


class _EpochTable:
    """Prints one line per epoch (a header first) and keeps ``metrics.json`` up to date."""

    HEADER = (
        f"{'epoch':>5} {'step':>8} {'loss':>8} {'FVU':>7} {'L0':>7} {'dead':>6} {'dead@train':>10}"
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        if not self.rows:
            tqdm.write(self.HEADER, file=sys.stdout)
        self.rows.append(row)
        epoch = f"{row['epoch']}{'*' if row.get('partial') else ''}"
        dead_train = row.get("dead_train")
        line = (
            f"{epoch:>5} {row['step']:>8} {row['train_loss']:>8.4f} {row['fvu']:>7.4f} "
            f"{row['l0']:>7.2f} {row['dead_fraction']:>6.1%} "
            + (f"{dead_train:>10.1%}" if dead_train is not None else f"{'':>10}")
        )
        if "fvu_prefixes" in row:
            line += "  prefix FVU " + " ".join(
                f"{m}:{v:.3f}" for m, v in row["fvu_prefixes"].items()
            )
        tqdm.write(line, file=sys.stdout)
        self.path.write_text(json.dumps({"epochs": self.rows}, indent=2) + "\n")
