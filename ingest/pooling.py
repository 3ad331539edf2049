"""Pooling: token-level SAE activations -> one row per (document, latent).

For every latent that fired in a document we keep the max activation (the SAE embedding
proper), the sum and the number of tokens where it fired, and the character span of the
token where it peaked (ties go to the earliest token), so an example can be highlighted
later without a tokenizer. The same grouping merges partial results (a document whose
windows landed in different batches), because max, sum and count all compose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pooled:
    """Pooled latents of a set of documents, one entry per (doc, latent), sorted by both."""

    doc: np.ndarray  # int64, document index within the chunk
    latent: np.ndarray  # int32
    max_act: np.ndarray  # float32
    sum_act: np.ndarray  # float32
    n_active: np.ndarray  # int32
    char_start: np.ndarray  # int32, span of the token where max_act was reached
    char_end: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.doc)

    @staticmethod
    def concat(parts: list[Pooled]) -> Pooled:
        return Pooled(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("doc", "latent", "max_act", "sum_act", "n_active", "char_start", "char_end")


def pool_tokens(
    token_doc: np.ndarray,
    token_start: np.ndarray,
    token_end: np.ndarray,
    token_idx: np.ndarray,
    latent_idx: np.ndarray,
    values: np.ndarray,
) -> Pooled:
    """Pool a COO matrix of token activations (token_idx, latent_idx, values) per document."""
    token_idx = np.asarray(token_idx, dtype=np.int64)
    values = np.asarray(values, dtype=np.float32)
    return merge(
        Pooled(
            doc=np.asarray(token_doc, dtype=np.int64)[token_idx],
            latent=np.asarray(latent_idx, dtype=np.int32),
            max_act=values,
            sum_act=values,
            n_active=np.ones(len(values), dtype=np.int32),
            char_start=np.asarray(token_start, dtype=np.int32)[token_idx],
            char_end=np.asarray(token_end, dtype=np.int32)[token_idx],
        )
    )


def merge(p: Pooled) -> Pooled:
    """Group entries by (doc, latent): max of max_act (earliest span wins ties), sums of
    sum_act and n_active. Entries are assumed in token order within a (doc, latent)."""
    if len(p) == 0:
        return p
    # Sort by doc, latent, then max_act descending; the stable sort keeps token order on ties.
    order = np.lexsort((-p.max_act, p.latent, p.doc))
    doc, latent = p.doc[order], p.latent[order]
    new_group = np.empty(len(order), dtype=bool)
    new_group[0] = True
    new_group[1:] = (doc[1:] != doc[:-1]) | (latent[1:] != latent[:-1])
    first = np.flatnonzero(new_group)
    pick = order[first]
    return Pooled(
        doc=doc[first],
        latent=latent[first],
        max_act=p.max_act[pick],
        sum_act=np.add.reduceat(p.sum_act[order].astype(np.float64), first).astype(np.float32),
        n_active=np.add.reduceat(p.n_active[order], first).astype(np.int32),
        char_start=p.char_start[pick],
        char_end=p.char_end[pick],
    )
