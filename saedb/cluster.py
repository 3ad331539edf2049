"""Targeted clustering: group documents by which of a chosen few latents fired in them.

``cluster(store, [12, 40, 977], k=4)`` reads the binarized document x latent vectors from the
``doc_vectors`` macro, clusters them with scikit-learn's spectral clustering, stores the run in
``cluster_runs`` and every document's cluster in ``cluster_assignments`` (one transaction), and
describes each cluster by the latents most over-represented in it compared with the rest.

How the vectors are clustered:

- **Documents where none of the latents fired** have no vector to compare; they all go to
  cluster ``-1`` (stored like the others, never described, not counted in ``n_clusters``).
- **Distinct activation patterns, not documents, are the graph's nodes.** With a handful of
  latents most documents share their exact pattern, so the documents are grouped by pattern
  first: the graph stays small whatever the corpus size, and documents with the same pattern
  always end up in the same cluster.
- **Affinity** between two patterns is their Jaccard similarity (shared latents over latents in
  either), the natural similarity of binary vectors, times both patterns' document counts, so
  a pattern seen in 500 documents weighs 500 times one seen once. Patterns with no latent in
  common are not connected. Above ``_EXACT_PATTERNS`` distinct patterns, each keeps only its
  nearest neighbours (cosine distance), a sparse k-nearest-neighbour graph.
- **Clustering** is ``sklearn.cluster.SpectralClustering(affinity="precomputed",
  assign_labels="cluster_qr")`` (deterministic for a given ``seed``). With no more distinct
  patterns than ``k``, each pattern is its own cluster.
- **Cluster numbers** go by size: cluster 0 is the largest (ties: the one holding the smallest
  ``doc_id``).

scikit-learn and scipy are imported inside :func:`cluster`, so saedb imports without them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from saedb.errors import ConfigError, MissingDependencyError, StoreError

if TYPE_CHECKING:
    from saedb.store import Store

NO_LATENT = -1
"""The cluster of the documents where none of the chosen latents fired."""

_EXACT_PATTERNS = 5000
"""Up to this many distinct patterns the affinity graph is exact; above, a k-NN graph."""
_NEIGHBOURS = 30


@dataclass(frozen=True)
class ClusterResult:
    """One stored clustering run."""

    cluster_run_id: int
    """The run's id in ``cluster_runs`` (and ``cluster_assignments``)."""
    sae_id: int
    """The SAE whose latents were clustered on."""
    latents: tuple[int, ...]
    """The latents, in the order given (duplicates dropped)."""
    assignments: pa.Table
    """One row per document: ``doc_id``, ``dataset``, ``cluster`` (-1: no latent fired)."""
    descriptions: pa.Table
    """One row per (cluster, latent), clusters -1 excluded: ``cluster``, ``rank``, ``latent_id``,
    ``n_in`` (documents of the cluster where it fired), ``freq_in`` (share of the cluster),
    ``freq_out`` (share of every other document, cluster -1 included), ``difference``
    (``freq_in - freq_out``); by cluster, then difference, largest first."""
    axis_latents: pa.Table | None = None
    """With a clustering axis (``Store.cluster(axis=...)``): the latents chosen for it, with
    ``label``, ``similarity`` and ``weight`` (see ``saedb.query``); None otherwise."""

    @property
    def n_clusters(self) -> int:
        """Clusters found, cluster -1 not counted."""
        return len({c for c in self.assignments.column("cluster").to_pylist() if c >= 0})

    def summary(self, top: int = 3) -> pa.Table:
        """One row per cluster (-1 last): ``cluster``, ``n_docs``, ``share`` of all documents,
        ``top_latents`` (up to ``top`` latents over-represented in it, most first) and
        ``description`` (``latent: freq_in vs freq_out`` for each)."""
        labels = np.asarray(self.assignments.column("cluster").to_numpy(), dtype=np.int64)
        total = max(len(labels), 1)
        desc = self.descriptions.to_pylist()
        rows = []
        ids = sorted({int(c) for c in labels}, key=lambda c: (c < 0, c))
        for c in ids:
            best = [d for d in desc if d["cluster"] == c and d["difference"] > 0][:top]
            n = int((labels == c).sum())
            rows.append(
                {
                    "cluster": c,
                    "n_docs": n,
                    "share": n / total,
                    "top_latents": [d["latent_id"] for d in best],
                    "description": "no listed latent fired"
                    if c == NO_LATENT
                    else "; ".join(
                        f"{d['latent_id']}: {d['freq_in']:.0%} vs {d['freq_out']:.0%}" for d in best
                    ),
                }
            )
        schema = pa.schema(
            [
                ("cluster", pa.int32()),
                ("n_docs", pa.int64()),
                ("share", pa.float64()),
                ("top_latents", pa.list_(pa.int32())),
                ("description", pa.string()),
            ]
        )
        return pa.Table.from_pylist(rows, schema=schema)


