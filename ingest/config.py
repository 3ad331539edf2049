"""Configuration of the ingest stages, importable without torch.

The CLI builds its options from these dataclasses (field docstrings become ``--help``
text), and every ingest run records its configuration in ``ingest_runs.config``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from saedb.errors import ConfigError


@dataclass
class ReaderConfig:
    """How documents are cut and batched for the reader."""

    window_tokens: int = 512
    """Content tokens pooled per window; longer documents are split into several windows."""
    window_overlap: int = 64
    """Tokens of preceding text each later window sees as context (not pooled again)."""
    batch_tokens: int = 8192
    """Token budget of one forward pass (padded batch size x longest window)."""

    def __post_init__(self) -> None:
        if self.window_tokens < 8:
            raise ConfigError(f"window_tokens must be >= 8, got {self.window_tokens}")
        if not 0 <= self.window_overlap < self.window_tokens:
            raise ConfigError(
                f"window_overlap must be in [0, window_tokens={self.window_tokens}), "
                f"got {self.window_overlap}"
            )
        if self.batch_tokens < self.window_tokens + self.window_overlap + 2:
            raise ConfigError(
                f"batch_tokens ({self.batch_tokens}) must hold at least one full window "
                f"({self.window_tokens + self.window_overlap + 2} tokens)"
            )


@dataclass
class IngestConfig:
    """One ingest run: which file goes into which dataset, and how it is processed."""

    source: str
    """Path of a JSONL, CSV/TSV or Parquet file."""
    dataset: str
    """Dataset the documents belong to (created if new)."""
    text_field: str = "text"
    """Field holding the text, or a list of {role, content} chat messages."""
    id_field: str | None = None
    """Field holding a stable document id; default: `id` when present, else the text's sha256."""
    input_format: str | None = None
    """jsonl, csv, tsv or parquet; default: from the file extension."""
    sae: str | None = None
    """Name of the SAE to encode with; default: the store's default SAE."""
    reader: str | None = None
    """Override the reader recorded with the SAE (a local HF model directory)."""
    description: str | None = None
    """Description of the dataset, stored when the dataset is created."""
    window_tokens: int = 512
    """Tokens pooled per window; longer documents are split into windows, never truncated."""
    window_overlap: int = 64
    """Context tokens each later window re-reads from the one before (not pooled twice)."""
    batch_tokens: int = 8192
    """Token budget of one forward pass."""
    commit_docs: int = 256
    """Documents per transaction: the most a crash can make the next run redo."""
    strict: bool = False
    """Stop at the first bad input row instead of skipping and recording it."""
    progress: bool = True
    """Show a progress bar on stderr."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""

    def __post_init__(self) -> None:
        if self.commit_docs < 1:
            raise ConfigError(f"commit_docs must be >= 1, got {self.commit_docs}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        self.reader_config = ReaderConfig(  # validates the windowing options
            window_tokens=self.window_tokens,
            window_overlap=self.window_overlap,
            batch_tokens=self.batch_tokens,
        )


@dataclass
class TrainSaeConfig:
    """``saedb train-sae``: which activations to train on and where the SAE goes.

    The optimisation itself is configured by ``TrainConfig`` (ingest/train.py)."""

    out: str
    """Directory to write the SAE to (SAELens format: cfg.json + sae_weights.safetensors)."""
    corpus: list[str] | None = None
    """Corpus files (JSONL/CSV/Parquet) whose texts are read."""
    reader: str = "builtin:smollm2-135m-instruct"
    """Reader model: builtin:smollm2-135m-instruct or a local HF model directory."""
    hook: str = "blocks.8.hook_resid_post"
    """Where the SAE reads the residual stream (SAELens hook name)."""
    text_field: str = "text"
    """Field holding the text in the corpus files."""
    max_tokens: int = 1_000_000
    """Activation rows (tokens) to collect at most."""
    activations: str | None = None
    """Keep the collected activations in this .npy file and reuse it when it exists."""
    save_dtype: str = "float32"
    """Dtype of the saved weights: float32, or float16 to halve the file."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1000:
            raise ConfigError(f"max_tokens must be >= 1000, got {self.max_tokens}")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError(f"save_dtype must be float32 or float16, got {self.save_dtype}")


@dataclass
class TrainConfig:
    """How to train a TopK SAE (``train_topk``)."""

    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """Active latents per token (the TopK)."""
    aux_k: int | None = None
    """Dead latents the AuxK loss uses per token; None means d_in // 2 (capped at d_sae)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. use 1/32)."""
    lr: float | None = None
    """Adam learning rate; None means 2e-4 / sqrt(d_sae / 2**14) (Gao et al.'s scaling)."""
    batch_size: int = 4096
    """Tokens per optimisation step."""
    epochs: int = 1
    """Passes over the training split."""
    dead_tokens_threshold: int = 100_000
    """A latent is dead once it has not fired for this many training tokens (Gao et al. use
    10M on billion-token runs; 100k is ~800x the mean gap between firings at d_sae=4096, k=32,
    and short enough to matter on a CPU-sized run of ~1M tokens)."""
    seed: int = 0
    """Seed of the train/validation split, the shuffling and the initialisation."""
    val_fraction: float = 0.05
    """Fraction of the rows held out to compute the per-epoch metrics."""
    normalize_activations: str = "constant_norm_rescale"
    """none, or constant_norm_rescale: scale every token to norm sqrt(d_in) before encoding
    (SAELens semantics, kept in the saved cfg), so the few tokens with ~6x the median norm
    (' the', spaces) do not dominate the reconstruction loss."""

    def __post_init__(self) -> None:
        positive_ints = ("d_sae", "k", "batch_size", "epochs", "dead_tokens_threshold")
        for name in positive_ints + (("aux_k",) if self.aux_k is not None else ()):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.k > self.d_sae:
            raise ConfigError(f"TrainConfig.k ({self.k}) must not exceed d_sae ({self.d_sae})")
        if not (isinstance(self.aux_coef, int | float) and 0 <= self.aux_coef < math.inf):
            raise ConfigError(f"TrainConfig.aux_coef must be >= 0, got {self.aux_coef!r}")
        if self.lr is not None and not (isinstance(self.lr, int | float) and 0 < self.lr < 1):
            raise ConfigError(f"TrainConfig.lr must be in (0, 1), got {self.lr!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"TrainConfig.seed must be an integer, got {self.seed!r}")
        if self.normalize_activations not in ("none", "constant_norm_rescale"):
            raise ConfigError(
                "TrainConfig.normalize_activations must be none or constant_norm_rescale, "
                f"got {self.normalize_activations!r}"
            )
        if not (isinstance(self.val_fraction, float) and 0 < self.val_fraction < 1):
            raise ConfigError(
                f"TrainConfig.val_fraction must be a float in (0, 1), got {self.val_fraction!r}"
            )

    def resolved(self, d_in: int) -> dict[str, Any]:
        """All fields, with the None defaults of aux_k and lr filled in for ``d_in``."""
        recipe = asdict(self)
        recipe["aux_k"] = min(self.aux_k or max(1, d_in // 2), self.d_sae)
        recipe["lr"] = self.lr or 2e-4 / math.sqrt(self.d_sae / 2**14)
        return recipe
