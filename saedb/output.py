"""Rendering query results for the terminal: table, csv, json (array) or nl (JSON lines).

Only the ``table`` format shortens long cells (marked with an ellipsis, for the screen);
csv, json and nl always carry every value in full.
"""

from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from typing import Any

import pyarrow as pa

FORMATS = ("table", "csv", "json", "nl")
_MAX_CELL = 72


def render(table: pa.Table, fmt: str = "table") -> str:
    """Render an Arrow table in one of ``FORMATS``."""
    # Rows as tuples, by position: a join can return two columns of the same name, and
    # table.to_pylist() would keep only the last of them.
    cols = table.column_names
    rows = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_plain(v) for v in r])
        return buf.getvalue()
    if fmt in ("json", "nl"):
        keys = _unique(cols)
        objs = [_jsonable(dict(zip(keys, r, strict=True))) for r in rows]
        if fmt == "json":
            return json.dumps(objs, ensure_ascii=False, indent=2) + "\n"
        return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)
    if fmt == "table":
        return _table(cols, rows)
    raise ValueError(f"unknown format {fmt!r}")


def _unique(names: list[str]) -> list[str]:
    """Column names as JSON keys: a repeated name gets a suffix (x, x_1, x_2)."""
    seen: set[str] = set()
    out = []
    for name in names:
        key, i = name, 0
        while key in seen:
            i += 1
            key = f"{name}_{i}"
        seen.add(key)
        out.append(key)
    return out


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
    if isinstance(v, Decimal) and v.as_tuple().exponent == 0:  # HUGEINT, e.g. sum() of ints
        return int(v)
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


def _table(cols: list[str], rows: list[tuple]) -> str:
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line, fmt(cols), line.replace("-", "=")]
    out += [fmt(r) for r in cells]
    out.append(line)
    out.append(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
    return "\n".join(out) + "\n"
