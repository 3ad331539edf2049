-- migration: 0001_core
-- what: the core tables of a saedb store: datasets, documents, SAEs, the long doc_latents
--       table (one row per document x latent that fired), ingest runs and bad input rows.
-- notes: doc_latents has no index on purpose: DuckDB's zone maps on latent-sorted data beat an
--        ART index for the analyses (see docs/design.md); ingestion writes each batch sorted by
--        (sae_id, latent_id, doc_id) and `saedb optimize` re-clusters the whole table.

CREATE TABLE datasets (
    dataset_id   INTEGER PRIMARY KEY,
    name         VARCHAR NOT NULL UNIQUE,
    description  VARCHAR,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE documents (
    doc_id       BIGINT PRIMARY KEY,
    dataset_id   INTEGER NOT NULL REFERENCES datasets (dataset_id),
    external_id  VARCHAR NOT NULL,
    text         VARCHAR NOT NULL,
    text_sha256  VARCHAR NOT NULL,
    n_tokens     INTEGER NOT NULL,
    metadata     JSON,
    ingested_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    run_id       INTEGER NOT NULL,
    UNIQUE (dataset_id, external_id)
);

CREATE TABLE saes (
    sae_id          INTEGER PRIMARY KEY,
    name            VARCHAR NOT NULL UNIQUE,
    reader_model    VARCHAR NOT NULL,
    reader_revision VARCHAR,
    hook_name       VARCHAR NOT NULL,
    layer           INTEGER NOT NULL,
    architecture    VARCHAR NOT NULL,
    d_in            INTEGER NOT NULL,
    d_sae           INTEGER NOT NULL,
    weights_sha256  VARCHAR NOT NULL,
    path            VARCHAR NOT NULL,
    config          JSON NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE doc_latents (
    doc_id          BIGINT NOT NULL,
    sae_id          INTEGER NOT NULL,
    latent_id       INTEGER NOT NULL,
    max_act         REAL NOT NULL,
    sum_act         REAL NOT NULL,
    n_active        INTEGER NOT NULL,
    max_char_start  INTEGER NOT NULL,
    max_char_end    INTEGER NOT NULL
);

-- One row per (document, SAE) that was encoded, including documents where no latent fired,
-- so "was this document encoded with this SAE" never depends on doc_latents having rows.
CREATE TABLE doc_encodings (
    doc_id     BIGINT NOT NULL,
    sae_id     INTEGER NOT NULL,
    run_id     INTEGER NOT NULL,
    n_latents  INTEGER NOT NULL,
    PRIMARY KEY (doc_id, sae_id)
);

CREATE TABLE ingest_runs (
    run_id       INTEGER PRIMARY KEY,
    config       JSON NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    finished_at  TIMESTAMPTZ,
    n_docs       BIGINT NOT NULL DEFAULT 0,
    n_tokens     BIGINT NOT NULL DEFAULT 0,
    n_bad_rows   BIGINT NOT NULL DEFAULT 0,
    n_skipped    BIGINT NOT NULL DEFAULT 0,
    status       VARCHAR NOT NULL DEFAULT 'running',
    error        VARCHAR
);

-- Input rows that could not be ingested, kept so nothing is silently dropped.
CREATE TABLE bad_rows (
    run_id   INTEGER NOT NULL,
    source   VARCHAR NOT NULL,
    line     BIGINT NOT NULL,
    error    VARCHAR NOT NULL,
    raw      VARCHAR
);

-- Store-wide settings (default SAE, ...), as key/value text.
CREATE TABLE settings (
    key    VARCHAR PRIMARY KEY,
    value  VARCHAR NOT NULL
);
