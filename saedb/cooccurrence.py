"""Co-occurrence of latents: NPMI of every pair, materialised in ``latent_cooccurrence``.

Two latents co-occur in a document when both fired there (``max_act > threshold``). Over the
N documents of a set of datasets encoded with an SAE (rows in ``doc_encodings``, documents
where nothing fired included), with ``n_i`` the documents where latent i fired and ``n_both``
those where i and j both fired::

    npmi(i, j) = ln(p(i, j) / (p(i) p(j))) / -ln p(i, j),   p(i) = n_i / N, p(i, j) = n_both / N
               = (ln n_both + ln N - ln n_i - ln n_j) / (ln N - ln n_both)

clamped to [-1, 1] against rounding, and defined as 1 when ``n_both = N`` (0 / 0 there), so no
stored value is NaN or infinite. These are exactly the definitions of the SQL table macros
``npmi`` (every pair, for small stores) and ``npmi_targets`` (a few latents against all).

Why a materialised table, and how it is computed
-------------------------------------------------
Every pair of a real store does not fit a query: on 100k documents x 16k latents (~200 fired
per document) a SQL self-join took 166 s and 16 GB, and the result is nearly all pairs.
:func:`refresh_cooccurrence` instead

1. reads the fired (document, latent) cells of the scope once, as two int32 arrays, inside the
   transaction that will write the result, so the rows written match one snapshot;
2. drops latents that fired in fewer than ``min_count`` documents (a pair cannot fire together
   more often than either of its latents) and builds the binary document x latent matrix X
   (scipy sparse, int32, one column per remaining latent);
3. walks the columns in blocks of ``block_latents``: for the block [a, b) it computes
   ``X[:, a:b].T @ X[:, s:]`` (only columns j >= s, where s <= a is where the right-hand
   matrix was last cut, since each pair is stored once with i < j), keeps the cells with
   j > i and ``n_both >= min_count``, computes NPMI for those and appends them through Arrow
   (int32 columns where the values fit). Beyond X, memory is bounded by one block's product,
   ``block_latents x n_latents`` cells and the temporaries of the pairs kept (the default
   keeps that near 8M cells), and by DuckDB's memory_limit, lowered to
   :data:`WRITE_MEMORY_LIMIT` while the pairs are written: left at its default (80% of RAM),
   DuckDB holds the tens of millions of pairs appended in the transaction (~15 bytes each)
   and its cache of ``doc_latents`` in memory until the commit. Nothing below ``min_count``
   is ever turned into rows. X itself costs ~8 bytes per fired cell (20M cells: ~160 MB),
   twice (CSC for the blocks, CSR for the right-hand side). At 100k documents x 16k latents
   the refresh peaked at 1.8 GB against 2.7 GB with DuckDB's default limit and 4.2 GB for
   scipy's ``X.T @ X`` (bench/analyses.py);
4. replaces the rows of that (SAE, scope) in ``latent_cooccurrence`` and its row in
   ``latent_cooccurrence_scopes`` (the parameters used) in the same transaction: readers see
   the old pairs or the new ones, never a mix, and an interrupted refresh leaves the old ones.

The time is that of the sparse product ``X.T @ X`` restricted to the upper triangle (about
half of it); the block size trades memory for per-block overhead, not for total work.

scipy is needed only here and is imported when a refresh runs (``pip install 'saedb[analysis]'``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa

from saedb.errors import ConfigError, MissingDependencyError, StoreError

if TYPE_CHECKING:
    from saedb.store import Store

ALL_DATASETS = "all"
"""The scope of a refresh over every dataset of the store (``datasets=None``)."""

BLOCK_CELLS = 1 << 23
"""The default block holds about this many (block latent, latent) cells of the product."""

WRITE_MEMORY_LIMIT = "256MB"
"""DuckDB's memory_limit while the pairs are written: beyond it DuckDB flushes the appended
rows to the file and drops cached blocks instead of holding them (tens of millions of pairs
would otherwise hold ~15 bytes each until the commit). The previous limit is restored."""

RESLICE_BLOCKS = 1
"""The columns left of the current block are dropped from the right-hand matrix every this
many blocks (dropping them copies the matrix; keeping them computes pairs for nothing)."""

_BLOCK_VIEW = "_saedb_cooccurrence_block"


def scope_name(datasets: Sequence[str] | str | None) -> str:
    """The ``scope`` value of ``latent_cooccurrence`` for a set of dataset names.

    ``None`` is ``'all'``; otherwise the distinct names sorted and joined with ``','``. A ``,``
    or ``\\`` inside a name is escaped with ``\\``, and a dataset literally named ``all`` is
    written ``\\all``, so different sets always get different scopes.
    """
    names = _dataset_list(datasets)
    if names is None:
        return ALL_DATASETS
    return ",".join(_escape(n) for n in names)


def _escape(name: str) -> str:
    if name == ALL_DATASETS:
        return "\\" + name
    return name.replace("\\", "\\\\").replace(",", "\\,")


def _dataset_list(datasets: Sequence[str] | str | None) -> list[str] | None:
    """None, or the distinct dataset names sorted; a single string is one name."""
    if datasets is None:
        return None
    if isinstance(datasets, str):
        datasets = [datasets]
    names = sorted(set(datasets))
    if not names:
        raise ConfigError("datasets is an empty list; pass None (the default) for every dataset")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"datasets must be dataset names (strings), got {name!r}")
    return names


def default_block_latents(n_latents: int) -> int:
    """The block width that keeps one block's product near :data:`BLOCK_CELLS` cells."""
    return max(1, min(max(n_latents, 1), BLOCK_CELLS // max(n_latents, 1)))


def refresh_cooccurrence(
    store: Store,
    *,
    datasets: Sequence[str] | str | None = None,
    sae: int | str | None = None,
    min_count: int = 5,
    threshold: float = 0.0,
    block_latents: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Recompute the NPMI of every pair of latents for one (SAE, set of datasets).

    Replaces, in one transaction, the rows of ``latent_cooccurrence`` and
    ``latent_cooccurrence_scopes`` whose ``sae_id`` is the SAE's and whose ``scope`` is
    :func:`scope_name` of ``datasets``; running it twice leaves the same rows.

    ``datasets``: dataset names whose documents are counted; None means every dataset (scope
    ``'all'``). An unknown name is a :class:`ConfigError` naming it. ``sae``: SAE id or name,
    None for the store's default. ``min_count``: keep pairs that fired together in at least
    this many documents (below 1 acts as 1). ``threshold``: a latent fired in a document when
    its ``max_act`` is above this, compared as REAL like the SQL macros. ``block_latents``:
    latent columns per block (None: :func:`default_block_latents`); it changes memory and
    speed, never the result. ``progress``: show a progress bar over the blocks on stderr.

    Returns a summary: ``sae_id``, ``scope``, ``datasets`` (sorted names or None), ``n_docs``
    (N), ``n_latents`` (latents that fired in at least ``min_count`` documents: the columns of
    the matrix), ``n_pairs`` (rows written), ``min_count``, ``threshold``, ``block_latents``,
    ``n_blocks`` and ``seconds``.
    """
    try:
        from scipy import sparse
    except ImportError as exc:  # pragma: no cover - exercised in installs without scipy
        raise MissingDependencyError(
            f"co-occurrence needs scipy, which is not installed ({exc}). "
            "Install it with: pip install 'saedb[analysis]'"
        ) from exc
    from tqdm.auto import tqdm

    if isinstance(min_count, bool) or not isinstance(min_count, int | np.integer):
        raise ConfigError(f"min_count must be an integer, got {min_count!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise ConfigError(f"threshold must be a number, got {threshold!r}")
    if not math.isfinite(float(threshold)):
        raise ConfigError(f"threshold must be finite, got {threshold!r}")
    if block_latents is not None and (
        isinstance(block_latents, bool)
        or not isinstance(block_latents, int | np.integer)
        or block_latents < 1
    ):
        raise ConfigError(
            f"block_latents must be a positive integer or None, got {block_latents!r}"
        )
    if store.read_only:
        raise StoreError(
            f"{store.path} is open read-only; open it read-write to refresh co-occurrence"
        )

    started = time.perf_counter()
    min_pair = max(int(min_count), 1)
    sae_id = store.get_sae(sae).sae_id
    names = _dataset_list(datasets)
    scope = scope_name(names)
    con = store.con
    _check_datasets(con, names)

    memory_limit = None  # DuckDB's own, restored after the refresh
    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.Error as exc:
        raise StoreError(f"cannot start the co-occurrence transaction: {exc}") from exc
    try:
        n_docs, rows, latents = _read_fired(con, sae_id, names, float(threshold))
        # DuckDB keeps what it read cached and the pairs appended so far in memory, up to its
        # memory_limit (80% of RAM by default): bound that while the pairs are written
        memory_limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        con.execute(f"SET memory_limit = '{WRITE_MEMORY_LIMIT}'")
        counts = np.bincount(latents) if latents.size else np.zeros(0, dtype=np.int64)
        kept = np.flatnonzero(counts >= min_pair).astype(np.int32)
        n_kept = int(kept.size)
        column_of = np.full(counts.size, -1, dtype=np.int32)
        column_of[kept] = np.arange(n_kept, dtype=np.int32)
        columns = column_of[latents]
        keep = columns >= 0
        del latents
        rows = rows[keep]
        columns = columns[keep]
        del keep
        matrix = sparse.csc_matrix(
            (np.ones(rows.size, dtype=np.int32), (rows, columns)), shape=(n_docs, n_kept)
        )
        del rows, columns
        kept_counts32 = counts[kept].astype(np.int32)  # document counts: < 2**31
        log_counts = np.log(kept_counts32.astype(np.float64))
        log_docs = math.log(n_docs) if n_docs else 0.0

        width = int(block_latents) if block_latents is not None else default_block_latents(n_kept)
        starts = range(0, n_kept, width)
        con.execute(
            "DELETE FROM latent_cooccurrence WHERE sae_id = ? AND scope = ?", [sae_id, scope]
        )
        con.execute(
            "DELETE FROM latent_cooccurrence_scopes WHERE sae_id = ? AND scope = ?",
            [sae_id, scope],
        )
        n_pairs = 0
        rest = matrix.tocsr()  # X[:, rest_start:], shrinking as the blocks move right
        rest_start = 0
        bar = tqdm(
            total=len(starts),
            desc=f"co-occurrence {scope[:30]}",
            unit="block",
            disable=not progress,
        )
        with bar:
            for a in starts:
                b = min(a + width, n_kept)
                if a - rest_start >= RESLICE_BLOCKS * width:
                    rest = rest[:, a - rest_start :]
                    rest_start = a
                # cell (r, c) of the product is the pair (a + r, rest_start + c); only pairs
                # with rest_start + c > a + r are wanted
                product = matrix[:, a:b].T @ rest
                product.sort_indices()
                r = np.repeat(np.arange(b - a, dtype=np.int32), np.diff(product.indptr))
                wanted = product.indices > r + (a - rest_start)
                wanted &= product.data >= min_pair
                i = r[wanted] + a
                del r
                j = product.indices[wanted] + rest_start
                both = product.data[wanted]
                del product, wanted
                # int32 where the values fit (the INSERT widens them to the table's BIGINT)
                block = pa.table(
                    {
                        "latent_i": pa.array(kept[i], pa.int32()),
                        "latent_j": pa.array(kept[j], pa.int32()),
                        "n_i": pa.array(kept_counts32[i], pa.int32()),
                        "n_j": pa.array(kept_counts32[j], pa.int32()),
                        "n_both": pa.array(both, pa.int32()),
                        "npmi": pa.array(
                            _npmi(both, log_counts[i], log_counts[j], n_docs, log_docs),
                            pa.float64(),
                        ),
                    }
                )
                del i, j, both
                if block.num_rows:
                    _append(con, block, sae_id, scope, n_docs)
                n_pairs += block.num_rows
                bar.update(1)
        con.execute(
            """
            INSERT INTO latent_cooccurrence_scopes
                (sae_id, scope, datasets, min_count, threshold, n_docs, n_latents, n_pairs,
                 computed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)
            """,
            [sae_id, scope, names, int(min_count), float(threshold), n_docs, n_kept, n_pairs],
        )
        con.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        if isinstance(exc, duckdb.Error):
            raise StoreError(f"refreshing co-occurrence failed and was rolled back: {exc}") from exc
        raise
    finally:
        if memory_limit is not None:
            _restore_memory_limit(con, memory_limit)
    return {
        "sae_id": sae_id,
        "scope": scope,
        "datasets": names,
        "n_docs": n_docs,
        "n_latents": n_kept,
        "n_pairs": n_pairs,
        "min_count": int(min_count),
        "threshold": float(threshold),
        "block_latents": width,
        "n_blocks": len(starts),
        "seconds": time.perf_counter() - started,
    }


def _restore_memory_limit(con: duckdb.DuckDBPyConnection, shown: str) -> None:
    """Put DuckDB's memory_limit back to what ``current_setting`` showed before. The default
    comes back exactly (RESET); another value is set again from its display form, which
    DuckDB rounds (to about 0.1 GiB)."""
    with contextlib.suppress(duckdb.Error):
        con.execute("RESET memory_limit")
        if con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0] != shown:
            con.execute("SET memory_limit = ?", [shown])


def _check_datasets(con: duckdb.DuckDBPyConnection, names: list[str] | None) -> None:
    if names is None:
        return
    known = {r[0] for r in con.execute("SELECT name FROM datasets").fetchall()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"no dataset named {', '.join(repr(n) for n in unknown)}. "
            f"Datasets in this store: {', '.join(sorted(known)) or 'none'}"
        )


def _read_fired(
    con: duckdb.DuckDBPyConnection, sae_id: int, names: list[str] | None, threshold: float
) -> tuple[int, np.ndarray, np.ndarray]:
    """N, and the fired cells as (document row 0..N-1, latent_id) int32 arrays."""
    docs = """
        SELECT de.doc_id, CAST(row_number() OVER (ORDER BY de.doc_id) - 1 AS INTEGER) AS row
        FROM doc_encodings AS de
        JOIN documents AS d ON d.doc_id = de.doc_id
        JOIN datasets AS ds ON ds.dataset_id = d.dataset_id
        WHERE de.sae_id = $sae
          AND ($names IS NULL OR list_contains(CAST($names AS VARCHAR[]), ds.name))
    """
    params = {"sae": sae_id, "names": names}
    n_docs = int(con.execute(f"SELECT count(*) FROM ({docs})", params).fetchall()[0][0])
    fired = con.sql(
        f"""
        WITH docs AS ({docs})
        SELECT docs.row, dl.latent_id
        FROM doc_latents AS dl
        JOIN docs ON docs.doc_id = dl.doc_id
        WHERE dl.sae_id = $sae AND dl.max_act > CAST($threshold AS REAL)
        """,
        params={**params, "threshold": threshold},
    ).fetchnumpy()
    rows = np.asarray(fired["row"], dtype=np.int32)
    latents = np.asarray(fired["latent_id"], dtype=np.int32)
    if latents.size and latents.min() < 0:
        raise StoreError(
            f"doc_latents holds a negative latent_id ({latents.min()}) for SAE {sae_id}"
        )
    return n_docs, rows, latents


def _npmi(
    both: np.ndarray, log_i: np.ndarray, log_j: np.ndarray, n_docs: int, log_docs: float
) -> np.ndarray:
    """NPMI from counts, as the SQL macros compute it (1 where n_both = N)."""
    log_both = np.log(both.astype(np.float64))
    everywhere = both >= n_docs
    denominator = np.where(everywhere, 1.0, log_docs - log_both)
    value = (log_both + log_docs - log_i - log_j) / denominator
    return np.where(everywhere, 1.0, np.clip(value, -1.0, 1.0))


def _append(
    con: duckdb.DuckDBPyConnection, block: pa.Table, sae_id: int, scope: str, n_docs: int
) -> None:
    con.register(_BLOCK_VIEW, block)
    try:
        con.execute(
            f"""
            INSERT INTO latent_cooccurrence
                (sae_id, scope, latent_i, latent_j, n_i, n_j, n_both, n_docs, npmi, computed_at)
            SELECT ?, ?, latent_i, latent_j, n_i, n_j, n_both, ?, npmi, current_timestamp
            FROM {_BLOCK_VIEW}
            """,
            [sae_id, scope, n_docs],
        )
    finally:
        con.unregister(_BLOCK_VIEW)