def cluster(
    store: Store,
    latents: Sequence[int],
    *,
    k: int = 5,
    datasets: Sequence[str] | None = None,
    sae: int | str | None = None,
    threshold: float = 0.0,
    seed: int = 0,
) -> ClusterResult:
    """Cluster the documents on which of ``latents`` fired in them and store the run.

    ``datasets`` limits the documents to those datasets (names; None: all), ``sae`` is the SAE
    (id or name; None: the store's default), ``threshold`` is the ``max_act`` a latent must pass
    to count as fired. Raises :class:`ConfigError` for bad arguments and :class:`StoreError`
    when the store is read-only or holds no documents encoded with the SAE in scope.
    """
    try:
        from scipy import sparse
        from sklearn.cluster import SpectralClustering
    except ImportError as exc:  # pragma: no cover - both are dependencies of the analyses
        raise MissingDependencyError(
            f"clustering needs scikit-learn and scipy ({exc}); "
            "install them with: pip install scikit-learn scipy"
        ) from exc

    chosen = _check_latents(latents)
    if k < 2:
        raise ConfigError(f"k must be at least 2, got {k}")
    if store.read_only:
        raise StoreError(f"{store.path} is open read-only; clustering stores its result")
    sae_id = _sae_id(store, sae)
    names = list(datasets) if datasets is not None else None
    vectors = store.arrow(
        "SELECT doc_id, dataset, active FROM doc_vectors($latents::INTEGER[], sae := $sae, "
        "threshold := $threshold, datasets := $datasets::VARCHAR[]) ORDER BY doc_id",
        {"latents": chosen, "sae": sae_id, "threshold": threshold, "datasets": names},
    )
    if vectors.num_rows == 0:
        scope = f" in {', '.join(names)}" if names else ""
        raise StoreError(f"no documents encoded with SAE {sae_id}{scope}: nothing to cluster")

    doc_ids = np.asarray(vectors.column("doc_id").to_numpy(), dtype=np.int64)
    active = vectors.column("active").to_pylist()
    column = {latent: j for j, latent in enumerate(chosen)}

    # Distinct patterns (in order of first appearance) and each document's pattern.
    pattern_of: dict[tuple[int, ...], int] = {}
    doc_pattern = np.full(len(active), -1, dtype=np.int64)
    for i, fired in enumerate(active):
        if fired:
            doc_pattern[i] = pattern_of.setdefault(tuple(fired), len(pattern_of))
    patterns = list(pattern_of)
    m = len(patterns)
    counts = np.bincount(doc_pattern[doc_pattern >= 0], minlength=m).astype(np.float64)

    if m == 0:
        pattern_label = np.zeros(0, dtype=np.int64)
    elif m <= k:
        pattern_label = np.arange(m)
    else:
        rows = np.repeat(np.arange(m), [len(p) for p in patterns])
        cols = np.fromiter((column[x] for p in patterns for x in p), dtype=np.int64)
        x = sparse.csr_matrix(
            (np.ones(len(cols)), (rows, cols)), shape=(m, len(chosen)), dtype=np.float64
        )
        affinity = _affinity(x, counts, sparse)
        model = SpectralClustering(
            n_clusters=k, affinity="precomputed", assign_labels="cluster_qr", random_state=seed
        )
        with warnings.catch_warnings():
            # Patterns sharing no latent are unconnected by design: expected, not a problem.
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            pattern_label = model.fit_predict(affinity).astype(np.int64)

    labels = np.full(len(active), NO_LATENT, dtype=np.int64)
    has = doc_pattern >= 0
    labels[has] = pattern_label[doc_pattern[has]]
    labels = _by_size(labels)

    x_docs = _doc_matrix(active, column, len(chosen), sparse)
    descriptions = _describe(labels, x_docs, chosen)
    assignments = pa.table(
        {
            "doc_id": pa.array(doc_ids, pa.int64()),
            "dataset": vectors.column("dataset"),
            "cluster": pa.array(labels, pa.int32()),
        }
    )
    config = {
        "latents": chosen,
        "k": k,
        "datasets": names,
        "threshold": threshold,
        "seed": seed,
        "method": "spectral clustering of distinct activation patterns, Jaccard affinity "
        "weighted by document counts",
        "n_docs": len(active),
        "n_no_latent": int((labels == NO_LATENT).sum()),
        "n_patterns": m,
    }
    n_clusters = len({int(c) for c in labels if c >= 0})
    run_id = _write(store, sae_id, config, n_clusters, assignments)
    return ClusterResult(run_id, sae_id, tuple(chosen), assignments, descriptions)


def _check_latents(latents: Sequence[int]) -> list[int]:
    chosen: list[int] = []
    for latent in latents:
        if isinstance(latent, bool) or not isinstance(latent, int | np.integer) or latent < 0:
            raise ConfigError(f"latent ids must be non-negative integers, got {latent!r}")
        if int(latent) not in chosen:
            chosen.append(int(latent))
    if not chosen:
        raise ConfigError("no latents given: clustering needs at least one latent id")
    return chosen


