"""The ``saedb label`` command: label latents, then embed the labels.

With no LLM endpoint (the LLM labeler and its ``--base-url`` / ``--model`` options come in a
later version) it runs the offline log-odds labeler of :mod:`saedb.labels`, then stores a
MiniLM embedding of every new label, and prints a summary. ``saedb.cli`` registers the parser
and turns errors into one line.
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
        help="give latents short human-readable labels (offline: log-odds of their contexts)",
        description="Label latents and store the labels (latent_labels; the best per latent "
        "in the view current_labels), then a MiniLM sentence embedding of each new label "
        "(label_embeddings). No LLM endpoint is configured (the --base-url / --model options "
        "of the LLM labeler come in a later version), so this runs the offline labeler: the "
        "words and bigrams most specific to a latent's top-activating contexts against "
        "contexts where it does not fire (smoothed log-odds). Latents already labelled by it "
        "are skipped.",
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
    p.set_defaults(func=cmd_label)


def cmd_label(args: argparse.Namespace) -> int:
    from saedb.analysis_cli import parse_ids
    from saedb.cli import _require_store
    from saedb.labels import EMBEDDING_MODEL, embed_labels, label_offline_run
    from saedb.store import Store

    _require_store(args.store)
    latents = parse_ids(args.latents, "--latents") if args.latents else None
    t0 = time.perf_counter()
    with Store(args.store) as store:
        store.con.execute("SET enable_progress_bar = false")
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
        t1 = time.perf_counter()
        try:
            n = embed_labels(store, sae=args.sae)
        except MissingDependencyError as exc:
            print(f"warning: labels not embedded: {exc}", file=sys.stderr)
        else:
            print(f"embedded {n} labels with {EMBEDDING_MODEL} in {time.perf_counter() - t1:.1f}s")
    print(f'see them with: saedb sql {args.store} "SELECT * FROM current_labels"')
    return 0


def _ids(ids: list[int], shown: int = 20) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")
