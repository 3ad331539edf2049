-- migration: 0003_clusters
-- what: targeted clustering runs (saedb.cluster.cluster, `saedb cluster`): one row per run with
--       its full configuration, and one row per (run, document) with the cluster it went to.
-- notes: cluster -1 holds the documents where none of the chosen latents fired (they have no
--        vector to cluster); n_clusters counts the other clusters. A run and its assignments
--        are written in one transaction.

CREATE TABLE cluster_runs (
    cluster_run_id  INTEGER PRIMARY KEY,
    sae_id          INTEGER NOT NULL,
    config          JSON NOT NULL,
    n_clusters      INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE cluster_assignments (
    cluster_run_id  INTEGER NOT NULL,
    doc_id          BIGINT NOT NULL,
    cluster         INTEGER NOT NULL,
    PRIMARY KEY (cluster_run_id, doc_id)
);
