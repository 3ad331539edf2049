"""One error hierarchy for saedb.

The library raises these; the CLI turns any of them into one clear line on stderr and a
non-zero exit (see ``saedb.cli.main``). Messages name *what* went wrong and *where* (file and
line, table, setting) and, where there is one, what to do about it. DuckDB's own messages are
passed through inside ours: they already point at the problem.
"""

from __future__ import annotations


class SaedbError(Exception):
    """Base class of every error saedb raises on purpose."""

    exit_code = 1


class ConfigError(SaedbError):
    """A setting, option or argument is invalid (names the setting and the valid values)."""

    exit_code = 2


class RegistryError(ConfigError):
    """A name was looked up in a registry (architectures, formats, poolings) and not found."""


class StoreError(SaedbError):
    """The DuckDB store cannot be opened, read or written."""


class MigrationError(StoreError):
    """The store's schema is newer than this saedb, or a migration failed."""


class InputError(SaedbError):
    """Input data (a corpus file, a row in it) is unreadable or malformed."""


class ModelError(SaedbError):
    """A reader model or SAE cannot be loaded, or they do not fit together."""


class MissingDependencyError(SaedbError):
    """An optional dependency (the ``ingest`` extra: torch, transformers) is not installed."""


def require_ingest_extra(what: str) -> None:
    """Raise a clear error when the torch side is needed but not installed."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised in analyst-only installs
        raise MissingDependencyError(
            f"{what} needs the torch side of saedb, which is not installed ({exc}). "
            "Install it with: pip install 'saedb[ingest]'"
        ) from exc
