"""Sources: read a corpus file (JSONL, CSV or Parquet) into documents.

Every input row becomes either a ``SourceDoc`` or a ``BadRow`` that names the file, the line
(1-based; for Parquet the row number) and what is wrong with it. Nothing is dropped
silently: bad rows are counted and written to the store's ``bad_rows`` table, and
``strict=True`` turns the first one into an error. This module needs no torch.

A document's text is the ``text_field`` value, or, when that value is a list of
``{"role", "content"}`` messages, a chat that the reader renders with its chat template.
Every other field goes to ``metadata`` (JSON). The document's ``external_id`` is the
``id_field`` value; with no id field configured it is the ``id`` field when a row has one,
else the sha256 of the text, so re-ingesting the same file always yields the same keys.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saedb.errors import ConfigError, InputError

FORMATS = ("jsonl", "csv", "tsv", "parquet")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class SourceDoc:
    """One good input row."""

    line: int
    external_id: str
    text: str | None  # plain text, or None for a chat
    messages: list[dict] | None  # chat messages, or None for plain text
    metadata: str | None  # JSON object of the other fields, or None when there are none


@dataclass
class BadRow:
    """One input row that cannot be ingested, with the reason."""

    source: str
    line: int
    error: str
    raw: str | None

    def describe(self) -> str:
        return f"{self.source}:{self.line}: {self.error}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def detect_format(path: Path, fmt: str | None = None) -> str:
    """The file's format: ``fmt`` if given, else from the extension (``.gz`` not supported)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format '{fmt}'. Valid formats are: {', '.join(FORMATS)}")
        return fmt
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise ConfigError(
            f"cannot tell the format of {path} from its extension '{path.suffix}'. "
            f"Pass --format (one of: {', '.join(FORMATS)})"
        )
    return found


def count_rows(path: Path, fmt: str) -> int | None:
    """Rows in the file, cheaply, for the progress bar (None when unknown)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if fmt == "jsonl":
            with open(path, "rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None
    return None


def read_documents(
    path: str | Path,
    *,
    text_field: str = "text",
    id_field: str | None = None,
    fmt: str | None = None,
) -> Iterator[SourceDoc | BadRow]:
    """Yield the file's rows in order as SourceDoc or BadRow."""
    p = Path(path)
    kind = detect_format(p, fmt)
    if not p.is_file():
        raise InputError(f"cannot read {p}: no such file")
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "tsv": _csv_rows, "parquet": _parquet_rows}
    reader = rows[kind](p, kind)
    seen: dict[str, int] = {}
    try:
        for line, record, raw in reader:
            if isinstance(record, BadRow):
                yield record
                continue
            out = _to_doc(str(p), line, record, raw, text_field, id_field)
            if isinstance(out, SourceDoc):
                first = seen.setdefault(out.external_id, line)
                if first != line:
                    what = "id" if _has_id(record, id_field) else "text (no id field)"
                    out = BadRow(str(p), line, f"duplicate {what} of line {first}", raw)
            yield out
    except OSError as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc


def _has_id(record: dict, id_field: str | None) -> bool:
    return (id_field or "id") in record


def _to_doc(
    source: str, line: int, record: Any, raw: str | None, text_field: str, id_field: str | None
) -> SourceDoc | BadRow:
    if not isinstance(record, dict):
        return BadRow(source, line, f"expected an object, got {type(record).__name__}", raw)
    if text_field not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        return BadRow(source, line, f"missing field '{text_field}' (fields: {fields})", raw)
    value = record[text_field]
    text: str | None = None
    messages: list[dict] | None = None
    if isinstance(value, str):
        if not value.strip():
            return BadRow(source, line, f"field '{text_field}' is empty", raw)
        if _has_surrogates(value):
            return BadRow(source, line, f"field '{text_field}' is not valid UTF-8", raw)
        text = value
    elif isinstance(value, list):
        problem = _check_chat(value)
        if problem:
            return BadRow(source, line, f"field '{text_field}': {problem}", raw)
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
    else:
        kind = "null" if value is None else type(value).__name__
        return BadRow(
            source,
            line,
            f"field '{text_field}' must be text or a list of messages, got {kind}",
            raw,
        )
    if id_field is not None:
        if record.get(id_field) in (None, ""):
            return BadRow(source, line, f"missing id field '{id_field}'", raw)
        external_id = str(record[id_field])
    elif record.get("id") not in (None, ""):
        external_id = str(record["id"])
    else:
        basis = text if text is not None else json.dumps(messages, ensure_ascii=False)
        external_id = "sha256:" + sha256_text(basis)
    rest = {k: v for k, v in record.items() if k != text_field}
    metadata = json.dumps(rest, ensure_ascii=False, default=str) if rest else None
    return SourceDoc(line, external_id, text, messages, metadata)


def _check_chat(value: list) -> str | None:
    if not value:
        return "empty list of messages"
    for i, m in enumerate(value):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            return f"message {i} is not a {{'role': str, 'content': str}} object"
    if not any(m["content"].strip() for m in value):
        return "all messages are empty"
    return None


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# ------------------------------------------------------------------------ file readers
# Each yields (line, record_or_BadRow, raw_text).

Row = tuple[int, Any, str | None]


def _jsonl_rows(path: Path, _kind: str) -> Iterator[Row]:
    with open(path, "rb") as f:
        for line_no, raw_bytes in enumerate(f, start=1):
            if not raw_bytes.strip():
                continue  # blank lines are layout, not rows
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                shown = raw_bytes.decode("utf-8", errors="replace").rstrip("\n")
                yield (
                    line_no,
                    BadRow(
                        str(path),
                        line_no,
                        f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                        shown,
                    ),
                    shown,
                )
                continue
            raw = raw.rstrip("\r\n")
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield line_no, BadRow(str(path), line_no, f"malformed JSON: {exc}", raw), raw
                continue
            yield line_no, record, raw


def _csv_rows(path: Path, kind: str) -> Iterator[Row]:
    csv.field_size_limit(sys.maxsize)  # long documents are fine; never truncate
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}:1: cannot parse the CSV header: {exc}") from exc
        if len(set(header)) != len(header):
            raise InputError(f"{path}:1: duplicate column names in header: {header}")
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, BadRow(str(path), start, f"malformed CSV: {exc}", None), None
                start = reader.line_num + 1
                continue
            line = start
            start = reader.line_num + 1
            raw = ",".join(values)
            if not any(v.strip() for v in values):
                continue
            if any(_has_surrogates(v) for v in values):
                shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield line, BadRow(str(path), line, "not valid UTF-8", shown), shown
                continue
            if len(values) != len(header):
                yield (
                    line,
                    BadRow(
                        str(path), line, f"expected {len(header)} columns, got {len(values)}", raw
                    ),
                    raw,
                )
                continue
            yield line, dict(zip(header, values, strict=True)), raw


def _parquet_rows(path: Path, _kind: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InputError(f"cannot read {path} as Parquet: {exc}") from exc
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield row, record, None