def _sae_id(store: Store, sae: int | str | None) -> int:
    if isinstance(sae, str):
        sae_id = store.get_sae(sae).sae_id
        assert sae_id is not None
        return sae_id
    row = store.arrow("SELECT resolve_sae($sae::INTEGER) AS sae_id", {"sae": sae})
    return int(row.column("sae_id")[0].as_py())


def _affinity(x: Any, counts: np.ndarray, sparse: Any) -> Any:
    """Count-weighted Jaccard affinity between distinct patterns (rows of ``x``)."""
    m = x.shape[0]
    sizes = np.asarray(x.sum(axis=1)).ravel()
    if m <= _EXACT_PATTERNS:
        inter = (x @ x.T).tocoo()
        i, j, shared = inter.row, inter.col, inter.data
        sim = shared / (sizes[i] + sizes[j] - shared)
    else:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=min(_NEIGHBOURS, m - 1), metric="cosine")
        dist, idx = nn.fit(x).kneighbors(x)
        i = np.repeat(np.arange(m), idx.shape[1])
        j = idx.ravel()
        sim = 1.0 - dist.ravel()
    keep = (i != j) & (sim > 0)
    weights = sim[keep] * counts[i[keep]] * counts[j[keep]]
    graph = sparse.csr_matrix((weights, (i[keep], j[keep])), shape=(m, m))
    return graph.maximum(graph.T)  # symmetric (the k-NN graph is not)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters >= 0 by size, largest first (ties: smallest first document)."""
    found = sorted(
        {int(c) for c in labels if c >= 0},
        key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))),
    )
    out = labels.copy()
    for new, old in enumerate(found):
        out[labels == old] = new
    return out


def _doc_matrix(active: list[list[int]], column: dict[int, int], n_latents: int, sparse: Any):
    """The binarized document x latent matrix (CSR)."""
    rows = np.repeat(np.arange(len(active)), [len(a) for a in active])
    cols = np.fromiter((column[x] for a in active for x in a), dtype=np.int64)
    return sparse.csr_matrix(
        (np.ones(len(cols), dtype=np.int64), (rows, cols)), shape=(len(active), n_latents)
    )


def _describe(labels: np.ndarray, x: Any, latents: list[int]) -> pa.Table:
    """Per cluster and latent: frequency in the cluster vs in every other document."""
    total = np.asarray(x.sum(axis=0)).ravel()
    n = len(labels)
    rows = []
    for c in sorted({int(c) for c in labels if c >= 0}):
        inside = labels == c
        size = int(inside.sum())
        n_in = np.asarray(x[inside].sum(axis=0)).ravel()
        freq_in = n_in / size
        freq_out = (total - n_in) / (n - size) if n > size else np.zeros(len(latents))
        diff = freq_in - freq_out
        order = sorted(range(len(latents)), key=lambda j: (-diff[j], latents[j]))
        for rank, j in enumerate(order, start=1):
            rows.append(
                {
                    "cluster": c,
                    "rank": rank,
                    "latent_id": latents[j],
                    "n_in": int(n_in[j]),
                    "freq_in": float(freq_in[j]),
                    "freq_out": float(freq_out[j]),
                    "difference": float(diff[j]),
                }
            )
    return pa.Table.from_pylist(rows, schema=_DESCRIPTION_SCHEMA)


_DESCRIPTION_SCHEMA = pa.schema(
    [
        ("cluster", pa.int32()),
        ("rank", pa.int32()),
        ("latent_id", pa.int32()),
        ("n_in", pa.int64()),
        ("freq_in", pa.float64()),
        ("freq_out", pa.float64()),
        ("difference", pa.float64()),
    ]
)


def _write(
    store: Store, sae_id: int, config: dict[str, Any], n_clusters: int, assignments: pa.Table
) -> int:
    """The run and its assignments, in one transaction; returns the run's id."""
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        row = con.execute("SELECT coalesce(max(cluster_run_id), 0) + 1 FROM cluster_runs")
        run_id = int(row.fetchone()[0])  # type: ignore[index]
        con.execute(
            "INSERT INTO cluster_runs (cluster_run_id, sae_id, config, n_clusters) "
            "VALUES (?, ?, ?, ?)",
            [run_id, sae_id, json.dumps(config), n_clusters],
        )
        rows = assignments.select(["doc_id", "cluster"])
        con.register("saedb_cluster_incoming", rows)
        try:
            con.execute(
                "INSERT INTO cluster_assignments (cluster_run_id, doc_id, cluster) "
                "SELECT ?, doc_id, cluster FROM saedb_cluster_incoming",
                [run_id],
            )
        finally:
            con.unregister("saedb_cluster_incoming")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return run_id
