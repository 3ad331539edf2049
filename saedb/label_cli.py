"""The ``saedb label`` command: label latents, then embed the labels.

With an LLM endpoint (``--base-url`` / ``--model``, or the LLM config file) it runs the LLM
labeler of :mod:`saedb.llm_labels`; with none (or ``--offline``) the offline log-odds labeler
of :mod:`saedb.labels`. Then it stores an embedding of every new label: from MiniLM, or from
an embeddings endpoint (``--embed-base-url`` / ``--embed-model``). It prints a summary, lists
every latent that failed and why, and exits with 1 when any did. ``saedb.cli`` registers the
parser and turns errors into one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from saedb.errors import MissingDependencyError


def add_parser(sub: Any) -> None:
    """Add ``label`` to the ``saedb`` subparsers ``sub``."""
    p = sub.add_parser(
        "label",
        help="give latents short human-readable labels (an LLM, or offline: log-odds)",
        description="Label latents and store the labels (latent_labels; the best per latent "
        "in the view current_labels), then a sentence embedding of each new label "
        "(label_embeddings). With an OpenAI-compatible endpoint (--base-url and --model, or "
        "base_url / model in the LLM config file) an LLM labels each latent from examples "
        "where it fires and where it does not, and scores the label on held-out examples "
        "(detection: balanced accuracy); calls are cached and accounted in the store "
        "(llm_calls, view llm_spend). The API key is read from the environment variable "
        "--api-key-env names (or the config file) and is never stored or printed. Without "
        "an endpoint (or with --offline) the offline labeler runs: the words and bigrams "
        "most specific to a latent's top-activating contexts (smoothed log-odds). Latents "
        "already labelled by the same labeler, model and version are skipped. Exits with 1 "
        "when any latent failed (they are listed, with the reason).",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--latents", metavar="IDS", help="these latent ids, e.g. 1,2,3")
    which.add_argument(
        "--top-diff",
        nargs=2,
        metavar=("A", "B"),
        help="the latents whose frequency differs most between datasets A and B (q < 0.05)",
    )
    which.add_argument(
        "--all-firing", action="store_true", help="every latent that fired in some document"
    )
    p.add_argument("--sae", default=None, help="SAE name or id (default: the store's default)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="label at most N latents, 0 for no limit (default: all; 20 with --top-diff)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    llm = p.add_argument_group("LLM labeler (any OpenAI-compatible endpoint)")
    llm.add_argument(
        "--base-url",
        metavar="URL",
        help="the endpoint, e.g. http://localhost:8000/v1 (vLLM) or http://localhost:11434/v1 "
        "(Ollama); default: the config file's, else OpenAI's when --model is given",
    )
    llm.add_argument("--model", metavar="NAME", help="the chat model's name at the endpoint")
    llm.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    llm.add_argument(
        "--llm-config",
        metavar="FILE",
        help="TOML file with base_url, model, api_key, price_in, price_out, concurrency, ... "
        "(default: $SAEDB_LLM_CONFIG, else ~/.config/saedb/llm.toml if it exists)",
    )
    llm.add_argument(
        "--concurrency", type=int, metavar="N", help="requests in flight at once (default 8)"
    )
    llm.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="retries of a request on 429, 5xx, timeouts and connection errors (default 5)",
    )
    llm.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait for one answer (default 60)"
    )
    llm.add_argument(
        "--price-in", type=float, metavar="USD", help="price per 1M prompt tokens, for the cost"
    )
    llm.add_argument(
        "--price-out",
        type=float,
        metavar="USD",
        help="price per 1M completion tokens, for the cost estimate",
    )
    llm.add_argument(
        "--no-score",
        action="store_true",
        help="do not score labels on held-out examples (half the calls; score stays NULL)",
    )
    llm.add_argument(
        "--no-near-misses",
        action="store_true",
        help="every negative example at random (default: half of them near misses, documents "
        "where the latent's usual partners fired but it did not)",
    )
    llm.add_argument(
        "--relabel-below",
        type=float,
        metavar="X",
        help="relabel latents whose label scores below X (balanced accuracy, 0-1) and keep "
        "the better label; also retries existing labels below X",
    )
    llm.add_argument(
        "--max-rounds",
        type=int,
        default=3,
        metavar="N",
        help="most labelling rounds per latent with --relabel-below (default 3)",
    )
    llm.add_argument(
        "--offline",
        action="store_true",
        help="use the offline labeler even when an endpoint is configured",
    )
    emb = p.add_argument_group("label embeddings")
    emb.add_argument(
        "--embed-base-url",
        metavar="URL",
        help="take label embeddings from this OpenAI-compatible embeddings endpoint instead "
        "of MiniLM (same API key)",
    )
    emb.add_argument(
        "--embed-model", metavar="NAME", help="the embedding model at --embed-base-url"
    )
    p.set_defaults(func=cmd_label)


def _configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The LLM config (None: label offline) and the embeddings config (None: MiniLM)."""
    from saedb.errors import ConfigError
    from saedb.llm import LLMConfig

    common = {
        "api_key_env": args.api_key_env,
        "concurrency": args.concurrency,
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "price_in": args.price_in,
        "price_out": args.price_out,
    }
    config = LLMConfig.load(args.llm_config, base_url=args.base_url, model=args.model, **common)
    if config.base_url and not config.model:
        raise ConfigError(
            f"an endpoint is configured ({config.base_url}) but no model: give --model"
        )
    embed = None
    if args.embed_base_url or args.embed_model:
        if not (args.embed_base_url and args.embed_model):
            raise ConfigError(
                "label embeddings from an endpoint need both --embed-base-url and --embed-model"
            )
        embed = LLMConfig.load(
            args.llm_config, base_url=args.embed_base_url, model=args.embed_model, **common
        )
    use_llm = config.configured and not args.offline
    if not use_llm and (args.no_score or args.relabel_below is not None):
        raise ConfigError(
            "--no-score and --relabel-below need an LLM endpoint (--base-url, --model)"
        )
    return (config if use_llm else None), embed


