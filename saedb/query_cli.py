"""The text-query side of the ``saedb`` CLI: ``saedb embed-query``, and the helpers that
``saedb search "text"`` and ``saedb cluster --axis "text"`` (in :mod:`saedb.analysis_cli`)
use to choose latents by label similarity and show which they chose.

``saedb.cli`` registers :func:`add_parsers`; errors become one line there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from saedb.errors import ConfigError, StoreError
from saedb.output import render


def add_parsers(sub: Any, format_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``embed-query`` to the ``saedb`` subparsers ``sub``."""
    p = sub.add_parser(
        "embed-query",
        help="embed text queries and cache them for SQL (latents_for_query)",
        description="Embed each QUERY with the label encoder (all-MiniLM-L6-v2) and store the "
        "embedding in query_embeddings, so that plain SQL, e.g. a BI tool, can run "
        "latents_for_query('QUERY'). Prints each query with its best-matching latents.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="query texts, e.g. 'tone'")
    p.add_argument(
        "--latents-k", type=int, default=3, metavar="N", help="latents shown per query (default 3)"
    )
    p.add_argument("--sae", default=None, help="SAE name or id (default: the store's default)")
    format_option(p)
    p.set_defaults(func=cmd_embed_query)


def add_selection_options(p: argparse.ArgumentParser, *, default_k: int, what: str) -> None:
    """``--latents-k`` and ``--min-similarity``: how a text chooses latents."""
    p.add_argument(
        "--latents-k",
        type=int,
        default=default_k,
        metavar="N",
        help=f"with {what}: use the N latents whose labels are most similar (default {default_k})",
    )
    p.add_argument(
        "--min-similarity",
        type=float,
        default=None,
        metavar="X",
        help=f"with {what}: only latents whose label similarity is at least X (cosine, -1..1)",
    )


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    """``--rerank`` with the LLM endpoint it uses."""
    p.add_argument(
        "--rerank",
        action="store_true",
        help="with a text query: ask an LLM which of the chosen latents are relevant, and "
        "weight them by its relevance (needs an endpoint: --base-url/--model or the config file)",
    )
    p.add_argument("--base-url", metavar="URL", help="OpenAI-compatible endpoint for --rerank")
    p.add_argument("--model", metavar="NAME", help="the chat model at --base-url for --rerank")


def rerank_config(args: argparse.Namespace) -> Any:
    """The ``LLMConfig`` for ``--rerank`` (None without it)."""
    if not args.rerank:
        if args.base_url or args.model:
            raise ConfigError("--base-url and --model are for --rerank; add --rerank")
        return None
    from saedb.llm import LLMConfig

    config = LLMConfig.load(None, base_url=args.base_url, model=args.model)
    if not config.model:
        raise ConfigError(
            "--rerank asks an LLM which latents are relevant: give --model (and --base-url "
            "for an endpoint other than OpenAI's), or set them in the LLM config file"
        )
    return config


def open_for_query(path: str) -> Any:
    """The store read-write, so that the query's embedding is cached for SQL; read-only
    (with a warning, nothing cached) when another process has the file open."""
    from saedb.cli import _open, _require_store

    _require_store(path)
    try:
        return _open(path, read_only=False)
    except StoreError as exc:
        if "lock" not in str(exc).lower():
            raise
        print(
            f"warning: {path} is in use by another process; the query's embedding is not "
            "cached (latents_for_query will not know it)",
            file=sys.stderr,
        )
        return _open(path, read_only=True)


def show_latents(chosen: pa.Table, query: str, *, weights: bool = True) -> None:
    """The chosen latents on stderr, one line each, so stdout stays the result."""
    cols = ["latent_id", "similarity"]
    if "relevance" in chosen.column_names:
        cols.append("relevance")
    if weights and "weight" in chosen.column_names:
        cols.append("weight")
    cols.append("label")
    print(f"latents for '{query}' (by label similarity):", file=sys.stderr)
    sys.stderr.write(render(chosen.select(cols), "table"))


def cmd_embed_query(args: argparse.Namespace) -> int:
    from saedb.labels import EMBEDDING_MODEL
    from saedb.query import (
        embed_queries,
        normalise,
        relevant_latents,
        require_label_embeddings,
        resolve_sae_id,
    )

    if args.latents_k < 0:
        raise ConfigError("--latents-k must be 0 or more")
    texts = [normalise(q) for q in args.queries]
    rows = []
    with open_for_query(args.store) as store:
        before = set(
            store.arrow(
                "SELECT query FROM query_embeddings WHERE model = $m", {"m": EMBEDDING_MODEL}
            )
            .column("query")
            .to_pylist()
        )
        vectors = embed_queries(store, texts)
        cached = not store.read_only
        show = args.latents_k > 0
        if show:
            sae_id = resolve_sae_id(store, args.sae)
            try:
                require_label_embeddings(store, sae_id)
            except StoreError as exc:
                print(f"warning: no latents shown: {exc}", file=sys.stderr)
                show = False
        for text in dict.fromkeys(texts):
            best = (
                relevant_latents(store, text, k=args.latents_k, sae=sae_id).to_pylist()
                if show
                else []
            )
            rows.append(
                {
                    "query": text,
                    "model": EMBEDDING_MODEL,
                    "dim": len(vectors[text]),
                    "cached_before": text in before,
                    "top_latents": [r["latent_id"] for r in best],
                    "top_labels": "; ".join(r["label"] for r in best),
                }
            )
    if cached:
        quoted = texts[0].replace("'", "''")
        print(
            f"cached in query_embeddings: SELECT * FROM latents_for_query('{quoted}') works in "
            "plain SQL now",
            file=sys.stderr,
        )
    schema = pa.schema(
        [
            ("query", pa.string()),
            ("model", pa.string()),
            ("dim", pa.int32()),
            ("cached_before", pa.bool_()),
            ("top_latents", pa.list_(pa.int32())),
            ("top_labels", pa.string()),
        ]
    )
    sys.stdout.write(render(pa.Table.from_pylist(rows, schema=schema), args.format))
    return 0
