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

    @classmethod
    def preset(cls, quick: bool) -> EvalConfig:
        if quick:
            return cls(per_subset=40, null_splits=5, rates=(0.05, 0.25, 0.5), quick=True)
        return cls()

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
