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
import dataclasses
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
from saedb.query import register_udfs

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_SAE_KEY = "default_sae_id"

COMPACT_LATENT_COUNTS_ROWS = 1_000_000
"""``write_batch`` appends one ``latent_counts`` row per latent of each batch; past this many
rows it folds them to one row per (SAE, dataset, latent), keeping the readers' sums cheap."""

_COUNTS_FROM_DOC_LATENTS = """
    SELECT dl.sae_id, d.dataset_id, dl.latent_id, count(*),
           count(*) FILTER (WHERE dl.max_act > 0), sum(CAST(dl.max_act AS DOUBLE)),
           max(dl.max_act)
    FROM doc_latents AS dl
    JOIN doc_encodings AS de ON de.doc_id = dl.doc_id AND de.sae_id = dl.sae_id
    JOIN documents AS d ON d.doc_id = dl.doc_id
    GROUP BY dl.sae_id, d.dataset_id, dl.latent_id
"""

REFRESH_LATENT_COUNTS_SQL = (
    "DELETE FROM latent_counts",
    f"INSERT INTO latent_counts {_COUNTS_FROM_DOC_LATENTS} "
    "ORDER BY dl.sae_id, d.dataset_id, dl.latent_id",
)
"""The statements that recompute ``latent_counts`` from ``doc_latents`` (run them in one
transaction). Anything that writes ``doc_latents`` other than ``Store.write_batch`` should
run them afterwards (``Store.refresh_latent_counts``); until then the analyses notice that
the counts no longer add up to ``count(*)`` of ``doc_latents`` and scan it instead."""


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
    format: str = "saelens"
    force_reader: bool = False


