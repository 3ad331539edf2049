"""The store: one DuckDB file holding documents, SAEs and SAE embeddings.

``Store`` is the only writer of the file. Ingestion hands it whole batches (Arrow tables) and
``write_batch`` commits each in one transaction: the batch's documents, their encodings, their
latent rows and the bad input rows seen since the previous batch land together or not at all,
so a process killed at any moment leaves only whole batches behind and the same command
resumes where it stopped. Opening a store read-write upgrades its schema (numbered
migrations) and (re)installs the SQL views and macros that analysts and BI tools query.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from saedb import catalog, migrations
from saedb.errors import ConfigError, StoreError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_SAE_KEY = "default_sae_id"


def _first(result: duckdb.DuckDBPyConnection) -> tuple | None:
    """The first row of a result, or None. Fetches everything: in DuckDB 2.0 an unfinished
    result keeps the connection busy."""
    rows = result.fetchall()
    return rows[0] if rows else None


@dataclass
class SaeRecord:
    """One row of the ``saes`` table: an SAE and the reader/hook it belongs to."""

    name: str
    reader_model: str
    reader_revision: str | None
    hook_name: str
    layer: int
    architecture: str
    d_in: int
    d_sae: int
    weights_sha256: str
    path: str
    config: dict[str, Any]
    sae_id: int | None = None


class Store:
    """A saedb store in a DuckDB file. Use ``saedb.open(path)`` to get one."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path} (create it with: saedb init {self.path})")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        if read_only:
            found, known = migrations.current_version(self.con), migrations.latest_version()
            if found > known:
                self.con.close()
                raise StoreError(
                    f"{self.path} is at schema version {found}, newer than this saedb "
                    f"({known}): upgrade saedb"
                )
            if found < known:
                # An older store: upgrade it once (briefly read-write), then read as asked.
                self.con.close()
                try:
                    Store(self.path).close()
                except StoreError as exc:
                    raise StoreError(
                        f"{self.path} is at schema version {found} and needs upgrading to "
                        f"{known}, which needs a moment of write access: {exc}"
                    ) from exc
                self.con = duckdb.connect(str(self.path), read_only=True)
        else:
            migrations.migrate(self.con)
            catalog.install(self.con)
            # The file's lock means no other process can be writing: a run still marked
            # 'running' belongs to a process that died. Its committed batches stay.
            self.con.execute(
                "UPDATE ingest_runs SET status = 'interrupted' WHERE status = 'running'"
            )

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"<saedb.Store {self.path} ({mode})>"

    # -- queries -------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pd.DataFrame:
        """Run SQL and return a pandas DataFrame (DuckDB's error passes through)."""
        return self._execute(query, params).fetchdf()

    def arrow(self, query: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Run SQL and return a pyarrow Table."""
        # Through a relation, not execute(): DuckDB 2.0 copies a DB-API result once more to
        # make Arrow of it, and warns about that on stderr.
        try:
            return self.con.sql(query, params=params).to_arrow_table()
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    def _execute(self, query: str, params: Any) -> duckdb.DuckDBPyConnection:
        try:
            return (
                self.con.execute(query, params) if params is not None else self.con.execute(query)
            )
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    # -- settings ------------------------------------------------------------------------

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = _first(self.con.execute("SELECT value FROM settings WHERE key = ?", [key]))
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [key, value])

    # -- datasets ------------------------------------------------------------------------

    def dataset_id(self, name: str, *, create: bool = False, description: str | None = None) -> int:
        """The id of a dataset by name, creating it when ``create`` is true."""
        if not name or not name.strip():
            raise ConfigError("a dataset name must not be empty")
        row = _first(self.con.execute("SELECT dataset_id FROM datasets WHERE name = ?", [name]))
        if row:
            return int(row[0])
        if not create:
            names = [
                r[0] for r in self.con.execute("SELECT name FROM datasets ORDER BY name").fetchall()
            ]
            raise ConfigError(
                f"no dataset named '{name}'. Datasets in this store: {', '.join(names) or 'none'}"
            )
        new_id = _first(self.con.execute("SELECT coalesce(max(dataset_id), 0) + 1 FROM datasets"))[
            0
        ]
        self.con.execute(
            "INSERT INTO datasets (dataset_id, name, description) VALUES (?, ?, ?)",
            [new_id, name, description],
        )
        return int(new_id)

    # -- SAEs ----------------------------------------------------------------------------

    def register_sae(self, rec: SaeRecord, *, make_default: bool = False) -> int:
        """Record an SAE. Registering the same name with the same weights is a no-op;
        the same name with other weights is refused."""
        row = _first(
            self.con.execute("SELECT sae_id, weights_sha256 FROM saes WHERE name = ?", [rec.name])
        )
        if row:
            if row[1] != rec.weights_sha256:
                raise StoreError(
                    f"an SAE named '{rec.name}' with other weights is already in {self.path} "
                    f"(sha256 {row[1][:12]} vs {rec.weights_sha256[:12]}); choose another --name"
                )
            sae_id = int(row[0])
        else:
            sae_id = int(
                _first(self.con.execute("SELECT coalesce(max(sae_id), 0) + 1 FROM saes"))[0]
            )
            fields = asdict(rec)
            fields.update(sae_id=sae_id, config=json.dumps(rec.config))
            cols = list(fields)
            self.con.execute(
                f"INSERT INTO saes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [fields[c] for c in cols],
            )
        if make_default or self.get_setting(DEFAULT_SAE_KEY) is None:
            self.set_setting(DEFAULT_SAE_KEY, str(sae_id))
        return sae_id

    def get_sae(self, name: str | int | None = None) -> SaeRecord:
        """An SAE by name or id; None means the store's default SAE."""
        if name is None:
            default = self.get_setting(DEFAULT_SAE_KEY)
            if default is None:
                raise StoreError(
                    f"{self.path} has no SAE yet: add one with `saedb init {self.path}` "
                    "(--sae DIR for another than the default)"
                )
            name = int(default)
        col = "sae_id" if isinstance(name, int) else "name"
        row = _first(
            self.con.execute(
                "SELECT name, reader_model, reader_revision, hook_name, layer, architecture, d_in, "
                f"d_sae, weights_sha256, path, config, sae_id FROM saes WHERE {col} = ?",
                [name],
            )
        )
        if row is None:
            names = [
                r[0] for r in self.con.execute("SELECT name FROM saes ORDER BY sae_id").fetchall()
            ]
            raise ConfigError(
                f"SAE '{name}' not found. SAEs in this store: {', '.join(names) or 'none'}"
            )
        values = list(row)
        values[10] = json.loads(values[10])
        return SaeRecord(*values)

    # -- ingest runs ---------------------------------------------------------------------

    def start_run(self, config: dict[str, Any]) -> int:
        run_id = int(
            _first(self.con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM ingest_runs"))[0]
        )
        self.con.execute(
            "INSERT INTO ingest_runs (run_id, config) VALUES (?, ?)", [run_id, json.dumps(config)]
        )
        return run_id

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        self.con.execute(
            "UPDATE ingest_runs SET status = ?, error = ?, finished_at = current_timestamp "
            "WHERE run_id = ?",
            [status, error, run_id],
        )

    # -- ingestion support ---------------------------------------------------------------

    def known_documents(
        self, dataset_id: int, external_ids: Sequence[str], sae_id: int
    ) -> dict[str, tuple[int, bool, str]]:
        """For the given external ids already in the dataset:
        id -> (doc_id, whether it is encoded with ``sae_id``, text_sha256)."""
        if not external_ids:
            return {}
        keys = pa.table({"external_id": pa.array(list(external_ids), pa.string())})
        self.con.register("_saedb_keys", keys)
        try:
            rows = self.con.execute(
                """
                SELECT d.external_id, d.doc_id, e.doc_id IS NOT NULL, d.text_sha256
                FROM _saedb_keys k
                JOIN documents d ON d.external_id = k.external_id AND d.dataset_id = ?
                LEFT JOIN doc_encodings e ON e.doc_id = d.doc_id AND e.sae_id = ?
                """,
                [dataset_id, sae_id],
            ).fetchall()
        finally:
            self.con.unregister("_saedb_keys")
        return {r[0]: (int(r[1]), bool(r[2]), str(r[3])) for r in rows}

    def write_batch(
        self,
        *,
        run_id: int,
        dataset_id: int,
        sae_id: int,
        documents: pa.Table,
        latents: pa.Table,
        bad_rows: pa.Table | None = None,
        n_skipped: int = 0,
    ) -> list[int]:
        """Commit one batch in one transaction and return the batch's doc_ids.

        ``documents``: doc_id (int64, null for new documents), external_id, text, text_sha256,
        n_tokens, metadata (JSON text). ``latents``: doc_index (row of ``documents``),
        latent_id, max_act, sum_act, n_active, max_char_start, max_char_end.
        ``bad_rows``: source, line, error, raw.
        """
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            next_id = _first(con.execute("SELECT coalesce(max(doc_id), 0) + 1 FROM documents"))[0]
            given = documents.column("doc_id").to_pylist()
            doc_ids: list[int] = []
            for g in given:
                if g is None:
                    doc_ids.append(next_id)
                    next_id += 1
                else:
                    doc_ids.append(int(g))
            ids = pa.array(doc_ids, pa.int64())
            is_new = pa.array([g is None for g in given], pa.bool_())
            docs = documents.set_column(documents.schema.get_field_index("doc_id"), "doc_id", ids)
            lat = latents.append_column("doc_id", pa.compute.take(ids, latents.column("doc_index")))
            con.register("_batch_docs", docs.filter(is_new))
            con.register("_batch_lat", lat)
            con.register("_batch_ids", pa.table({"doc_id": ids}))
            con.execute(
                """
                INSERT INTO documents (doc_id, dataset_id, external_id, text, text_sha256,
                                       n_tokens, metadata, run_id)
                SELECT doc_id, ?, external_id, text, text_sha256, n_tokens, metadata::JSON, ?
                FROM _batch_docs
                """,
                [dataset_id, run_id],
            )
            con.execute(
                """
                INSERT INTO doc_latents
                SELECT doc_id, ?, latent_id, max_act, sum_act, n_active,
                       max_char_start, max_char_end
                FROM _batch_lat ORDER BY latent_id, doc_id
                """,
                [sae_id],
            )
            con.execute(
                """
                INSERT INTO doc_encodings (doc_id, sae_id, run_id, n_latents)
                SELECT i.doc_id, ?, ?, count(l.doc_id)::INTEGER
                FROM _batch_ids i LEFT JOIN _batch_lat l USING (doc_id)
                GROUP BY i.doc_id
                """,
                [sae_id, run_id],
            )
            n_bad = 0
            if bad_rows is not None and bad_rows.num_rows:
                n_bad = bad_rows.num_rows
                con.register("_batch_bad", bad_rows)
                con.execute(
                    "INSERT INTO bad_rows SELECT ?, source, line, error, raw FROM _batch_bad",
                    [run_id],
                )
            n_tokens = int(pa.compute.sum(documents.column("n_tokens")).as_py() or 0)
            con.execute(
                """
                UPDATE ingest_runs SET n_docs = n_docs + ?, n_tokens = n_tokens + ?,
                       n_bad_rows = n_bad_rows + ?, n_skipped = n_skipped + ?
                WHERE run_id = ?
                """,
                [documents.num_rows, n_tokens, n_bad, n_skipped, run_id],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            for name in ("_batch_docs", "_batch_lat", "_batch_ids", "_batch_bad"):
                with contextlib.suppress(duckdb.Error):
                    con.unregister(name)
        return doc_ids

    # -- high level ----------------------------------------------------------------------

    def ingest(self, source: str | Path, dataset: str, **options: Any):
        """Ingest a JSONL/CSV/Parquet file into ``dataset`` (needs the ``ingest`` extra).

        Options are the fields of ``ingest.pipeline.IngestConfig``. Returns its result.
        """
        from saedb.errors import require_ingest_extra

        require_ingest_extra("ingestion")
        from ingest.pipeline import IngestConfig, run_ingest

        return run_ingest(self, IngestConfig(source=str(source), dataset=dataset, **options))

    def diff(self, a: str, b: str, **options: Any) -> pd.DataFrame:
        """``diff(a, b, ...)`` as a DataFrame; options are the macro's named parameters
        (sae, min_freq, max_freq, threshold)."""
        named = "".join(f", {k} := ${k}" for k in options)
        return self.sql(f"SELECT * FROM diff($a, $b{named})", {"a": a, "b": b, **options})

    def search(
        self,
        query: str | dict[int, float],
        *,
        k: int = 100,
        datasets: Sequence[str] | None = None,
        sae: int | None = None,
    ) -> pd.DataFrame:
        """Documents scored by latent weights (``retrieve``): ``{12: 1.0, 40: 2.0}`` or the
        CLI's text form ``"12,40:2.0"``. Text queries need latent labels (a later version)."""
        if isinstance(query, str):
            from saedb.analysis_cli import parse_weights

            weights = parse_weights(query)
        else:
            weights = [{"latent_id": int(i), "weight": float(w)} for i, w in query.items()]
        return self.sql(
            "SELECT * FROM retrieve($w::STRUCT(latent_id INTEGER, weight DOUBLE)[], "
            "sae := $sae::INTEGER, k := $k::INTEGER, datasets := $ds::VARCHAR[])",
            {"w": weights, "sae": sae, "k": k, "ds": list(datasets) if datasets else None},
        )

    def cluster(self, latents: Sequence[int], **options: Any):
        """Targeted spectral clustering on the given latents; see ``saedb.cluster.cluster``."""
        from saedb.cluster import cluster

        return cluster(self, list(latents), **options)

    def optimize(self) -> None:
        """Rewrite doc_latents clustered by (sae_id, latent_id, doc_id): the layout under which
        per-latent queries (diffing, retrieval, top documents) touch the fewest row groups."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                "CREATE TEMP TABLE _sorted AS SELECT * FROM doc_latents "
                "ORDER BY sae_id, latent_id, doc_id"
            )
            con.execute("DELETE FROM doc_latents")
            con.execute("INSERT INTO doc_latents SELECT * FROM _sorted")
            con.execute("DROP TABLE _sorted")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")


def open(path: str | Path, *, read_only: bool = False) -> Store:  # noqa: A001 - saedb.open
    """Open (creating if needed) the store at ``path``."""
    return Store(path, read_only=read_only)
