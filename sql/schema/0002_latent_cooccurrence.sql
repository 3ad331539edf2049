-- migration: 0002_latent_cooccurrence
-- what: the materialised co-occurrence of latents (NPMI of every pair of latents that fired
--       together in at least min_count documents), one set of rows per (SAE, scope), and a
--       table recording how each (SAE, scope) was computed.
-- notes: written only by saedb.cooccurrence.refresh_cooccurrence, which replaces all rows of
--        one (sae_id, scope) in one transaction. scope names the set of datasets: 'all' for
--        every dataset, else the sorted dataset names joined with ',' (a ',' or '\' inside a
--        name is escaped with '\', and a dataset literally named all is written '\all').
--        Each pair is stored once, latent_i < latent_j; the view latent_npmi shows both ways.
--        No primary key or index on latent_cooccurrence on purpose: an ART index over
--        ~100M pairs costs more memory and insert time than the zone maps it would beat
--        (rows are appended sorted by latent_i, latent_j within each (sae_id, scope)).

CREATE TABLE latent_cooccurrence (
    sae_id       INTEGER NOT NULL,
    scope        VARCHAR NOT NULL,
    latent_i     INTEGER NOT NULL,
    latent_j     INTEGER NOT NULL,
    n_i          BIGINT NOT NULL,
    n_j          BIGINT NOT NULL,
    n_both       BIGINT NOT NULL,
    n_docs       BIGINT NOT NULL,
    npmi         DOUBLE NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL,
    CHECK (latent_i < latent_j)
);

-- One row per (SAE, scope) computed: the parameters the rows of latent_cooccurrence were
-- computed with, so a scope with zero pairs is told apart from one never computed.
CREATE TABLE latent_cooccurrence_scopes (
    sae_id       INTEGER NOT NULL,
    scope        VARCHAR NOT NULL,
    datasets     VARCHAR[],
    min_count    BIGINT NOT NULL,
    threshold    DOUBLE NOT NULL,
    n_docs       BIGINT NOT NULL,
    n_latents    BIGINT NOT NULL,
    n_pairs      BIGINT NOT NULL,
    computed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sae_id, scope)
);
