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
    store: str | None = None
    """A saedb store whose documents are the corpus (instead of corpus files); read-only,
    in a seeded random document order that changes every epoch."""
    datasets: str | None = None
    """With --store: comma-separated names of the datasets to read (default: all)."""
    reader: str = "builtin:smollm2-135m-instruct"
    """Reader model: builtin:smollm2-135m-instruct or a local HF model directory."""
    hook: str = "blocks.8.hook_resid_post"
    """Where the SAE reads the residual stream (SAELens hook name)."""
    text_field: str = "text"
    """Field holding the text in the corpus files."""
    max_tokens: int = 1_000_000
    """Activation rows (tokens) to read per epoch at most."""
    activations: str | None = None
    """Keep the collected activations in this .npy file and reuse it when it exists; without
    it the reader runs as training consumes its activations (every epoch)."""
    save_dtype: str = "float32"
    """Dtype of the saved weights: float32, or float16 to halve the file."""
    resume: bool = False
    """Continue from OUT/checkpoint.pt, written by an interrupted run with the same
    settings (only --epochs, --max-steps and --checkpoint-every may change)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1000:
            raise ConfigError(f"max_tokens must be >= 1000, got {self.max_tokens}")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError(f"save_dtype must be float32 or float16, got {self.save_dtype}")
        if self.corpus and self.store:
            raise ConfigError("give either corpus files or --store, not both")
        if self.datasets is not None and not self.store:
            raise ConfigError("--datasets selects datasets of a --store; no --store given")

    def dataset_names(self) -> list[str]:
        """The --datasets names, or [] for all of the store's datasets."""
        names = [n.strip() for n in (self.datasets or "").split(",")]
        if self.datasets is not None and not all(names):
            raise ConfigError(f"--datasets expects comma-separated names, got {self.datasets!r}")
        return [n for n in names if n]


#: The architectures ``saedb train-sae`` trains (see ingest/train.py).
TRAIN_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")


