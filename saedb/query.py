"""Natural-language queries: from a text to the latents whose labels mean the same, to weights.

A query is embedded with the same sentence encoder as the labels (all-MiniLM-L6-v2, see
:mod:`saedb.labels`) and compared with every current label's embedding by cosine similarity
(the SQL macros ``latents_for_query`` / ``latents_for_embedding``). What saedb embeds it
keeps in ``query_embeddings``, so a BI tool can run ``latents_for_query('...')`` on any query
a saedb process has seen, with no encoder of its own.

- :func:`register_udfs` gives a saedb connection the scalar UDF ``embed_query(text)`` (a
  ``FLOAT[]``); MiniLM is loaded on its first call, once per process, and torch is imported
  only then. ``saedb.open`` registers it on every store it opens.
- :func:`relevant_latents` embeds a query (caching it when the store is writable) and returns
  the latents ranked by label similarity; :func:`rerank` asks an LLM (``saedb.llm``) to keep
  only the relevant ones; :func:`query_weights` turns either into retrieval weights.

**Weighting** (:func:`query_weights`): of the ranked latents, those with a positive score are
kept (at most ``top``, and at least ``min_similarity`` similar when given); each latent's
weight is its score divided by the best score, so the best-matching latent weighs 1 and a
latent half as similar weighs 0.5. The score is the label similarity, or the LLM's relevance
after :func:`rerank`. A document's retrieval score is then ``sum(weight * max_act)``
(``retrieve``): documents where the best-matching latents fire strongly come first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from saedb.errors import ConfigError, StoreError
from saedb.labels import EMBEDDING_MODEL

if TYPE_CHECKING:
    import duckdb

    from saedb.llm import LLMConfig
    from saedb.store import Store

SEARCH_LATENTS = 5
"""Latents a text search uses by default (``--latents-k``)."""
AXIS_LATENTS = 10
"""Latents a clustering axis uses by default."""

_ENCODER: Any = None


def normalise(query: str) -> str:
    """The query as it is cached and looked up: whitespace collapsed to one space, trimmed."""
    if not isinstance(query, str):
        raise ConfigError(f"a query must be text, got {type(query).__name__}")
    text = re.sub(r"\s+", " ", query).strip()
    if not text:
        raise ConfigError("the query is empty: give a few words, e.g. 'tone of voice'")
    return text


def default_encoder() -> Any:
    """The process's MiniLM encoder, loaded on first use (imports torch then)."""
    global _ENCODER
    if _ENCODER is None:
        from saedb.labels import MiniLM

        _ENCODER = MiniLM()
    return _ENCODER


def register_udfs(con: duckdb.DuckDBPyConnection) -> None:
    """Register ``embed_query(text VARCHAR) -> FLOAT[]`` (MiniLM, unit length) on ``con``.

    The model loads on the first call, not here. NULL text gives NULL.
    """
    import duckdb

    def embed_query(texts: pa.Array) -> pa.Array:
        values = texts.to_pylist()
        todo = sorted({normalise(t) for t in values if t is not None})
        vectors = dict(zip(todo, default_encoder().encode(todo), strict=True)) if todo else {}
        out = [None if t is None else vectors[normalise(t)].tolist() for t in values]
        return pa.array(out, pa.list_(pa.float32()))

    con.create_function(
        "embed_query",
        embed_query,
        [duckdb.sqltypes.VARCHAR],
        duckdb.list_type(duckdb.sqltypes.FLOAT),
        type="arrow",
        null_handling="special",
    )


def resolve_sae_id(store: Store, sae: int | str | None) -> int:
    """The SAE's id: a name is looked up, an id or None (the default) resolved in SQL."""
    if isinstance(sae, str) and not sae.isdigit():
        found = store.get_sae(sae).sae_id
        assert found is not None
        return int(found)
    row = store.arrow("SELECT resolve_sae($sae::INTEGER) AS s", {"sae": sae})
    return int(row.column("s")[0].as_py())


