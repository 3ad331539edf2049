-- name: diff_metadata
-- kind: table_macro
-- answers: Which latents fire more often in documents whose metadata has one value of a key than in those with another value, and is the difference more than chance?
-- inputs: doc_latents, doc_encodings, documents, datasets, settings
-- grain: one row per latent that fired in group a or group b and passes the coverage filter, sorted by difference, largest first
-- params: key, value_a, value_b, dataset := NULL, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0
-- param key: the metadata key: a top-level key name of documents.metadata, or a JSON path starting with $
-- param value_a: group a is the documents where metadata->>key equals this (compared as text)
-- param value_b: group b is the documents where metadata->>key equals this (compared as text)
-- param dataset: name of a dataset to stay inside (datasets.name); NULL means all datasets
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_freq: keep latents whose frequency over both groups together is at least this
-- param max_freq: keep latents whose frequency over both groups together is at most this
-- param threshold: a latent fired in a document when its max_act there is above this (compared as REAL)
-- depends: diff_doc_sets
-- notes: the same statistics and columns as diff, with a and b the two groups of documents
--   (see diff_doc_sets). Values are compared as the text ->> returns: a JSON number 2020
--   matches '2020' (or 2020, cast to text), true matches 'true', a string matches without its
--   quotes. Documents whose metadata lacks the key (or is NULL, or has JSON null there) are in
--   neither group. A group with no documents encoded with the SAE is an error naming the key
--   and the value, and so is an unknown dataset name.
-- column latent_id: the latent
-- column freq_a: share of the documents of group a where the latent fired (n_a / size_a)
-- column freq_b: share of the documents of group b where the latent fired (n_b / size_b)
-- column difference: freq_a - freq_b
-- column relative_difference: freq_a / freq_b; +Infinity when it fired only in group a
-- column n_a: documents of group a where the latent fired
-- column n_b: documents of group b where the latent fired
-- column size_a: documents of group a encoded with the SAE
-- column size_b: documents of group b encoded with the SAE
-- column p_value: two-sided p-value of the pooled two-proportion z-test
-- column q_value: Benjamini-Hochberg adjusted p-value (false discovery rate) over the latents returned
CREATE OR REPLACE MACRO diff_metadata(
    key, value_a, value_b, dataset := NULL, sae := NULL,
    min_freq := 0.0, max_freq := 1.0, threshold := 0.0
) AS TABLE
WITH dm_scope AS (
    SELECT
        CASE WHEN dataset IS NULL THEN NULL
            ELSE coalesce(
                (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = dataset),
                error('diff_metadata: there is no dataset named ' || dataset)
            ) END AS dataset_id
),
dm_docs AS (
    SELECT d.doc_id, d.metadata ->> CAST(key AS VARCHAR) AS value
    FROM documents AS d
    CROSS JOIN dm_scope AS s
    WHERE s.dataset_id IS NULL OR d.dataset_id = s.dataset_id
)
SELECT *
FROM diff_doc_sets(
    (SELECT list(m.doc_id) FROM dm_docs AS m WHERE m.value = CAST(value_a AS VARCHAR)),
    (SELECT list(m.doc_id) FROM dm_docs AS m WHERE m.value = CAST(value_b AS VARCHAR)),
    sae := sae,
    min_freq := min_freq,
    max_freq := max_freq,
    threshold := threshold,
    label_a := 'diff_metadata: metadata ' || key || ' = ' || CAST(value_a AS VARCHAR)
        || coalesce(' in dataset ' || dataset, ''),
    label_b := 'diff_metadata: metadata ' || key || ' = ' || CAST(value_b AS VARCHAR)
        || coalesce(' in dataset ' || dataset, '')
)
ORDER BY difference DESC, latent_id;