@dataclass
class TrainConfig:
    """How to train an SAE (``ingest.train.train``)."""

    architecture: str = "topk"
    """topk (k largest latents per token), batchtopk (the k x batch largest over the batch;
    saved as jumprelu with the learned threshold) or matryoshka (batchtopk whose nested
    dictionary prefixes must each reconstruct the input; saved as jumprelu)."""
    d_sae: int = 4096
    """Number of latents."""
    k: int = 32
    """Active latents per token (the TopK; batchtopk and matryoshka: on average over a batch)."""
    matryoshka_prefixes: str | None = None
    """Comma-separated nested dictionary sizes, increasing and ending at d_sae (e.g.
    512,1024,2048,4096); default d_sae/8, d_sae/4, d_sae/2, d_sae."""
    threshold_decay: float = 0.999
    """batchtopk and matryoshka: the jumprelu threshold used at inference is a moving average
    of the smallest activation the batch top-k keeps, over about the last half of the steps
    and at most 1 / (1 - threshold_decay) steps."""
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
    max_steps: int | None = None
    """Stop after this many optimisation steps in all (even mid-epoch), evaluate, save the SAE
    and keep the checkpoint so --resume can continue."""
    dead_tokens_threshold: int = 100_000
    """A latent is dead once it has not fired for this many training tokens (Gao et al. use
    10M on billion-token runs; 100k is ~800x the mean gap between firings at d_sae=4096, k=32,
    and short enough to matter on a CPU-sized run of ~1M tokens)."""
    seed: int = 0
    """Seed of the shuffling, the document order and the initialisation."""
    val_fraction: float = 0.05
    """Fraction of the activations held out (never trained on) for the per-epoch metrics:
    whole documents when streaming from a reader, rows of an --activations file."""
    val_tokens: int = 50_000
    """Held-out tokens kept (in memory) to compute the metrics on, at most."""
    shuffle_tokens: int = 65_536
    """Size of the shuffle buffer in tokens: batches are drawn at random from it as the
    activations stream in (memory: shuffle_tokens x d_in x 4 bytes)."""
    checkpoint_every: int = 500
    """Optimisation steps between checkpoints (also written at every epoch end)."""
    normalize_activations: str = "constant_norm_rescale"
    """none, or constant_norm_rescale: scale every token to norm sqrt(d_in) before encoding
    (SAELens semantics, kept in the saved cfg), so the few tokens with ~6x the median norm
    (' the', spaces) do not dominate the reconstruction loss."""

    def __post_init__(self) -> None:
        if self.architecture not in TRAIN_ARCHITECTURES:
            raise ConfigError(
                f"architecture '{self.architecture}' cannot be trained. "
                f"Valid architectures are: {', '.join(TRAIN_ARCHITECTURES)}"
            )
        positive_ints = (
            "d_sae",
            "k",
            "batch_size",
            "epochs",
            "dead_tokens_threshold",
            "val_tokens",
            "shuffle_tokens",
            "checkpoint_every",
        )
        optional = tuple(n for n in ("aux_k", "max_steps") if getattr(self, n) is not None)
        for name in positive_ints + optional:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.k > self.d_sae:
            raise ConfigError(f"TrainConfig.k ({self.k}) must not exceed d_sae ({self.d_sae})")
        if self.shuffle_tokens < self.batch_size:
            raise ConfigError(
                f"TrainConfig.shuffle_tokens ({self.shuffle_tokens}) must be at least "
                f"batch_size ({self.batch_size})"
            )
        if not (isinstance(self.aux_coef, int | float) and 0 <= self.aux_coef < math.inf):
            raise ConfigError(f"TrainConfig.aux_coef must be >= 0, got {self.aux_coef!r}")
        if self.lr is not None and not (isinstance(self.lr, int | float) and 0 < self.lr < 1):
            raise ConfigError(f"TrainConfig.lr must be in (0, 1), got {self.lr!r}")
        if not (isinstance(self.threshold_decay, float) and 0 <= self.threshold_decay < 1):
            raise ConfigError(
                f"TrainConfig.threshold_decay must be a float in [0, 1), "
                f"got {self.threshold_decay!r}"
            )
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
        self.prefix_sizes()  # validates matryoshka_prefixes

    def prefix_sizes(self) -> list[int]:
        """The matryoshka dictionary prefixes (increasing, the last is d_sae); [d_sae] for the
        other architectures."""
        if self.architecture != "matryoshka":
            if self.matryoshka_prefixes is not None:
                raise ConfigError(
                    "matryoshka_prefixes applies to --architecture matryoshka only, "
                    f"not {self.architecture}"
                )
            return [self.d_sae]
        if self.matryoshka_prefixes is None:
            sizes = sorted({max(1, self.d_sae // 8), max(1, self.d_sae // 4), self.d_sae // 2})
            return [s for s in sizes if 0 < s < self.d_sae] + [self.d_sae]
        try:
            sizes = [int(p) for p in self.matryoshka_prefixes.split(",")]
        except ValueError:
            raise ConfigError(
                "matryoshka_prefixes expects comma-separated integers, "
                f"got {self.matryoshka_prefixes!r}"
            ) from None
        increasing = all(a < b for a, b in zip(sizes, sizes[1:], strict=False))
        if sizes[-1] != self.d_sae or not increasing or sizes[0] < 1:
            raise ConfigError(
                f"matryoshka_prefixes must increase from >= 1 and end at d_sae ({self.d_sae}), "
                f"got {self.matryoshka_prefixes!r}"
            )
        return sizes

    def resolved(self, d_in: int) -> dict[str, Any]:
        """All fields, with the None defaults of aux_k and lr filled in for ``d_in``."""
        recipe = asdict(self)
        recipe["aux_k"] = min(self.aux_k or max(1, d_in // 2), self.d_sae)
        recipe["lr"] = self.lr or 2e-4 / math.sqrt(self.d_sae / 2**14)
        recipe["matryoshka_prefixes"] = self.prefix_sizes()
        return recipe
