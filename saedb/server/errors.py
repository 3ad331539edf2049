"""Errors with a Postgres SQLSTATE, as sent to clients in an ErrorResponse."""

from __future__ import annotations

import duckdb


class PgError(Exception):
    """An error for the client: SQLSTATE code and message."""

    def __init__(self, code: str, message: str, severity: str = "ERROR") -> None:
        super().__init__(message)
        self.code, self.message, self.severity = code, message, severity


_DUCK_CODES = (
    (duckdb.ParserException, "42601"),
    (duckdb.CatalogException, "42P01"),
    (duckdb.BinderException, "42703"),
    (duckdb.ConversionException, "22P02"),
    (duckdb.OutOfRangeException, "22003"),
    (duckdb.PermissionException, "42501"),
    (duckdb.ConstraintException, "23000"),
    (duckdb.TransactionException, "25000"),
    (duckdb.InterruptException, "57014"),
    (duckdb.OutOfMemoryException, "53200"),
    (duckdb.InvalidInputException, "22023"),
    (duckdb.NotImplementedException, "0A000"),
)


def from_duckdb(exc: duckdb.Error) -> PgError:
    """DuckDB's error as a PgError; DuckDB's message passes through unchanged."""
    for cls, code in _DUCK_CODES:
        if isinstance(exc, cls):
            if code == "42P01" and "Function" in str(exc):
                code = "42883"
            return PgError(code, str(exc))
    return PgError("XX000", str(exc))
