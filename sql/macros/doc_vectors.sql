-- name: doc_vectors
-- kind: table_macro
-- answers: Which of a chosen list of latents fired in each encoded document: the binarized document x latent input for clustering documents on those latents.
-- inputs: doc_latents, doc_encodings, documents, datasets, settings
-- grain: one row per document encoded with the SAE (in the chosen datasets), including documents where none of the latents fired, by doc_id
-- params: latents, sae := NULL, threshold := 0.0, datasets := NULL
-- param latents: LIST of latent ids (INTEGER) to keep, e.g. [12, 40, 977]; duplicates count once
-- param sae: the SAE id; NULL means the store's default SAE
-- param threshold: a latent fired in a document when its max_act there is above this (compared as REAL)
-- param datasets: LIST of dataset names (datasets.name); NULL means all datasets
-- depends: resolve_sae
-- notes: a client builds the 0/1 matrix from it: one row per output row, one column per entry
--   of latents, 1 where the latent is in active, e.g. in Python
--   X[i, [col[l] for l in active]] = 1 with col = {l: j for j, l in enumerate(latents)}
--   (scipy.sparse from the same indices for large inputs). Documents where none of the
--   latents fired have an empty active list (never NULL) and n_active 0; documents not
--   encoded with the SAE are not returned. doc_latents is filtered by joining the small list
--   of latents, which is fast on the latent-sorted layout. An unknown dataset name is an error.
-- column doc_id: the document
-- column dataset: the name of the document's dataset
-- column active: LIST of the listed latents that fired in the document, ascending
-- column n_active: how many of the listed latents fired in the document (length of active)
CREATE OR REPLACE MACRO doc_vectors(latents, sae := NULL, threshold := 0.0, datasets := NULL) AS TABLE
WITH dv_unknown AS (
    SELECT string_agg(u.name, ', ' ORDER BY u.name) AS names
    FROM (SELECT unnest(datasets) AS name) AS u
    ANTI JOIN datasets AS ds ON ds.name = u.name
),
dv_scope AS (
    SELECT ds.dataset_id, ds.name
    FROM datasets AS ds
    WHERE datasets IS NULL OR list_contains(datasets, ds.name)
),
dv_latents AS (
    SELECT DISTINCT CAST(l.latent_id AS INTEGER) AS latent_id
    FROM (SELECT unnest(latents) AS latent_id) AS l
    WHERE l.latent_id IS NOT NULL
),
dv_fired AS (
    SELECT dl.doc_id, list(dl.latent_id ORDER BY dl.latent_id) AS active
    FROM doc_latents AS dl
    JOIN dv_latents AS l ON dl.latent_id = l.latent_id
    WHERE dl.sae_id = resolve_sae(sae)
      AND dl.max_act > CAST(threshold AS REAL)
    GROUP BY dl.doc_id
)
SELECT
    de.doc_id,
    s.name AS dataset,
    coalesce(f.active, CAST([] AS INTEGER[])) AS active,
    CAST(coalesce(len(f.active), 0) AS INTEGER) AS n_active
FROM doc_encodings AS de
JOIN documents AS d ON d.doc_id = de.doc_id
JOIN dv_scope AS s ON s.dataset_id = d.dataset_id
LEFT JOIN dv_fired AS f ON f.doc_id = de.doc_id
WHERE de.sae_id = resolve_sae(sae)
-- never yields a row; its filter raises the error for unknown dataset names, whatever matched
UNION ALL
SELECT NULL, NULL, NULL, NULL
FROM dv_unknown AS un
WHERE CASE WHEN un.names IS NULL THEN false
    ELSE error('doc_vectors: there is no dataset named ' || un.names) END
ORDER BY doc_id;
