-- name: diff
-- kind: table_macro
-- answers: Which latents fire more often in dataset a than in dataset b, and is the difference more than chance?
-- inputs: doc_latents, doc_encodings, documents, datasets, settings
-- grain: one row per latent that fired in a or b and passes the coverage filter, sorted by difference, largest first
-- params: a, b, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0
-- param a: name of the first dataset (datasets.name)
-- param b: name of the second dataset
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_freq: keep latents whose frequency over both datasets together is at least this
-- param max_freq: keep latents whose frequency over both datasets together is at most this
-- param threshold: a latent fired in a document when its max_act there is above this (compared as
--   REAL, the precision max_act is stored in, so a threshold equal to a stored value as printed excludes it)
-- depends: diff_doc_sets
-- notes: a dataset's size is its documents encoded with the SAE (rows in doc_encodings),
--   documents where nothing fired included; an unknown dataset name, or a dataset with no
--   documents encoded with the SAE, is an error. The test is the two-sided two-proportion
--   z-test with the pooled proportion p = (n_a + n_b) / (size_a + size_b):
--   z = (freq_a - freq_b) / sqrt(p (1 - p) (1 / size_a + 1 / size_b)), p_value = 2 normal_sf(|z|);
--   when p is 1 (fired in every document of both) there is no difference and p_value is 1.
--   Latents that fired in neither dataset are not tested and not returned; q_value is the
--   Benjamini-Hochberg adjusted p-value over the latents returned (those passing the coverage
--   filter). relative_difference is freq_a / freq_b; it is +Infinity (DOUBLE 'inf') for a
--   latent that fired only in a and 0 for one that fired only in b (use isinf() to filter).
--   When a and b are the same dataset every difference is 0 and every p_value is 1.
--   The statistics are diff_doc_sets's, on the documents of a and of b.
-- column latent_id: the latent
-- column freq_a: share of the documents of a where the latent fired (n_a / size_a)
-- column freq_b: share of the documents of b where the latent fired (n_b / size_b)
-- column difference: freq_a - freq_b
-- column relative_difference: freq_a / freq_b; +Infinity when it fired only in a
-- column n_a: documents of a where the latent fired
-- column n_b: documents of b where the latent fired
-- column size_a: documents of a encoded with the SAE
-- column size_b: documents of b encoded with the SAE
-- column p_value: two-sided p-value of the pooled two-proportion z-test
-- column q_value: Benjamini-Hochberg adjusted p-value (false discovery rate) over the latents returned
CREATE OR REPLACE MACRO diff(
    a, b, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0
) AS TABLE
SELECT *
FROM diff_doc_sets(
    (
        SELECT list(d.doc_id)
        FROM documents AS d
        WHERE d.dataset_id = coalesce(
            (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = a),
            error('diff: there is no dataset named ' || a)
        )
    ),
    (
        SELECT list(d.doc_id)
        FROM documents AS d
        WHERE d.dataset_id = coalesce(
            (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = b),
            error('diff: there is no dataset named ' || b)
        )
    ),
    sae := sae,
    min_freq := min_freq,
    max_freq := max_freq,
    threshold := threshold,
    label_a := 'diff: dataset ' || a,
    label_b := 'diff: dataset ' || b
)
ORDER BY difference DESC, latent_id;
