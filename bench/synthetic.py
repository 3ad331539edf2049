"""Synthetic saedb stores for the benchmarks in bench/.

``synthetic_sae`` is the SAE record every synthetic store registers. ``build_bulk_store`` writes
a store of millions of documents in a few bulk SQL statements (``bench/analyses.py``); it
creates the store with ``saedb.open`` and registers the SAE, the datasets and one ingest run
with the Store methods, so the schema and the catalog are saedb's own, and fills
``documents``, ``doc_latents`` and ``doc_encodings`` with ``INSERT ... SELECT`` over
``range()``, the randomness coming from DuckDB's ``hash()`` of (document, slot, seed). That is
what makes 200M doc_latents rows possible: ``Store.write_batch`` (which ``bench/layout.py``
times) commits 256 documents at a time.

The shape: the latents' popularity is Zipf-like (the latent of popularity rank r, 0-based, is
drawn with weight 1 / (r + 10) ** zipf, ranks scattered over the id range by a fixed
permutation); each document draws about ``slots`` latents (uniformly between half and 1.5
times that, duplicates merged), the number of slots chosen so that on average ``per_doc``
distinct latents fire; 3% of the draws of a document of dataset k instead pick one of 64
latents boosted in that dataset, so ``diff`` has something to find. ``max_act`` is
exponential (mean 2) plus 0.01, always positive. ``doc_latents`` is written in the order
``Store.optimize()`` leaves it, (sae_id, latent_id, doc_id): the latent-clustered layout
docs/design.md recommends after a large ingest, and ``latent_counts`` is recomputed, as
``optimize`` does.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

import saedb
from saedb.store import SaeRecord

BOOST_SHARE = 0.03
"""Share of a document's draws that go to its dataset's boosted latents."""

BOOSTED = 64
"""Latents boosted per dataset."""

TEXT = (
    "the quick brown fox jumps over the lazy dog while a synthetic corpus of documents "
    "pretends to be text for the sparse autoencoder benchmark of saedb, "
)


def synthetic_sae(d_sae: int, config: dict) -> SaeRecord:
    """The SAE record of a synthetic store (no weights behind it)."""
    return SaeRecord(
        name="bench",
        reader_model="synthetic",
        reader_revision=None,
        hook_name="blocks.0.hook_resid_post",
        layer=0,
        architecture="topk",
        d_in=512,
        d_sae=d_sae,
        weights_sha256="0" * 64,
        path="/synthetic",
        config=config,
    )


def rank_probabilities(latents: int, zipf: float) -> np.ndarray:
    """The probability that one draw picks each popularity rank (the continuous inverse CDF
    the SQL uses, floored)."""
    edges = _cdf(np.arange(latents + 1, dtype=np.float64), latents, zipf)
    return np.diff(edges)


def _cdf(x: np.ndarray, latents: int, zipf: float) -> np.ndarray:
    if abs(zipf - 1.0) < 1e-9:
        return np.log((x + 10.0) / 10.0) / math.log((latents + 10.0) / 10.0)
    e = 1.0 - zipf
    return ((x + 10.0) ** e - 10.0**e) / ((latents + 10.0) ** e - 10.0**e)


def _rank_sql(u: str, latents: int, zipf: float) -> str:
    """SQL for the popularity rank of uniform ``u`` in [0, 1): the inverse of ``_cdf``."""
    if abs(zipf - 1.0) < 1e-9:
        x = f"10.0 * exp(({u}) * {math.log((latents + 10.0) / 10.0)!r}) - 10.0"
    else:
        e = 1.0 - zipf
        lo, hi = 10.0**e, (latents + 10.0) ** e
        x = f"pow({lo!r} + ({u}) * {hi - lo!r}, {1.0 / e!r}) - 10.0"
    return f"least({latents - 1}, greatest(0, CAST(floor({x}) AS BIGINT)))"


def slots_for(per_doc: float, latents: int, zipf: float) -> float:
    """Mean draws per document for ``per_doc`` distinct latents on average (duplicates merge)."""
    p = rank_probabilities(latents, zipf) * (1.0 - BOOST_SHARE)

    def distinct(m: float) -> float:
        # draws per document are uniform on [m/2, 3m/2); average over a few points of that
        ns = m * (0.5 + (np.arange(8) + 0.5) / 8)
        return float(np.mean([np.sum(1.0 - (1.0 - p) ** n) for n in ns])) + BOOST_SHARE * m

    lo, hi = per_doc, per_doc * 4.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if distinct(mid) < per_doc else (lo, mid)
    return (lo + hi) / 2


def _coprime(n: int, start: int) -> int:
    k = start
    while math.gcd(k, n) != 1:
        k += 1
    return k


def build_bulk_store(
    path: Path,
    *,
    docs: int,
    per_doc: float,
    latents: int,
    datasets: int = 4,
    zipf: float = 1.0,
    seed: int = 0,
    memory_limit: str | None = None,
) -> dict:
    """Create the store at ``path`` (which must not exist) and return what was built."""
    started = time.perf_counter()
    slots = slots_for(per_doc, latents, zipf)
    mult = _coprime(latents, 7919)  # popularity rank -> latent id, a bijection mod latents
    offset = (seed * 104729 + 12345) % latents
    boost_mult = _coprime(latents, 40503)

    def uniform(*args: str) -> str:
        return f"((hash({', '.join(args)}, {seed}) >> 11) * pow(2, -53))"

    rank = _rank_sql(uniform("doc_id", "s", "1"), latents, zipf)
    zipf_latent = f"(({rank}) * {mult} + {offset}) % {latents}"
    boosted = (
        f"(((dataset_id - 1) * {BOOSTED} + CAST(floor({uniform('doc_id', 's', '2')} * {BOOSTED})"
        f" AS BIGINT)) * {boost_mult} + 77) % {latents}"
    )
    draw = (
        f"CAST(CASE WHEN {uniform('doc_id', 's', '3')} < {BOOST_SHARE} THEN {boosted} "
        f"ELSE {zipf_latent} END AS INTEGER)"
    )
    text_len = len(TEXT)

    with saedb.open(path) as store:
        con = store.con
        con.execute("SET enable_progress_bar = false")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute("SET temp_directory = ?", [str(path.parent / f"{path.name}.tmp")])
        sae_id = store.register_sae(
            synthetic_sae(latents, {"bench": "synthetic", "zipf": zipf, "seed": seed})
        )
        for k in range(datasets):
            store.dataset_id(f"d{k + 1}", create=True)
        run_id = store.start_run({"bench": "synthetic", "docs": docs, "per_doc": per_doc})
        shape = {"n": docs, "k": datasets}
        # doc_id 1..docs; dataset d1 holds the first quarter, d2 the next, ...
        con.execute(
            f"""
            INSERT INTO documents (doc_id, dataset_id, external_id, text, text_sha256,
                                   n_tokens, metadata, run_id)
            SELECT doc_id, dataset_id, 'd' || dataset_id || '-' || doc_id, text, sha256(text),
                   {text_len // 4}, NULL, $run
            FROM (
                SELECT doc_id, dataset_id,
                       'doc ' || doc_id || ': ' || substr(
                           repeat('{TEXT}', 2),
                           1 + CAST(hash(doc_id, {seed}, 4) % {text_len} AS INTEGER),
                           {text_len}) AS text
                FROM (SELECT range + 1 AS doc_id,
                             CAST(1 + range * $k // $n AS INTEGER) AS dataset_id
                      FROM range($n))
            )
            """,
            {**shape, "run": run_id},
        )
        con.execute(
            f"""
            INSERT INTO doc_latents
            SELECT doc_id, $sae, latent_id,
                   CAST(0.01 - 2.0 * ln(1.0 - {uniform("doc_id", "latent_id", "5")}) AS REAL)
                       AS max_act,
                   CAST((0.01 - 2.0 * ln(1.0 - {uniform("doc_id", "latent_id", "5")}))
                        * (1.0 + (n_active - 1) * {uniform("doc_id", "latent_id", "6")})
                        AS REAL) AS sum_act,
                   n_active,
                   char_start AS max_char_start,
                   char_start + 1 + CAST(hash(doc_id, latent_id, {seed}, 8) % 7 AS INTEGER)
                       AS max_char_end
            FROM (
                SELECT doc_id, latent_id,
                       1 + CAST(floor(ln(1.0 - {uniform("doc_id", "latent_id", "7")})
                                      / ln(0.7)) AS INTEGER) AS n_active,
                       CAST(hash(doc_id, latent_id, {seed}, 9) % {text_len - 8} AS INTEGER)
                           AS char_start
                FROM (
                    SELECT doc_id, unnest(list_distinct(list_transform(
                        range(CAST(floor({slots!r} * (0.5 + {uniform("doc_id", "0")})) AS BIGINT)),
                        lambda s: {draw}))) AS latent_id
                    FROM (SELECT range + 1 AS doc_id,
                                 CAST(1 + range * $k // $n AS INTEGER) AS dataset_id
                          FROM range($n))
                )
            )
            ORDER BY latent_id, doc_id
            """,
            {**shape, "sae": sae_id},
        )
        con.execute(
            """
            INSERT INTO doc_encodings (doc_id, sae_id, run_id, n_latents)
            SELECT d.doc_id, $sae, $run, CAST(coalesce(c.n, 0) AS INTEGER)
            FROM documents AS d
            LEFT JOIN (SELECT doc_id, count(*) AS n FROM doc_latents GROUP BY doc_id) AS c
                USING (doc_id)
            ORDER BY d.doc_id
            """,
            {"sae": sae_id, "run": run_id},
        )
        con.execute(
            "UPDATE ingest_runs SET n_docs = $n, n_tokens = (SELECT sum(n_tokens) FROM documents)"
            " WHERE run_id = $run",
            {"n": docs, "run": run_id},
        )
        store.finish_run(run_id, "done")
        # the bulk INSERTs bypass write_batch, which keeps latent_counts in step: recompute it
        # (what saedb optimize does after a large ingest)
        store.refresh_latent_counts()
        con.execute("CHECKPOINT")
        n_rows = con.execute("SELECT count(*) FROM doc_latents").fetchall()[0][0]
        n_fired = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT latent_id FROM doc_latents)"
        ).fetchall()[0][0]
    return {
        "docs": docs,
        "rows": int(n_rows),
        "latents_fired": int(n_fired),
        "slots": slots,
        "seconds": time.perf_counter() - started,
        "bytes": path.stat().st_size,
    }
