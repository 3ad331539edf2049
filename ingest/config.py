"""Configuration of the ingest stages, importable without torch.

The CLI builds its options from these dataclasses (field docstrings become ``--help``
text), and every ingest run records its configuration in ``ingest_runs.config``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    format: str | None = None
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
