"""docs/sql.md documents every view and macro of the catalog, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from saedb.catalog import SqlObject, load_catalog

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
SECTION = re.compile(r"^## `(?P<name>[A-Za-z_][A-Za-z0-9_]*)`\s*$", re.MULTILINE)


def sections() -> dict[str, str]:
    """Section heading name -> the section's text (up to the next ``## `` heading)."""
    text = DOCS.read_text(encoding="utf-8")
    heads = list(SECTION.finditer(text))
    ends = [h.start() for h in heads[1:]] + [len(text)]
    return {h["name"]: text[h.end() : end] for h, end in zip(heads, ends, strict=True)}


CATALOG = load_catalog()


def test_every_documented_object_exists() -> None:
    stale = set(sections()) - {o.name for o in CATALOG}
    assert not stale, f"docs/sql.md documents objects that are not in the catalog: {stale}"


@pytest.mark.parametrize("obj", CATALOG, ids=lambda o: o.name)
def test_object_is_documented(obj: SqlObject) -> None:
    documented = sections()
    assert obj.name in documented, f"docs/sql.md has no '## `{obj.name}`' section"
    section = documented[obj.name]
    kind = {"view": "view", "macro": "scalar macro", "table_macro": "table macro"}[obj.kind]
    assert f"**{kind}**" in section, f"say that {obj.name} is a {kind}"
    for name in list(obj.param_names) + list(obj.columns):
        assert f"`{name}`" in section, f"docs/sql.md, section {obj.name}: `{name}` is missing"
