"""Command-line options derived from config dataclasses.

Each stage has one config dataclass whose fields carry a docstring (the string literal right
under the field). ``add_options`` turns the fields into ``--flag`` options with that text as
help, so the CLI, the docs and the config that ingest runs record never drift apart.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--option`` per dataclass field (``foo_bar`` -> ``--foo-bar``)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        kind = _base_type(hints[f.name])
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            shown = f" (default: {default})" if default is not None else ""
            parser.add_argument(
                flag,
                type=kind,
                default=default,
                dest=f.name,
                required=required,
                metavar=f.name.upper(),
                help=help_text + shown,
            )


def build(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """Instantiate ``cls`` from parsed options plus ``fixed`` values."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.init and hasattr(args, f.name)
    }
    values.update(fixed)
    return cls(**values)


def _base_type(hint: Any) -> type:
    """int | None -> int; bool -> bool; str -> str."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return args[0]
    return hint if isinstance(hint, type) else str
