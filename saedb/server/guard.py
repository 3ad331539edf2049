"""What a read-only (``reader``) user may run: reads, nothing that writes or reaches files.

Two layers. This classifier parses each statement with DuckDB's own parser and allows only
SELECT-like statements (SELECT, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of those, VALUES,
transaction control) and refuses calls of the file-reading table functions by name, so the
refusal names the reason. Under it, the server's DuckDB instance runs with
``enable_external_access = false`` and ``lock_configuration = true``: no statement, from any
user, can read or write a file other than the store, install or load an extension, or change
those settings back.
"""

from __future__ import annotations

import re

import duckdb

from saedb.server.errors import PgError

READ_TYPES = {"SELECT", "EXPLAIN", "TRANSACTION"}
FILE_FUNCTIONS = re.compile(
    r"\b(read_[a-z_]+|glob|parquet_scan|parquet_metadata|parquet_schema|parquet_file_metadata|"
    r"parquet_kv_metadata|parquet_bloom_probe|sniff_csv|query_table|query|iceberg_scan|"
    r"delta_scan|csv_scan|json_scan|getenv)\s*\(",
    re.IGNORECASE,
)
_STRINGS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


def check_read_only(sql: str) -> None:
    """Raise PgError (42501) unless ``sql`` only reads the store."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise PgError("42601", f"syntax error: {exc}") from exc
    for st in statements:
        kind = st.type.name
        if kind not in READ_TYPES:
            raise PgError(
                "42501",
                f"permission denied: this user is read-only and may not run {kind} "
                "statements (only SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN)",
            )
        if kind == "EXPLAIN":
            inner = re.sub(r"^\s*explain\s+(analyze\s+)?", "", st.query, flags=re.IGNORECASE)
            check_read_only(inner)
    bare = _STRINGS.sub("''", sql)
    m = FILE_FUNCTIONS.search(bare)
    if m:
        raise PgError(
            "42501",
            f"permission denied: {m.group(1)}() reads files or runs other SQL; saedb serve "
            "only answers queries over the store",
        )
