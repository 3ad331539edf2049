"""Reading corpus files: every bad row is reported with file and line, good rows all survive."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.sources import BadRow, SourceDoc, read_documents, sha256_text
from saedb.errors import ConfigError, InputError


def _write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_jsonl_good_and_bad_rows_are_reported_with_line_numbers(tmp_path):
    f = tmp_path / "c.jsonl"
    _write_lines(
        f,
        [
            json.dumps({"id": 1, "text": "first", "lang": "en"}).encode(),
            b'{"id": 2, "text": "broken',  # malformed JSON
            json.dumps({"id": 3, "body": "no text"}).encode(),  # missing field
            b"",  # blank line: layout, not a row
            json.dumps({"id": 4, "text": "   "}).encode(),  # empty text
            b'{"id": 5, "text": "caf\xe9"}',  # not UTF-8
            json.dumps({"id": 6, "text": 42}).encode(),  # not text
            json.dumps([1, 2]).encode(),  # not an object
            json.dumps({"id": 8, "text": "last"}).encode(),
        ],
    )
    rows = list(read_documents(f))
    good = [r for r in rows if isinstance(r, SourceDoc)]
    bad = {r.line: r.error for r in rows if isinstance(r, BadRow)}
    assert [(d.line, d.external_id, d.text) for d in good] == [(1, "1", "first"), (9, "8", "last")]
    assert json.loads(good[0].metadata) == {"id": 1, "lang": "en"}
    assert set(bad) == {2, 3, 5, 6, 7, 8}
    assert "malformed JSON" in bad[2]
    assert "missing field 'text'" in bad[3] and "body" in bad[3]
    assert "empty" in bad[5]
    assert "UTF-8" in bad[6]
    assert "got int" in bad[7]
    assert "expected an object" in bad[8]
    assert all(str(f) in r.describe() for r in rows if isinstance(r, BadRow))


def test_ids_default_to_id_field_then_text_hash_and_duplicates_are_bad(tmp_path):
    f = tmp_path / "c.jsonl"
    _write_lines(
        f,
        [
            json.dumps(x).encode()
            for x in [
                {"text": "alpha"},
                {"text": "beta"},
                {"text": "alpha"},
                {"id": "x", "text": "gamma"},
                {"id": "x", "text": "delta"},
            ]
        ],
    )
    rows = list(read_documents(f))
    assert rows[0].external_id == "sha256:" + sha256_text("alpha")
    assert (
        isinstance(rows[2], BadRow)
        and "duplicate text" in rows[2].error
        and "line 1" in rows[2].error
    )
    assert rows[3].external_id == "x"
    assert isinstance(rows[4], BadRow) and "duplicate id" in rows[4].error


def test_explicit_id_field_is_required(tmp_path):
    f = tmp_path / "c.jsonl"
    _write_lines(f, [b'{"key": "a", "text": "t1"}', b'{"text": "t2"}'])
    rows = list(read_documents(f, id_field="key"))
    assert rows[0].external_id == "a"
    assert isinstance(rows[1], BadRow) and "missing id field 'key'" in rows[1].error


def test_chat_documents_and_bad_chats(tmp_path):
    f = tmp_path / "c.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    _write_lines(
        f,
        [
            json.dumps(x).encode()
            for x in [
                {"id": 1, "text": chat},
                {"id": 2, "text": []},
                {"id": 3, "text": [{"role": "user"}]},
            ]
        ],
    )
    rows = list(read_documents(f))
    assert rows[0].messages == chat and rows[0].text is None
    assert isinstance(rows[1], BadRow) and "empty list" in rows[1].error
    assert isinstance(rows[2], BadRow) and "message 0" in rows[2].error


def test_csv_rows_line_numbers_with_multiline_fields(tmp_path):
    f = tmp_path / "c.csv"
    f.write_bytes(b'id,text,label\n1,"line one\nline two",a\n2,short\n3,"caf\xe9",c\n4,fine,d\n')
    rows = list(read_documents(f))
    good = [r for r in rows if isinstance(r, SourceDoc)]
    bad = {r.line: r.error for r in rows if isinstance(r, BadRow)}
    assert [(d.line, d.text) for d in good] == [(2, "line one\nline two"), (6, "fine")]
    assert json.loads(good[0].metadata) == {"id": "1", "label": "a"}
    assert "expected 3 columns" in bad[4]
    assert "UTF-8" in bad[5]


def test_parquet_rows_and_null_text(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(
        pa.table(
            {"id": [10, 11, 12], "text": ["a doc", None, "another"], "score": [0.5, 1.0, 2.0]}
        ),
        f,
    )
    rows = list(read_documents(f))
    assert isinstance(rows[1], BadRow) and rows[1].line == 2 and "null" in rows[1].error
    assert [r.external_id for r in rows if isinstance(r, SourceDoc)] == ["10", "12"]
    assert json.loads(rows[2].metadata) == {"id": 12, "score": 2.0}


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_documents(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ConfigError, match="--format"):
        list(read_documents(tmp_path / "x.txt"))
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="Parquet"):
        list(read_documents(bad_parquet))
