-- migration: 0007_latent_counts
-- what: per-(SAE, dataset, latent) counts of doc_latents, kept in step with doc_latents, so
--       that latent_frequency and diff read a few rows per latent instead of scanning
--       doc_latents; backfilled here from the store.
-- notes: written only by saedb.store.Store: write_batch appends one row per latent of each
--        batch in the same transaction as the batch's rows, so the counts are exact after a
--        crash and a resume (appending costs a fraction of updating one row per key in
--        place). A key may therefore have several rows: the totals are their sums (and max),
--        which is what latent_frequency and diff compute. Past 1,000,000 rows write_batch
--        folds the table to one row per key, in the batch's transaction; optimize and
--        refresh_latent_counts recompute it from scratch. Rows of doc_latents whose document
--        has no doc_encodings row for the SAE are not counted (latent_frequency never counted
--        them). latent_frequency and diff use the counts only while sum(n_fired) equals
--        count(*) of doc_latents (a check that costs milliseconds) and otherwise scan
--        doc_latents as before, so a program that writes doc_latents directly still gets
--        correct results, only slower, until saedb optimize (or Store.refresh_latent_counts).

CREATE TABLE latent_counts (
    sae_id       INTEGER NOT NULL,
    dataset_id   INTEGER NOT NULL,
    latent_id    INTEGER NOT NULL,
    n_fired      BIGINT NOT NULL,   -- documents with a doc_latents row for the latent
    n_positive   BIGINT NOT NULL,   -- of those, documents where max_act > 0 (diff's default)
    sum_max_act  DOUBLE NOT NULL,   -- sum of max_act over those rows
    max_max_act  REAL NOT NULL      -- highest max_act
);

INSERT INTO latent_counts
SELECT
    dl.sae_id,
    d.dataset_id,
    dl.latent_id,
    count(*),
    count(*) FILTER (WHERE dl.max_act > 0),
    sum(CAST(dl.max_act AS DOUBLE)),
    max(dl.max_act)
FROM doc_latents AS dl
JOIN doc_encodings AS de ON de.doc_id = dl.doc_id AND de.sae_id = dl.sae_id
JOIN documents AS d ON d.doc_id = dl.doc_id
GROUP BY dl.sae_id, d.dataset_id, dl.latent_id
ORDER BY dl.sae_id, d.dataset_id, dl.latent_id;