class Store:
    """A saedb store in a DuckDB file. Use ``saedb.open(path)`` to get one."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._count_rows: int | None = None  # rows in latent_counts, once write_batch counted
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
            if found < known or migrations.pending(self.con):
                # An older store (or one that lacks a migration numbered below its newest):
                # upgrade it once (briefly read-write), then read as asked.
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
        register_udfs(self.con)  # embed_query(text): MiniLM, loaded on first call

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
                "d_sae, weights_sha256, path, config, sae_id, format, force_reader "
                f"FROM saes WHERE {col} = ?",
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

        The same transaction appends the batch's per-latent counts to ``latent_counts``
        (counted under ``dataset_id``: every document of a batch belongs to that dataset).
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
            self._add_latent_counts(sae_id, dataset_id, latents)
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
            self._count_rows = None  # the batch's latent_counts rows are gone too
            raise
        finally:
            for name in ("_batch_docs", "_batch_lat", "_batch_ids", "_batch_bad"):
                with contextlib.suppress(duckdb.Error):
                    con.unregister(name)
        return doc_ids

    def _add_latent_counts(self, sae_id: int, dataset_id: int, latents: pa.Table) -> None:
        """Append one latent_counts row per latent of the batch's ``latents`` (inside
        write_batch's transaction: they commit or roll back with the batch's rows); past
        COMPACT_LATENT_COUNTS_ROWS rows, fold the table to one row per key. The batch is
        aggregated here with pyarrow (cheaper than a GROUP BY statement for one batch) and
        appended: updating one row per key in place cost about twice as much."""
        con = self.con
        act = latents.column("max_act").cast(pa.float64())
        grouped = (
            pa.table(
                {
                    "latent_id": latents.column("latent_id").cast(pa.int32()),
                    "act": act,
                    "positive": pa.compute.greater(act, 0.0).cast(pa.int64()),
                }
            )
            .group_by("latent_id")
            .aggregate([("act", "count"), ("positive", "sum"), ("act", "sum"), ("act", "max")])
        )
        # select by name: the order of group_by's output columns varies between versions
        counts = pa.table(
            {
                "latent_id": grouped.column("latent_id"),
                "n_fired": grouped.column("act_count"),
                "n_positive": grouped.column("positive_sum"),
                "sum_max_act": grouped.column("act_sum"),
                "max_max_act": grouped.column("act_max"),
            }
        )
        con.register("_batch_counts", counts)
        try:
            con.execute(
                "INSERT INTO latent_counts SELECT ?, ?, latent_id, n_fired, n_positive, "
                "sum_max_act, max_max_act FROM _batch_counts",
                [sae_id, dataset_id],
            )
        finally:
            con.unregister("_batch_counts")
        if self._count_rows is None:
            self._count_rows = int(_first(con.execute("SELECT count(*) FROM latent_counts"))[0])
        else:
            self._count_rows += counts.num_rows
        if self._count_rows > COMPACT_LATENT_COUNTS_ROWS:
            con.execute(
                """
                CREATE TEMP TABLE _folded AS
                SELECT sae_id, dataset_id, latent_id, sum(n_fired) AS n_fired,
                       sum(n_positive) AS n_positive, sum(sum_max_act) AS sum_max_act,
                       max(max_max_act) AS max_max_act
                FROM latent_counts GROUP BY sae_id, dataset_id, latent_id
                ORDER BY sae_id, dataset_id, latent_id
                """
            )
            con.execute("DELETE FROM latent_counts")
            con.execute("INSERT INTO latent_counts SELECT * FROM _folded")
            con.execute("DROP TABLE _folded")
            self._count_rows = None  # counted again at the next batch

    def refresh_latent_counts(self) -> None:
        """Recompute latent_counts from doc_latents, doc_encodings and documents, in
        one transaction. ``write_batch`` and ``optimize`` keep them exact; this is for stores
        whose tables were written some other way (bulk SQL, a script)."""
        self._count_rows = None
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in REFRESH_LATENT_COUNTS_SQL:
                con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

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
        latents_k: int | None = None,
        min_similarity: float | None = None,
        rerank: Any = None,
    ) -> pd.DataFrame:
        """Documents scored by latent weights (``retrieve``): ``{12: 1.0, 40: 2.0}``, the
        CLI's form ``"12,40:2.0"``, or a text query (``"computers"``): then the ``latents_k``
        latents whose labels are most similar (``relevant_latents``; reranked by the LLM of
        ``rerank``, an ``saedb.llm.LLMConfig``, when given) weighted as
        ``saedb.query.query_weights`` says; the DataFrame's ``attrs["latents"]`` holds them."""
        from saedb.analysis_cli import is_text_query, parse_weights

        if isinstance(query, str) and is_text_query(query):
            from saedb.query import SEARCH_LATENTS, search_text

            chosen, docs = search_text(
                self,
                query,
                k=k,
                datasets=datasets,
                sae=sae,
                latents_k=latents_k or SEARCH_LATENTS,
                min_similarity=min_similarity,
                rerank_config=rerank,
            )
            frame = docs.to_pandas()
            frame.attrs["latents"] = chosen.to_pandas()
            return frame
        if isinstance(query, str):
            weights = parse_weights(query)
        else:
            weights = [{"latent_id": int(i), "weight": float(w)} for i, w in query.items()]
        return self.sql(
            "SELECT * FROM retrieve($w::STRUCT(latent_id INTEGER, weight DOUBLE)[], "
            "sae := $sae::INTEGER, k := $k::INTEGER, datasets := $ds::VARCHAR[])",
            {"w": weights, "sae": sae, "k": k, "ds": list(datasets) if datasets else None},
        )

    def cluster(
        self,
        latents: Sequence[int] | None = None,
        *,
        axis: str | None = None,
        latents_k: int | None = None,
        min_similarity: float | None = None,
        **options: Any,
    ):
        """Targeted spectral clustering on the given latents, or on the ``latents_k`` latents
        whose labels are most similar to ``axis`` (``"tone"``); see ``saedb.cluster.cluster``
        for ``options``. With ``axis`` the result's ``axis_latents`` says which were used."""
        from saedb.cluster import cluster

        if (latents is None) == (axis is None):
            raise ConfigError("cluster on latents=[...] or on axis='...', one of the two")
        if axis is None:
            return cluster(self, list(latents or []), **options)
        from saedb.query import AXIS_LATENTS, choose_latents

        chosen = choose_latents(
            self,
            axis,
            latents_k=latents_k or AXIS_LATENTS,
            sae=options.get("sae"),
            min_similarity=min_similarity,
        )
        result = cluster(self, chosen.column("latent_id").to_pylist(), **options)
        return dataclasses.replace(result, axis_latents=chosen)

    def relevant_latents(
        self,
        query: str,
        k: int = 20,
        *,
        sae: int | str | None = None,
        min_similarity: float | None = None,
    ) -> pd.DataFrame:
        """The ``k`` latents whose current labels are most similar to ``query`` (latent_id,
        label, description, similarity); see ``saedb.query.relevant_latents``."""
        from saedb.query import relevant_latents

        return relevant_latents(
            self, query, k=k, sae=sae, min_similarity=min_similarity
        ).to_pandas()

    def optimize(self) -> None:
        """Rewrite doc_latents clustered by (sae_id, latent_id, doc_id): the layout under which
        per-latent queries (diffing, retrieval, top documents) touch the fewest row groups.
        Recomputes latent_counts in the same transaction."""
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
            for statement in REFRESH_LATENT_COUNTS_SQL:
                con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            self._count_rows = None
        con.execute("CHECKPOINT")


def open(path: str | Path, *, read_only: bool = False) -> Store:  # noqa: A001 - saedb.open
    """Open (creating if needed) the store at ``path``."""
    return Store(path, read_only=read_only)
