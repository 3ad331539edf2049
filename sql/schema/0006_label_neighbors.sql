-- migration: 0006_label_neighbors
-- what: each labelled latent's nearest labels by embedding similarity (materialised, refreshed
--       by saedb after labelling), and a cache of embedded natural-language queries.
-- notes: label_neighbors holds, per (SAE, embedding model) and labelled latent, its k most
--        similar other labelled latents (cosine similarity of the current labels' embeddings),
--        rank 1 the most similar; label_id and neighbor_label_id record which label versions
--        were compared, so the view latent_label_neighbors can say when a row is stale.
--        saedb.label_neighbors.refresh_label_neighbors rewrites one (sae_id, model) in one
--        transaction (saedb label runs it at its end); label_neighbor_runs holds the latest
--        refresh of each (sae_id, model). query_embeddings caches the embedding of every query a saedb process has
--        embedded (saedb search with a text query, saedb embed-query): query is the text with
--        its whitespace collapsed to single spaces and trimmed, model the embedding model. The
--        table macro latents_for_query reads it, so a BI tool can reuse any cached query.

CREATE TABLE label_neighbors (
    sae_id             INTEGER NOT NULL,
    model              VARCHAR NOT NULL,
    latent_id          INTEGER NOT NULL,
    rank               INTEGER NOT NULL,
    neighbor_latent    INTEGER NOT NULL,
    similarity         DOUBLE NOT NULL,
    label_id           BIGINT NOT NULL,
    neighbor_label_id  BIGINT NOT NULL
);

CREATE TABLE label_neighbor_runs (
    sae_id       INTEGER NOT NULL,
    model        VARCHAR NOT NULL,
    k            INTEGER NOT NULL,
    n_latents    INTEGER NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE query_embeddings (
    query       VARCHAR NOT NULL CHECK (length(query) > 0),
    model       VARCHAR NOT NULL,
    embedding   FLOAT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (query, model)
);