def cmd_label(args: argparse.Namespace) -> int:
    from saedb.analysis_cli import parse_ids
    from saedb.cli import _require_store
    from saedb.store import Store

    _require_store(args.store)
    latents = parse_ids(args.latents, "--latents") if args.latents else None
    config, embed = _configs(args)
    status = 0
    with Store(args.store) as store:
        store.con.execute("SET enable_progress_bar = false")
        if config is not None:
            status = _label_llm(store, config, args, latents)
        else:
            _label_offline(store, args, latents)
        _embed(store, args, embed)
        __import__("saedb.label_neighbors").label_neighbors.refresh_after_labelling(store, args.sae)
    print(f'see them with: saedb sql {args.store} "SELECT * FROM current_labels"')
    return status


def _label_llm(store: Any, config: Any, args: argparse.Namespace, latents: Any) -> int:
    from saedb.llm_labels import LabelRunInterrupted, label_llm_run, summarise

    t0 = time.perf_counter()
    try:
        run = label_llm_run(
            store,
            config,
            latents,
            sae=args.sae,
            top_diff=tuple(args.top_diff) if args.top_diff else None,
            all_firing=args.all_firing or None,
            limit=args.limit,
            score=not args.no_score,
            relabel_below=args.relabel_below,
            max_rounds=args.max_rounds,
            near_misses=not args.no_near_misses,
            progress=not args.quiet,
        )
    except LabelRunInterrupted as exc:
        print(
            f"interrupted after labelling {len(exc.run.labelled)} latents; they are saved: "
            "run the same command again to go on (answers already paid for come from the "
            "cache)",
            file=sys.stderr,
        )
        print(summarise(exc.run.stats), file=sys.stderr)
        raise
    print(
        f"labelled {len(run.labelled)} latents with the LLM {run.model} at "
        f"{config.base_url or 'the OpenAI API'} in {time.perf_counter() - t0:.1f}s; "
        f"{len(run.already)} already labelled"
    )
    if run.relabelled:
        print(
            f"  {len(run.relabelled)} relabelled (score below --relabel-below): "
            f"{_ids(run.relabelled)}"
        )
    if run.kept:
        print(f"  {len(run.kept)} kept their label (no better one found): {_ids(run.kept)}")
    if run.never_fired:
        print(f"  {len(run.never_fired)} never fired, so not labelled: {_ids(run.never_fired)}")
    if run.unscored:
        print(
            f"  {len(run.unscored)} labelled without a score (too few examples to hold any "
            f"out for scoring): {_ids(run.unscored)}"
        )
    print(summarise(run.stats))
    for latent in sorted(run.warnings):
        print(f"warning: latent {latent}: {run.warnings[latent]}", file=sys.stderr)
    if run.failed:
        print(f"error: {len(run.failed)} latents failed, not labelled:", file=sys.stderr)
        for latent in sorted(run.failed):
            print(f"  latent {latent}: {run.failed[latent]}", file=sys.stderr)
        print(
            "  (run the same command again to retry them; answers already paid for come from "
            "the cache)",
            file=sys.stderr,
        )
        return 1
    return 0


def _embed(store: Any, args: argparse.Namespace, embed: Any) -> None:
    from saedb.labels import EMBEDDING_MODEL, embed_labels

    t1 = time.perf_counter()
    if embed is not None:
        from saedb.llm_labels import embed_labels_remote

        n = embed_labels_remote(store, embed, sae=args.sae)
        print(
            f"embedded {n} labels with {embed.model} at {embed.base_url} in "
            f"{time.perf_counter() - t1:.1f}s"
        )
        return
    try:
        n = embed_labels(store, sae=args.sae)
    except MissingDependencyError as exc:
        print(f"warning: labels not embedded: {exc}", file=sys.stderr)
    else:
        print(f"embedded {n} labels with {EMBEDDING_MODEL} in {time.perf_counter() - t1:.1f}s")


def _label_offline(store: Any, args: argparse.Namespace, latents: Any) -> None:
    from saedb.labels import label_offline_run

    t0 = time.perf_counter()
    run = label_offline_run(
        store,
        latents,
        sae=args.sae,
        top_diff=tuple(args.top_diff) if args.top_diff else None,
        all_firing=args.all_firing or None,
        limit=args.limit,
        progress=not args.quiet,
    )
    print(
        f"labelled {len(run.labelled)} latents offline (log-odds) in "
        f"{time.perf_counter() - t0:.1f}s; {len(run.already)} already labelled"
    )
    if run.undistinctive:
        print(
            f"  {len(run.undistinctive)} with no distinctive terms (labelled so): "
            f"{_ids(run.undistinctive)}"
        )
    if run.never_fired:
        print(f"  {len(run.never_fired)} never fired, so not labelled: {_ids(run.never_fired)}")


def _ids(ids: list[int], shown: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
