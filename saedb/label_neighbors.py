"""Each labelled latent's nearest labels, materialised in ``label_neighbors``.

For one SAE and one embedding model, :func:`refresh_label_neighbors` reads the embeddings of
the current labels (the view ``current_label_embeddings``), computes every latent's ``k`` most
similar other latents by cosine similarity with numpy, in blocks of ``BLOCK`` latents so that
memory stays at ``BLOCK x n`` floats whatever the number of labels, and replaces that
(SAE, model)'s rows of ``label_neighbors`` in one transaction. The view
``latent_label_neighbors`` shows them with today's labels and says when a row is stale.
Plain SQL could compute the same (``label_similarity`` over all pairs), but a self-join of
16,384 labels is 268M list comparisons; numpy does it as a blocked matrix product.

``saedb label`` calls :func:`refresh_after_labelling` at its end.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from saedb.errors import ConfigError, StoreError
from saedb.query import resolve_sae_id

if TYPE_CHECKING:
    from saedb.store import Store

K = 20
"""Neighbours kept per latent by default."""
BLOCK = 1024
"""Latents whose similarities to all others are computed at once."""

_SCHEMA = pa.schema(
    [
        ("latent_id", pa.int32()),
        ("rank", pa.int32()),
        ("neighbor_latent", pa.int32()),
        ("similarity", pa.float64()),
        ("label_id", pa.int64()),
        ("neighbor_label_id", pa.int64()),
    ]
)


def embedding_models(store: Store, sae: int | str | None = None) -> list[str]:
    """The embedding models that embedded at least one current label of the SAE."""
    rows = store.arrow(
        "SELECT DISTINCT embedding_model FROM current_label_embeddings "
        "WHERE sae_id = $sae ORDER BY embedding_model",
        {"sae": resolve_sae_id(store, sae)},
    )
    return [str(m) for m in rows.column("embedding_model").to_pylist()]


def nearest(vectors: np.ndarray, k: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``vectors``, the indices and cosine similarities of its ``k`` most
    similar other rows (most similar first, ties by index); shapes ``(n, min(k, n - 1))``."""
    n = vectors.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0))
    x = vectors.astype(np.float32, copy=True)  # float32: half the memory and time
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise StoreError("a label embedding is a zero vector; its similarity is undefined")
    x /= norms
    idx = np.empty((n, kk), np.int64)
    sim = np.empty((n, kk), np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(stop - start)
        s = x[start:stop] @ x.T
        s[rows, np.arange(start, stop)] = -np.inf  # a latent is not its own neighbour
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -vals), axis=1)  # most similar first, ties by index
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(vals, order, axis=1)
        # where the k-th similarity is tied with columns argpartition left out, the choice
        # among them must go by index too: redo those rows exactly
        kth = vals.min(axis=1, keepdims=True)
        unsure = (s == kth).sum(axis=1) != (vals == kth).sum(axis=1)
        for r in np.flatnonzero(unsure):
            ranked = np.lexsort((np.arange(n), -s[r]))[:kk]
            idx[start + r] = ranked
            sim[start + r] = s[r, ranked]
    return idx, sim


def refresh_label_neighbors(
    store: Store,
    *,
    sae: int | str | None = None,
    model: str | None = None,
    k: int = K,
) -> list[dict[str, Any]]:
    """Recompute ``label_neighbors`` for the SAE and ``model`` (None: every embedding model
    of its current labels); one transaction per model. Returns per model what was done:
    ``model``, ``n_latents`` (labelled latents with an embedding), ``k``, ``seconds``."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if store.read_only:
        raise StoreError(f"{store.path} is open read-only; refreshing label_neighbors writes")
    sae_id = resolve_sae_id(store, sae)
    models = [model] if model is not None else embedding_models(store, sae_id)
    done = []
    for m in models:
        t0 = time.perf_counter()
        rows = store.arrow(
            "SELECT latent_id, label_id, embedding FROM current_label_embeddings "
            "WHERE sae_id = $sae AND embedding_model = $model ORDER BY latent_id",
            {"sae": sae_id, "model": m},
        )
        latents = np.asarray(rows.column("latent_id").to_numpy(), np.int64)
        label_ids = np.asarray(rows.column("label_id").to_numpy(), np.int64)
        n = len(latents)
        if n:
            flat = rows.column("embedding").combine_chunks()
            lengths = set(flat.value_lengths().to_pylist())
            if len(lengths) != 1:
                raise StoreError(
                    f"label embeddings of model {m!r} (SAE {sae_id}) have different lengths "
                    f"{sorted(lengths)}"
                )
            vectors = np.asarray(flat.flatten().to_numpy(), np.float32).reshape(n, -1)
            idx, sim = nearest(vectors, k)
        else:
            idx, sim = np.zeros((0, 0), np.int64), np.zeros((0, 0))
        kk = idx.shape[1]
        table = pa.Table.from_arrays(
            [
                pa.array(np.repeat(latents, kk), pa.int32()),
                pa.array(np.tile(np.arange(1, kk + 1), n), pa.int32()),
                pa.array(latents[idx].ravel() if kk else [], pa.int32()),
                pa.array(sim.ravel().astype(np.float64), pa.float64()),
                pa.array(np.repeat(label_ids, kk), pa.int64()),
                pa.array(label_ids[idx].ravel() if kk else [], pa.int64()),
            ],
            schema=_SCHEMA,
        )
        _replace(store, sae_id, m, k, n, table)
        done.append({"model": m, "n_latents": n, "k": kk, "seconds": time.perf_counter() - t0})
    return done


def _replace(store: Store, sae_id: int, model: str, k: int, n: int, table: pa.Table) -> None:
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM label_neighbors WHERE sae_id = ? AND model = ?", [sae_id, model])
        con.execute(
            "DELETE FROM label_neighbor_runs WHERE sae_id = ? AND model = ?", [sae_id, model]
        )
        con.register("_new_neighbors", table)
        con.execute(
            "INSERT INTO label_neighbors (sae_id, model, latent_id, rank, neighbor_latent, "
            "similarity, label_id, neighbor_label_id) SELECT ?, ?, latent_id, rank, "
            "neighbor_latent, similarity, label_id, neighbor_label_id FROM _new_neighbors",
            [sae_id, model],
        )
        con.execute(
            "INSERT INTO label_neighbor_runs (sae_id, model, k, n_latents) VALUES (?, ?, ?, ?)",
            [sae_id, model, k, n],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_new_neighbors")


def refresh_after_labelling(store: Store, sae: int | str | None = None) -> None:
    """What ``saedb label`` runs at its end: refresh every model's neighbours, say so."""
    for done in refresh_label_neighbors(store, sae=sae):
        print(
            f"nearest labels: top {done['k']} of {done['n_latents']} labelled latents by "
            f"{done['model']} in {done['seconds']:.1f}s (view latent_label_neighbors)"
        )
