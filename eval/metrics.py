"""Metric functions of the studies, small and checked by hand in tests/test_eval.py."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np

from saedb.labels import words


def average_precision(ranking: Sequence, relevant: Iterable) -> float:
    """Average precision of a ranking (best first) against a set of relevant items: the mean
    over relevant items of precision at the rank where each is found; a relevant item the
    ranking never reaches contributes 0. 0 when nothing is relevant."""
    rel = set(relevant)
    if not rel:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(ranking, start=1):
        if item in rel:
            hits += 1
            total += hits / rank
    return total / len(rel)


def mean_average_precision(runs: Iterable[tuple[Sequence, Iterable]]) -> float:
    """Mean of :func:`average_precision` over ``(ranking, relevant)`` pairs."""
    aps = [average_precision(r, rel) for r, rel in runs]
    return float(np.mean(aps)) if aps else 0.0


def full_ranking(ranked: Sequence, universe: Sequence, seed: int = 0) -> list:
    """``ranked`` followed by the items of ``universe`` it leaves out, in a seeded random
    order: a method that scores only some documents (saedb search returns documents where a
    query latent fired) is ranked over the same documents as one that scores all."""
    seen = set(ranked)
    rest = [u for u in universe if u not in seen]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rest))
    return list(ranked) + [rest[i] for i in order]


def precision_at_k(hits: Sequence[bool], k: int) -> float:
    """Share of the first ``k`` items that are hits; fewer than ``k`` items count the missing
    ones as misses (a diff with only 3 significant latents scores at most 3/k)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return sum(bool(h) for h in hits[:k]) / k


def keyword_hit(texts: Iterable[str], keywords: Iterable[str]) -> str | None:
    """The first keyword any word of ``texts`` matches, or None. A word matches a keyword when
    it equals it, or starts with it when the keyword has 4+ letters (``program`` matches
    ``programmers``, ``he`` does not match ``help``)."""
    kws = [k.lower() for k in keywords]
    for text in texts:
        for w in words(text):
            for k in kws:
                if w == k or (len(k) >= 4 and w.startswith(k)):
                    return k
    return None


def planted_rank(diff_latents: Sequence[int], phrase_latents: Iterable[int]) -> tuple[int, int]:
    """``(rank, latent)`` of the best-ranked phrase latent in a diff ordering (1-based, the
    order given, most over-represented first); ``(0, -1)`` when none appears."""
    wanted = set(phrase_latents)
    for rank, latent in enumerate(diff_latents, start=1):
        if latent in wanted:
            return rank, int(latent)
    return 0, -1


def phrase_latents(
    peaks: Iterable[tuple[int, int, int, int]],
    phrase_start: dict[int, int],
    min_share: float = 0.5,
) -> dict[int, float]:
    """Latents that fire on a planted phrase: ``peaks`` are ``(doc, latent, peak char start,
    peak char end)`` rows of the planted documents, ``phrase_start`` each planted document's
    character offset of the phrase. A latent qualifies when its peak token lies inside the
    phrase in at least ``min_share`` of the planted documents. Returns latent -> that share."""
    n_docs = len(phrase_start)
    if n_docs == 0:
        return {}
    inside: dict[int, int] = {}
    for doc, latent, start, _end in peaks:
        if doc in phrase_start and start >= phrase_start[doc]:
            inside[latent] = inside.get(latent, 0) + 1
    return {lat: n / n_docs for lat, n in sorted(inside.items()) if n / n_docs >= min_share}


def npmi(n_both: int, n_i: int, n_j: int, n_docs: int) -> float:
    """NPMI from document counts, the formula of the SQL macro ``npmi_score``."""
    if n_both >= n_docs:
        return 1.0
    if n_both == 0:
        return -1.0
    v = (math.log(n_both) + math.log(n_docs) - math.log(n_i) - math.log(n_j)) / (
        math.log(n_docs) - math.log(n_both)
    )
    return max(-1.0, min(1.0, v))


def permutation_p(
    x: Sequence[float], y: Sequence[float], n_perm: int = 10_000, seed: int = 0
) -> float:
    """One-sided permutation p-value of ``mean(x) - mean(y)``: the share of ways to split the
    pooled values into groups of ``len(x)`` and ``len(y)`` whose difference of means is at
    least the observed one. Every split when there are at most ``n_perm`` (exact; the observed
    split is one of them), else ``n_perm`` seeded random ones, as ``(b + 1) / (n_perm + 1)``
    so the estimate is never 0. 1.0 when either group is empty."""
    if not x or not y:
        return 1.0
    pooled = np.asarray([*x, *y], dtype=float)
    n, m = len(pooled), len(x)
    observed = float(np.mean(x) - np.mean(y))
    total = pooled.sum()

    def diffs(sums: np.ndarray) -> np.ndarray:
        return sums / m - (total - sums) / (n - m)

    tol = 1e-12 * max(1.0, abs(observed))
    if math.comb(n, m) <= n_perm:
        sums = np.array([pooled[list(c)].sum() for c in combinations(range(n), m)])
        return float(np.mean(diffs(sums) >= observed - tol))
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n_perm, n)), axis=1)[:, :m]
    b = int((diffs(pooled[idx].sum(axis=1)) >= observed - tol).sum())
    return (b + 1) / (n_perm + 1)


def adjusted_rand(truth: Sequence, predicted: Sequence) -> float:
    """Adjusted Rand index (scikit-learn's)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(list(truth), list(predicted)))
