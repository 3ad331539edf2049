"""docs/cli.md documents every command and every option of the parser, its examples parse, and
the README starts with the two commands a newcomer needs.

The commands and options come from ``saedb.cli.build_parser()`` itself, so adding an option
(or a config field, which becomes one) without documenting it fails here.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from saedb.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"
HEADING = re.compile(r"^## (?P<title>.+?)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    (sub,) = (a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def long_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [
        flag
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    ]


def sections() -> dict[str, str]:
    """Command name -> the text of its ``## saedb <command>`` section (up to the next ``## ``)."""
    text = DOCS.read_text(encoding="utf-8")
    heads = list(HEADING.finditer(text))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return {
        m[1]: text[h.end() : end]
        for h, end in zip(heads, ends, strict=True)
        if (m := re.fullmatch(r"saedb ([a-z][a-z0-9-]*)", h["title"]))
    }


def mentions(text: str, flag: str) -> bool:
    """``flag`` appears as a whole option (``--sae`` is not found inside ``--sae-name``)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


COMMANDS = subcommands()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_has_a_section(command: str) -> None:
    assert command in sections(), f"docs/cli.md has no '## saedb {command}' section"


@pytest.mark.parametrize(
    ("command", "flag"),
    [(c, f) for c in sorted(COMMANDS) for f in long_flags(COMMANDS[c])],
    ids=lambda v: v,
)
def test_option_is_documented_in_its_section(command: str, flag: str) -> None:
    section = sections().get(command, "")
    assert mentions(section, flag), f"docs/cli.md, section 'saedb {command}': {flag} is missing"


def test_every_documented_command_exists() -> None:
    stale = set(sections()) - set(COMMANDS)
    assert not stale, f"docs/cli.md documents commands the CLI does not have: {stale}"


def test_top_level_options_and_exit_codes_are_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for flag in long_flags(build_parser()):
        assert mentions(text, flag), flag
    codes = text[text.index("**Exit codes.**") :]
    for code in ("0", "1", "2", "130"):
        assert f"| `{code}` |" in codes, f"exit code {code} is not documented"


def example_commands() -> list[str]:
    """Every ``saedb ...`` command line in the bash blocks of docs/cli.md."""
    found = []
    for block in FENCE.finditer(DOCS.read_text(encoding="utf-8")):
        if block["lang"] != "bash":
            continue
        for line in block["body"].splitlines():
            if re.search(r"(^|\| )saedb ", line):
                found.append(line)
    return found


def test_docs_have_examples_for_every_command() -> None:
    used = {argv[1] for argv in _saedb_argvs()}
    assert set(COMMANDS) <= used, f"no example for: {set(COMMANDS) - used}"


def _saedb_argvs() -> list[list[str]]:
    argvs = []
    for line in example_commands():
        tokens = shlex.split(line, comments=True)
        tokens = tokens[tokens.index("saedb") :]
        for i, tok in enumerate(tokens):
            if tok in (">", ">>", "|", "2>"):
                tokens = tokens[:i]
                break
        argvs.append(tokens)
    return argvs


@pytest.mark.parametrize("argv", _saedb_argvs(), ids=" ".join)
def test_example_parses(argv: list[str]) -> None:
    """The examples use real options with valid values (they are run by hand, not here)."""
    args = build_parser().parse_args(argv[1:])
    assert args.command == argv[1]


def test_readme_starts_with_make_demo_and_make_test() -> None:
    assert README.is_file(), "README.md is missing"
    first = FENCE.search(README.read_text(encoding="utf-8"))
    assert first, "README.md has no code block"
    commands = [
        line.split("#", 1)[0].strip()
        for line in first["body"].splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert commands[:2] == ["make demo", "make test"], commands