def require_label_embeddings(store: Store, sae_id: int, model: str = EMBEDDING_MODEL) -> int:
    """How many current labels of the SAE have an embedding of ``model``; an error if none."""
    n = (
        store.arrow(
            "SELECT count(*) AS n FROM current_label_embeddings "
            "WHERE sae_id = $sae AND embedding_model = $model",
            {"sae": sae_id, "model": model},
        )
        .column("n")[0]
        .as_py()
    )
    if not n:
        labelled = (
            store.arrow(
                "SELECT count(*) AS n FROM current_labels WHERE sae_id = $sae", {"sae": sae_id}
            )
            .column("n")[0]
            .as_py()
        )
        what = (
            f"{labelled} latents have labels but none has an embedding of {model}"
            if labelled
            else "no latent has a label"
        )
        raise StoreError(
            f"{store.path}: a text query is matched against label embeddings, and for SAE "
            f"{sae_id} {what}: run saedb label {store.path} --all-firing first "
            "(or search by latent ids, e.g. 12,40:2.0)"
        )
    return int(n)


def embed_queries(
    store: Store, queries: Sequence[str], *, model: str = EMBEDDING_MODEL, encoder: Any = None
) -> dict[str, list[float]]:
    """Normalised query -> embedding, from ``query_embeddings`` or embedded now.

    New embeddings are written to ``query_embeddings`` when the store is writable (one
    transaction). Only MiniLM (``EMBEDDING_MODEL``) can embed here, unless ``encoder`` (an
    object with ``encode(texts)``) is given for ``model``: for labels embedded from an
    OpenAI-compatible endpoint, :class:`saedb.llm.EndpointEncoder` of the same model.
    """
    texts = list(dict.fromkeys(normalise(q) for q in queries))
    cached = store.arrow(
        "SELECT query, embedding FROM query_embeddings "
        "WHERE model = $model AND list_contains($q::VARCHAR[], query)",
        {"model": model, "q": texts},
    )
    found = dict(
        zip(cached.column("query").to_pylist(), cached.column("embedding").to_pylist(), strict=True)
    )
    todo = [t for t in texts if t not in found]
    if todo:
        if encoder is None and model != EMBEDDING_MODEL:
            raise ConfigError(
                f"saedb embeds queries with {EMBEDDING_MODEL} itself; for the labels' model "
                f"{model!r} pass an encoder of that model, e.g. encoder=saedb.llm."
                f"EndpointEncoder(LLMConfig(base_url=..., model={model!r})) for labels "
                "embedded from an endpoint"
            )
        enc = encoder if encoder is not None else default_encoder()
        vectors = [[float(x) for x in v] for v in enc.encode(todo)]
        found.update(zip(todo, vectors, strict=True))
        if not store.read_only:
            _cache(store, model, todo, vectors)
    return {t: found[t] for t in texts}


