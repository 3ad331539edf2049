-- name: latent_frequency
-- kind: view
-- answers: How often does each latent of each SAE fire in each dataset, and how strongly?
-- inputs: latent_counts, doc_latents, doc_encodings, documents, datasets
-- grain: one row per (sae_id, dataset_id, latent_id) where the latent fired in at least one document of the dataset
-- notes: a dataset's size for an SAE is its documents with a row in doc_encodings for that SAE,
--   documents where nothing fired included. A latent "fired" in a document when doc_latents
--   has a row for it (ingestion writes one row per document, SAE and latent that fired);
--   doc_latents rows of documents not recorded in doc_encodings are not counted. Latents
--   that never fired in a dataset have no row (their frequency is 0). n_fired, mean_max_act
--   and max_max_act come from latent_counts (a few rows per latent, kept in step with
--   doc_latents by saedb's writers) while its n_fired add up to count(*) of doc_latents (a
--   check that costs milliseconds); otherwise, e.g. after a program wrote doc_latents
--   directly, the view scans doc_latents: the same result, slower.
-- column sae_id: the SAE (saes.sae_id)
-- column dataset_id: the dataset (datasets.dataset_id)
-- column dataset: the dataset's name
-- column latent_id: the latent (0 .. d_sae - 1)
-- column n_fired: documents of the dataset where the latent fired
-- column n_docs: documents of the dataset encoded with this SAE (the dataset size)
-- column frequency: n_fired / n_docs, the share of the dataset's documents where the latent fired
-- column mean_max_act: mean over the documents where it fired of the latent's peak activation
-- column max_max_act: the highest peak activation of the latent in the dataset
CREATE OR REPLACE VIEW latent_frequency AS
WITH fresh AS (
    -- does latent_counts account for every row of doc_latents?
    SELECT coalesce((SELECT sum(c.n_fired) FROM latent_counts AS c), 0)
        = (SELECT count(*) FROM doc_latents) AS ok
),
sizes AS (
    SELECT de.sae_id, d.dataset_id, count(*) AS n_docs
    FROM doc_encodings AS de
    JOIN documents AS d ON d.doc_id = de.doc_id
    GROUP BY de.sae_id, d.dataset_id
),
fired AS (
    -- a key may have several rows (write_batch appends a row per batch): add them up
    SELECT
        c.sae_id,
        c.dataset_id,
        c.latent_id,
        CAST(sum(c.n_fired) AS BIGINT) AS n_fired,
        sum(c.sum_max_act) / sum(c.n_fired) AS mean_max_act,
        CAST(max(c.max_max_act) AS DOUBLE) AS max_max_act
    FROM latent_counts AS c
    WHERE (SELECT ok FROM fresh)
    GROUP BY c.sae_id, c.dataset_id, c.latent_id
    HAVING sum(c.n_fired) > 0
    UNION ALL
    SELECT
        dl.sae_id,
        d.dataset_id,
        dl.latent_id,
        count(*) AS n_fired,
        avg(CAST(dl.max_act AS DOUBLE)) AS mean_max_act,
        CAST(max(dl.max_act) AS DOUBLE) AS max_max_act
    FROM doc_latents AS dl
    JOIN doc_encodings AS de ON de.doc_id = dl.doc_id AND de.sae_id = dl.sae_id
    JOIN documents AS d ON d.doc_id = dl.doc_id
    WHERE NOT (SELECT ok FROM fresh)
    GROUP BY dl.sae_id, d.dataset_id, dl.latent_id
)
SELECT
    f.sae_id,
    f.dataset_id,
    ds.name AS dataset,
    f.latent_id,
    f.n_fired,
    s.n_docs,
    CAST(f.n_fired AS DOUBLE) / s.n_docs AS frequency,
    f.mean_max_act,
    f.max_max_act
FROM fired AS f
JOIN sizes AS s ON s.sae_id = f.sae_id AND s.dataset_id = f.dataset_id
JOIN datasets AS ds ON ds.dataset_id = f.dataset_id;
