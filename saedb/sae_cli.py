"""The ``saedb sae`` commands: ``add`` an SAE of any supported format, ``list`` a store's SAEs.

``saedb.cli`` registers the parser and turns errors into one line. ``add`` needs the torch side
(it loads the SAE and checks it against its reader); ``list`` only reads the store.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

FORMAT_NAMES = (
    "saelens, sparsify, gemmascope, gemmascope2, goodfire, llamascope, dictionary_learning"
)


def add_parser(sub: Any, format_option: Any) -> None:
    """Add ``sae`` (with ``add`` and ``list``) to the ``saedb`` subparsers ``sub``."""
    p = sub.add_parser(
        "sae",
        help="add an SAE of any common format to a store, or list the store's SAEs",
        description="Manage the SAEs of a store. `saedb sae add` reads an SAE from a local "
        "directory or file in any supported format, checks that it fits its reader model "
        "(model name, hidden size, hook) and records it with the sha256 of its weights; "
        "`saedb sae list` shows the SAEs a store has.",
    )
    actions = p.add_subparsers(dest="sae_command", metavar="ACTION", required=True)

    a = actions.add_parser(
        "add",
        help="register an SAE (format auto-detected) in a store",
        description="Register the SAE at PATH in STORE (created if needed). The format is "
        f"detected from the files ({FORMAT_NAMES}) unless --format names it. The model and "
        "hook the SAE reads come from its files; formats that do not record them need "
        "--model-name / --hook. The reader (default: the reader of the store's default SAE, "
        "else the builtin SmolLM2) must have the SAE's hidden size and hook layer, and the "
        "model the SAE was trained on, unless --force. Ingest checks the same again.",
    )
    a.add_argument("store", help="path of the DuckDB file (created if it does not exist)")
    a.add_argument("path", help="SAE directory (or file, for a Goodfire .pth) on local disk")
    a.add_argument(
        "--format",
        default=None,
        metavar="NAME",
        help=f"SAE format instead of detecting it: {FORMAT_NAMES}",
    )
    a.add_argument(
        "--name", default=None, help="name to record the SAE under (default: the path's name)"
    )
    a.add_argument(
        "--reader",
        default=None,
        help="reader model: builtin:smollm2-135m-instruct or a local Hugging Face model "
        "directory (default: the reader of the store's default SAE, else the builtin)",
    )
    a.add_argument(
        "--hook",
        default=None,
        help="hook the SAE reads, for formats that do not record it "
        "(e.g. blocks.12.hook_resid_post); must agree with the SAE's own when it has one",
    )
    a.add_argument(
        "--model-name",
        default=None,
        help="model the SAE was trained on, for formats that do not record it "
        "(e.g. google/gemma-2-2b)",
    )
    a.add_argument(
        "--norm-scaling-factor",
        type=float,
        default=None,
        metavar="S",
        help="scaling factor of a SAELens SAE with normalize_activations="
        "expected_average_only_in (the release's value; folded into the weights)",
    )
    a.add_argument(
        "--force",
        action="store_true",
        help="accept a reader whose model name differs from the SAE's (hidden size and "
        "hook must still fit); ingest then accepts the pair too",
    )
    a.add_argument(
        "--default", action="store_true", help="make it the store's default SAE for ingest"
    )
    a.set_defaults(func=cmd_sae_add)

    ls = actions.add_parser("list", help="the SAEs of a store, with format and provenance")
    ls.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    format_option(ls)
    ls.set_defaults(func=cmd_sae_list)


def cmd_sae_add(args: argparse.Namespace) -> int:
    from saedb.errors import require_ingest_extra

    require_ingest_extra("saedb sae add")
    from ingest.sae_add import add_sae

    added = add_sae(
        args.store,
        args.path,
        format=args.format,
        name=args.name,
        reader=args.reader,
        hook=args.hook,
        model_name=args.model_name,
        norm_scaling_factor=args.norm_scaling_factor,
        force=args.force,
        make_default=args.default,
    )
    rec = added.record
    for note in added.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"{args.store}: SAE '{rec.name}' (id {rec.sae_id}, {rec.format}) on {rec.reader_model} "
        f"{rec.hook_name}, {rec.architecture} {rec.d_in}->{rec.d_sae}, "
        f"sha256 {rec.weights_sha256[:12]}"
    )
    return 0


def cmd_sae_list(args: argparse.Namespace) -> int:
    from saedb.cli import _open, _require_store
    from saedb.output import render

    _require_store(args.store)
    with _open(args.store, read_only=True) as store:
        table = store.arrow(
            """
            SELECT s.sae_id, s.name, s.format, s.architecture, s.d_in, s.d_sae,
                   s.reader_model, s.hook_name, s.force_reader,
                   s.sae_id::VARCHAR = (SELECT value FROM settings
                                        WHERE key = 'default_sae_id') AS is_default,
                   s.weights_sha256, s.path
            FROM saes s ORDER BY s.sae_id
            """
        )
    sys.stdout.write(render(table, args.format))
    return 0
