-- name: diff_one_vs_rest
-- kind: table_macro
-- answers: Which latents fire more often in one dataset than in all the other datasets (or a ovr_dataset list of them), and is the difference more than chance?
-- inputs: doc_latents, doc_encodings, documents, datasets, settings
-- grain: one row per latent that fired in the dataset or the rest and passes the coverage filter, sorted by difference, largest first
-- params: dataset, datasets := NULL, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0
-- param dataset: name of the dataset to compare (datasets.name); it is side a
-- param datasets: LIST of dataset names that make up the rest (side b); NULL means every other dataset
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_freq: keep latents whose frequency over the dataset and the rest together is at least this
-- param max_freq: keep latents whose frequency over the dataset and the rest together is at most this
-- param threshold: a latent fired in a document when its max_act there is above this (compared as REAL)
-- depends: diff_doc_sets
-- notes: the same statistics and columns as diff, with a = the dataset and b = the rest
--   (see diff_doc_sets). The dataset itself is never part of the rest, even when it is named
--   in datasets. An unknown dataset name (in dataset or in datasets) is an error, and so is a
--   side with no documents encoded with the SAE (e.g. a store with a single dataset).
-- column latent_id: the latent
-- column freq_a: share of the documents of the dataset where the latent fired (n_a / size_a)
-- column freq_b: share of the documents of the rest where the latent fired (n_b / size_b)
-- column difference: freq_a - freq_b
-- column relative_difference: freq_a / freq_b; +Infinity when it fired only in the dataset
-- column n_a: documents of the dataset where the latent fired
-- column n_b: documents of the rest where the latent fired
-- column size_a: documents of the dataset encoded with the SAE
-- column size_b: documents of the rest encoded with the SAE
-- column p_value: two-sided p-value of the pooled two-proportion z-test
-- column q_value: Benjamini-Hochberg adjusted p-value (false discovery rate) over the latents returned
CREATE OR REPLACE MACRO diff_one_vs_rest(
    dataset, datasets := NULL, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0
) AS TABLE
WITH ovr_unknown AS (
    SELECT string_agg(u.name, ', ' ORDER BY u.name) AS names
    FROM (SELECT unnest(datasets) AS name) AS u
    ANTI JOIN datasets AS ds ON ds.name = u.name
),
ovr_dataset AS (
    SELECT
        CASE WHEN un.names IS NOT NULL
            THEN error('diff_one_vs_rest: there is no dataset named ' || un.names)
            ELSE coalesce(
                (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = dataset),
                error('diff_one_vs_rest: there is no dataset named ' || dataset)
            ) END AS id_a
    FROM ovr_unknown AS un
),
ovr_rest AS (
    SELECT ds.dataset_id
    FROM datasets AS ds
    CROSS JOIN ovr_dataset AS c
    WHERE ds.dataset_id <> c.id_a
      AND (datasets IS NULL OR list_contains(datasets, ds.name))
)
SELECT *
FROM diff_doc_sets(
    (
        SELECT list(d.doc_id)
        FROM documents AS d
        JOIN ovr_dataset AS c ON d.dataset_id = c.id_a
    ),
    (
        SELECT list(d.doc_id)
        FROM documents AS d
        JOIN ovr_rest AS r ON d.dataset_id = r.dataset_id
    ),
    sae := sae,
    min_freq := min_freq,
    max_freq := max_freq,
    threshold := threshold,
    label_a := 'diff_one_vs_rest: dataset ' || dataset,
    label_b := 'diff_one_vs_rest: the rest (the datasets other than ' || dataset || ')'
)
ORDER BY difference DESC, latent_id;
