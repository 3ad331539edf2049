"""Rendering query results for the terminal: table, csv, json (array) or nl (JSON lines).

Only the ``table`` format shortens long cells (marked with an ellipsis, for the screen);
csv, json and nl always carry every value in full.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pyarrow as pa

FORMATS = ("table", "csv", "json", "nl")
_MAX_CELL = 72


def render(table: pa.Table, fmt: str = "table") -> str:
    """Render an Arrow table in one of ``FORMATS``."""
    rows = table.to_pylist()
    cols = table.column_names
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_plain(r[c]) for c in cols])
        return buf.getvalue()
    if fmt == "json":
        return json.dumps([_jsonable(r) for r in rows], ensure_ascii=False, indent=2) + "\n"
    if fmt == "nl":
        return "".join(json.dumps(_jsonable(r), ensure_ascii=False) + "\n" for r in rows)
    if fmt == "table":
        return _table(cols, rows)
    raise ValueError(f"unknown format {fmt!r}")


def _plain(v: Any) -> Any:
    if isinstance(v, list | dict):
        return json.dumps(_jsonable(v), ensure_ascii=False)
    return "" if v is None else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        s = (
            f"{v:.4g}"
            if (v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6))
            else f"{v:.4f}".rstrip("0").rstrip(".")
        )
    else:
        s = str(_plain(v))
    s = s.replace("\n", "⏎").replace("\t", " ")
    return s if len(s) <= _MAX_CELL else s[: _MAX_CELL - 1] + "…"


def _table(cols: list[str], rows: list[dict]) -> str:
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line, fmt(cols), line.replace("-", "=")]
    out += [fmt(r) for r in cells]
    out.append(line)
    out.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    return "\n".join(out) + "\n"
