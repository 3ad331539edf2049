"""Text query -> latents -> documents: saedb search as the retrieval and clustering studies
use it.

When ``saedb.query`` (natural-language search) is importable and works on the store, it is
used: ``relevant_latents`` then ``query_weights``. Otherwise the same idea is done here:
the query is embedded with MiniLM, compared (cosine) with the MiniLM embeddings of the
latents' current labels (``current_labels`` joined with ``label_embeddings``), and the
``n`` most similar latents become the query's weights, each weighted by its similarity.
Documents come from the SQL macro ``retrieve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from saedb.labels import EMBEDDING_MODEL

USED: set[str] = set()
"""Which query -> latents paths actually ran (a store too old for saedb.query's SQL macros
falls back to the path here)."""


def backend() -> str:
    """Which query -> latents path is used: ``"saedb.query"`` when importable with
    ``relevant_latents`` and ``query_weights``, else ``"eval (label cosine)"``."""
    try:
        from saedb import query
    except ImportError:
        return "eval (label cosine)"
    ok = hasattr(query, "query_weights") and hasattr(query, "relevant_latents")
    return "saedb.query" if ok else "eval (label cosine)"


class LabelIndex:
    """The label embeddings of one store's SAE, for cosine search."""

    def __init__(self, store: Any, sae_id: int) -> None:
        rows = store.arrow(
            "SELECT c.latent_id, c.label, e.embedding FROM current_labels c "
            "JOIN label_embeddings e ON e.label_id = c.label_id AND e.model = ? "
            "WHERE c.sae_id = ? ORDER BY c.latent_id",
            [EMBEDDING_MODEL, sae_id],
        ).to_pylist()
        if not rows:
            raise RuntimeError("no embedded labels in the store: run saedb label first")
        self.latents = np.array([r["latent_id"] for r in rows], dtype=np.int64)
        self.labels = [r["label"] for r in rows]
        self.matrix = np.array([r["embedding"] for r in rows], dtype=np.float32)

    def top(self, query_vec: np.ndarray, n: int) -> list[tuple[int, float, str]]:
        """``(latent, cosine, label)`` of the ``n`` labels closest to a unit query vector."""
        sims = self.matrix @ query_vec.astype(np.float32)
        order = np.lexsort((self.latents, -sims))[:n]
        return [(int(self.latents[i]), float(sims[i]), self.labels[i]) for i in order]


def query_weights(
    store: Any, sae_id: int, query: str, n: int, *, encoder: Any, index: LabelIndex | None = None
) -> list[tuple[int, float, str]]:
    """``(latent, weight, label)`` for a text query, best first: ``saedb.query``
    (``relevant_latents`` then ``query_weights``: weight = similarity / best similarity) when
    it exists, else the label cosine here (weight = similarity)."""
    if backend() == "saedb.query":
        from saedb import query as q

        try:
            rel = q.relevant_latents(store, query, k=n, sae=sae_id, encoder=encoder)
            rows = q.query_weights(rel).to_pylist()
        except Exception:  # noqa: BLE001 - e.g. a store without the newer SQL macros
            pass
        else:
            USED.add("saedb.query")
            return [(int(r["latent_id"]), float(r["weight"]), r["label"] or "") for r in rows]
    USED.add("eval (label cosine)")
    idx = index or LabelIndex(store, sae_id)
    vec = encoder.encode([query])[0]
    return idx.top(vec, n)


def search(
    store: Any, sae_id: int, weights: Sequence[tuple[int, float, str]], datasets: Sequence[str]
) -> list[int]:
    """doc_ids ranked by ``retrieve`` (all documents where a query latent fired)."""
    w = [{"latent_id": int(lat), "weight": float(wt)} for lat, wt, _ in weights if wt > 0]
    if not w:
        return []
    rows = store.arrow(
        "SELECT doc_id FROM retrieve($w::STRUCT(latent_id INTEGER, weight DOUBLE)[], "
        "sae := $sae::INTEGER, k := $k::INTEGER, datasets := $ds::VARCHAR[])",
        {"w": w, "sae": sae_id, "k": 1_000_000, "ds": list(datasets)},
    )
    return [int(d) for d in rows.column("doc_id").to_pylist()]