def _cache(store: Store, model: str, texts: list[str], vectors: list[list[float]]) -> None:
    table = pa.table(
        {
            "query": pa.array(texts, pa.string()),
            "embedding": pa.array(vectors, pa.list_(pa.float32())),
        }
    )
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_new_queries", table)
        con.execute(
            "INSERT INTO query_embeddings (query, model, embedding) "
            "SELECT query, ?, embedding FROM _new_queries ON CONFLICT DO NOTHING",
            [model],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_new_queries")


def relevant_latents(
    store: Store,
    query: str,
    k: int = 20,
    sae: int | str | None = None,
    min_similarity: float | None = None,
    *,
    model: str = EMBEDDING_MODEL,
    encoder: Any = None,
) -> pa.Table:
    """The latents whose current labels are most similar to ``query``, most similar first.

    Columns ``latent_id``, ``label``, ``description``, ``similarity`` (cosine, [-1, 1]); at
    most ``k`` rows, only those at least ``min_similarity`` similar when given. The query's
    embedding is cached in ``query_embeddings`` when the store is writable, and the ranking
    is the SQL macro ``latents_for_query`` (``latents_for_embedding`` on a read-only store).
    Raises :class:`StoreError` when no label of the SAE has an embedding of ``model``.
    """
    if k < 1:
        raise ConfigError(f"the number of latents must be at least 1, got {k}")
    text = normalise(query)
    sae_id = resolve_sae_id(store, sae)
    require_label_embeddings(store, sae_id, model)
    vector = embed_queries(store, [text], model=model, encoder=encoder)[text]
    where = "" if min_similarity is None else " WHERE similarity >= $min::DOUBLE"
    params: dict[str, Any] = {"k": k, "sae": sae_id, "model": model}
    if min_similarity is not None:
        params["min"] = min_similarity
    if store.read_only:
        source = "latents_for_embedding($v::FLOAT[], k := $k, sae := $sae, model := $model)"
        params["v"] = vector
    else:
        source = "latents_for_query($q, k := $k, sae := $sae, model := $model)"
        params["q"] = text
    return store.arrow(
        f"SELECT latent_id, label, description, similarity FROM {source}{where} "
        "ORDER BY similarity DESC, latent_id",
        params,
    )


def rerank(store: Store, query: str, latents: pa.Table, config: LLMConfig) -> pa.Table:
    """Ask the LLM of ``config`` which of ``latents`` are relevant to ``query``.

    Returns the relevant ones, best first, with a ``relevance`` column in [0, 1] (the LLM's)
    after ``similarity``. The call is cached and accounted in the store when it is writable.
    """
    if not config.configured:
        raise ConfigError(
            "--rerank asks an LLM which latents are relevant: give --base-url and --model "
            "(or base_url / model in the LLM config file)"
        )
    from saedb.llm import rerank_latents

    candidates = latents.to_pylist()
    chosen = rerank_latents(
        config, normalise(query), candidates, store=None if store.read_only else store
    )
    schema = latents.schema.append(pa.field("relevance", pa.float64()))
    return pa.Table.from_pylist(
        [{name: c.get(name) for name in schema.names} for c in chosen], schema=schema
    )


def query_weights(
    latents: pa.Table, *, top: int | None = None, min_similarity: float | None = None
) -> pa.Table:
    """Retrieval weights from ranked latents (see the module's docstring for the rule).

    ``latents`` is what :func:`relevant_latents` or :func:`rerank` returned; the score is
    ``relevance`` when present, else ``similarity``. Returns ``latents`` with a ``weight``
    column, only the rows kept (best first). Empty when no latent has a positive score.
    """
    score = "relevance" if "relevance" in latents.column_names else "similarity"
    rows = latents.to_pylist()
    kept = [
        r
        for r in rows
        if r[score] is not None
        and r[score] > 0
        and (min_similarity is None or (r["similarity"] or 0.0) >= min_similarity)
    ]
    kept.sort(key=lambda r: (-r[score], r["latent_id"]))
    if top is not None:
        kept = kept[:top]
    best = kept[0][score] if kept else 1.0
    schema = latents.schema.append(pa.field("weight", pa.float64()))
    return pa.Table.from_pylist([r | {"weight": r[score] / best} for r in kept], schema=schema)


def choose_latents(
    store: Store,
    query: str,
    *,
    latents_k: int,
    sae: int | str | None = None,
    min_similarity: float | None = None,
    rerank_config: LLMConfig | None = None,
) -> pa.Table:
    """The latents a text search or clustering axis uses, with their weights: the
    ``latents_k`` most similar (reranked by the LLM when ``rerank_config`` is given)."""
    ranked = relevant_latents(store, query, k=latents_k, sae=sae, min_similarity=min_similarity)
    if rerank_config is not None:
        ranked = rerank(store, query, ranked, rerank_config)
    chosen = query_weights(ranked, top=latents_k, min_similarity=min_similarity)
    if chosen.num_rows == 0:
        raise ConfigError(
            f"no latent's label is related to '{normalise(query)}'"
            + (f" (similarity >= {min_similarity})" if min_similarity is not None else "")
            + (" by the LLM's judgement" if rerank_config is not None else "")
            + ": try other words, or a lower --min-similarity"
        )
    return chosen


def search_text(
    store: Store,
    query: str,
    *,
    k: int = 100,
    datasets: Sequence[str] | None = None,
    sae: int | str | None = None,
    latents_k: int = SEARCH_LATENTS,
    min_similarity: float | None = None,
    rerank_config: LLMConfig | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Documents for a text query: ``(chosen latents with weights, retrieve's rows)``."""
    sae_id = resolve_sae_id(store, sae)
    chosen = choose_latents(
        store,
        query,
        latents_k=latents_k,
        sae=sae_id,
        min_similarity=min_similarity,
        rerank_config=rerank_config,
    )
    weights = [
        {"latent_id": int(r["latent_id"]), "weight": float(r["weight"])} for r in chosen.to_pylist()
    ]
    docs = store.arrow(
        "SELECT * FROM retrieve($w::STRUCT(latent_id INTEGER, weight DOUBLE)[], "
        "sae := $sae::INTEGER, k := $k::INTEGER, datasets := $ds::VARCHAR[])",
        {"w": weights, "sae": sae_id, "k": k, "ds": list(datasets) if datasets else None},
    )
    return chosen, docs
