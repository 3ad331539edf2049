"""``saedb train-sae``: reader activations over a corpus -> a TopK SAE in SAELens format.

The recipe (corpus files, reader and revision, hook, token count, every training setting,
per-epoch metrics) is written into the SAE's cfg metadata and to ``recipe.json`` beside it,
so any SAE saedb trained can say how it was made.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ingest import activations
from ingest.config import ReaderConfig, TrainConfig, TrainSaeConfig
from ingest.hooks import HookPoint, parse_hook
from ingest.reader import Reader, ResolvedReader, resolve_reader
from ingest.sae import save_saelens
from ingest.train import train_topk
from saedb.errors import ConfigError


def train_sae(cfg: TrainSaeConfig, train: TrainConfig | None = None) -> list[dict[str, Any]]:
    """Collect (or reuse) activations, train, save; returns the per-epoch metrics."""
    train = train or TrainConfig()
    hook = parse_hook(cfg.hook)
    resolved = resolve_reader(cfg.reader)
    with tempfile.TemporaryDirectory(prefix="saedb-acts-") as tmp:
        # Without --activations the activations live in a temporary file, removed at the end.
        acts_path = Path(cfg.activations) if cfg.activations else Path(tmp) / "activations.npy"
        if acts_path.is_file():
            acts = np.load(acts_path, mmap_mode="r")
            print(f"reusing {len(acts):,} activations from {acts_path}", file=sys.stderr)
        else:
            if not cfg.corpus:
                raise ConfigError(
                    "train-sae needs corpus files (or --activations FILE that exists)"
                )
            reader = Reader(resolved, hook, ReaderConfig())
            texts = activations.corpus_texts(cfg.corpus, cfg.text_field)
            acts = activations.collect(
                reader, texts, acts_path, max_tokens=cfg.max_tokens, progress=cfg.progress
            )
            del reader  # free the model before training
        return _train_and_save(cfg, train, acts, resolved, hook)


def _train_and_save(
    cfg: TrainSaeConfig,
    train: TrainConfig,
    acts: np.ndarray,
    resolved: ResolvedReader,
    hook: HookPoint,
) -> list[dict[str, Any]]:
    metadata = {
        "model_name": resolved.model_name,
        "hook_name": hook.name,
        "reader": cfg.reader,
        "reader_revision": resolved.revision,
        "prepend_bos": True,
        "context_size": ReaderConfig().window_tokens,
        "dataset_path": [str(c) for c in (cfg.corpus or [])],
        "trained_by": "saedb train-sae",
    }
    sae, history = train_topk(acts, train, metadata=metadata, progress=cfg.progress)
    out = Path(cfg.out)
    save_saelens(sae, out, dtype=cfg.save_dtype)
    recipe = {
        "train_sae": asdict(cfg),
        "train": asdict(train),
        "n_tokens": int(len(acts)),
        "history": history,
        "weights_sha256": sae.weights_sha256,
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2, default=str) + "\n")
    return history
