"""The evaluation's settings: one dataclass, two presets (full and ``--quick``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class EvalConfig:
    """What the evaluation samples and where it keeps things."""

    per_subset: int = 300
    """Documents sampled from each subset (seeded); fewer when the subset has fewer."""
    max_fortune_chars: int = 600
    """Fortunes longer than this are not sampled (keeps documents short; ~3% of fortunes)."""
    email_chars: int = 1000
    """Emails: the subject and the plain-text body, cut to this many characters."""
    email_tokens: int = 256
    """Emails: then cut to this many tokens of the reader's tokenizer. 1,000 characters of
    English are ~250 tokens, but CJK or mis-decoded mail reaches ~1,900 (several windows
    each, and spam longer than ham in tokens for a reason that is not its content)."""
    batch_tokens: int = 2048
    """Token budget of one reader forward pass when ingesting (``IngestConfig.batch_tokens``).
    A batch is padded to its longest window, so with saedb's default of 8,192 a batch of
    short fortunes holds ~30 windows padded to the longest: 2.3x the real tokens for
    fortunes, 2.5x for glosses, 1.1x for emails; 2,048 cuts that to 1.4x, 1.7x and 1.04x, and
    such batches are no slower per token on a 2-core CPU (measured: 120 fortunes 25 -> 43
    docs/s; 60 emails 6 -> 9.5 docs/s together with ``email_tokens``)."""
    label_latents: int | None = None
    """Label only this many latents of each store, those that fire in the most documents;
    None labels every latent that fired (as ``saedb label --all-firing``). Labelling runs one
    query per latent (~4,000 per store), so a small number keeps test-sized runs fast."""
    seed: int = 0
    """Seed of every sample, split and plant."""
    top_k: int = 10
    """Latents per direction scored in the diffing study (precision@k)."""
    rates: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50)
    """Planting rates: the share of half A that gets the phrase."""
    null_splits: int = 20
    """Random halves per subset in the calibration study."""
    query_latents: int = 5
    """Latents a text query is turned into (highest label similarity; saedb search's default
    ``--latents-k``)."""
    cluster_latents: int = 5
    """Latents per subset query that targeted clustering uses."""
    sample_per_side: int = 50
    """Documents per subset a direct LLM comparison would read in the sampled variant."""
    llm_judge: bool = True
    """Ask an LLM whether each top diff latent's label describes the property (diffing), when
    an OpenAI-compatible endpoint is configured; otherwise the keyword check alone."""
    llm_config: Path | None = None
    """The LLM config file (TOML, as ``saedb label --llm-config``); default
    ``$SAEDB_LLM_CONFIG``, else ``~/.config/saedb/llm.toml`` if it exists."""
    llm_base_url: str | None = None
    """The judge's endpoint, e.g. ``http://localhost:8000/v1``; wins over the config file."""
    llm_model: str | None = None
    """The judge's chat model at the endpoint; wins over the config file."""
    cache: Path = field(default_factory=lambda: REPO / ".cache" / "eval")
    """Cached stores, the corpus files and partial reports."""
    docs: Path = field(default_factory=lambda: REPO / "docs")
    """Where evaluation.md and img/ go (full runs only)."""
    quick: bool = False
    """The --quick preset: small samples, report under the cache, not in docs/."""
    partial: bool = False
    """--only: some of the studies; report and plots under the cache, so docs/ keeps a whole run."""

    def __post_init__(self) -> None:
        if self.per_subset < 10:
            raise ValueError(f"per_subset must be at least 10, got {self.per_subset}")
        if not all(0 < r <= 0.5 for r in self.rates):
            raise ValueError(f"rates must be in (0, 0.5], got {self.rates}")
        if self.email_tokens < 16:
            raise ValueError(f"email_tokens must be at least 16, got {self.email_tokens}")
        if self.label_latents is not None and self.label_latents < 1:
            raise ValueError(f"label_latents must be at least 1 or None, got {self.label_latents}")
        if self.top_k < 1 or self.null_splits < 1:
            raise ValueError(
                f"top_k and null_splits must be at least 1, got {self.top_k}, {self.null_splits}"
            )

    @classmethod
    def preset(cls, quick: bool, **overrides: object) -> EvalConfig:
        if quick:
            overrides = {
                "per_subset": 40,
                "null_splits": 5,
                "rates": (0.05, 0.25, 0.5),
                "quick": True,
                **overrides,
            }
        return cls(**overrides)  # type: ignore[arg-type]

    @property
    def labelled(self) -> str:
        """Which latents of a store are labelled, for the report."""
        if self.label_latents is None:
            return "every latent that fired"
        return f"the {self.label_latents} latents that fired in the most documents"

    @property
    def img_dir(self) -> Path:
        if self.quick:
            return self.cache / "quick-img"
        return (self.cache / "partial-img") if self.partial else (self.docs / "img")

    @property
    def report_path(self) -> Path:
        if self.quick:
            return self.cache / "evaluation-quick.md"
        return (
            (self.cache / "evaluation-partial.md")
            if self.partial
            else (self.docs / "evaluation.md")
        )
