-- name: diff
-- kind: table_macro
-- answers: Which latents fire more often in dataset a than in dataset b, and is the difference more than chance?
-- inputs: latent_counts, doc_latents, doc_encodings, documents, datasets, settings
-- grain: one row per latent that fired in a or b and passes the coverage filter, sorted by difference, largest first
-- params: a, b, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0
-- param a: name of the first dataset (datasets.name)
-- param b: name of the second dataset
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_freq: keep latents whose frequency over both datasets together is at least this
-- param max_freq: keep latents whose frequency over both datasets together is at most this
-- param threshold: a latent fired in a document when its max_act there is above this (compared as
--   REAL, the precision max_act is stored in, so a threshold equal to a stored value as printed excludes it)
-- depends: diff_doc_sets, resolve_sae
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
--   The statistics are diff_doc_sets's, on the documents of a and of b. With the default
--   threshold (0) the counts come from latent_counts (kept in step with doc_latents by
--   saedb's writers: a few rows per latent and dataset instead of a scan of doc_latents)
--   while its n_fired add up to count(*) of doc_latents; with another threshold, or stale
--   counts, diff scans doc_latents. Both ways give the same result.
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
        AND NOT (
            CAST(threshold AS REAL) = 0
            AND coalesce((SELECT sum(c.n_fired) FROM latent_counts AS c), 0)
                = (SELECT count(*) FROM doc_latents)
        )
    ),
    (
        SELECT list(d.doc_id)
        FROM documents AS d
        WHERE d.dataset_id = coalesce(
            (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = b),
            error('diff: there is no dataset named ' || b)
        )
        AND NOT (
            CAST(threshold AS REAL) = 0
            AND coalesce((SELECT sum(c.n_fired) FROM latent_counts AS c), 0)
                = (SELECT count(*) FROM doc_latents)
        )
    ),
    sae := sae,
    min_freq := min_freq,
    max_freq := max_freq,
    threshold := threshold,
    label_a := 'diff: dataset ' || a,
    label_b := 'diff: dataset ' || b,
    -- the counts kept in latent_counts, when they may be used (else NULL: diff_doc_sets scans)
    precounted := (
        SELECT {
            'size_a': (
                SELECT count(*)
                FROM doc_encodings AS de
                JOIN documents AS d ON d.doc_id = de.doc_id
                WHERE de.sae_id = resolve_sae(sae) AND d.dataset_id = ids.id_a
            ),
            'size_b': (
                SELECT count(*)
                FROM doc_encodings AS de
                JOIN documents AS d ON d.doc_id = de.doc_id
                WHERE de.sae_id = resolve_sae(sae) AND d.dataset_id = ids.id_b
            ),
            'fired': coalesce((
                SELECT list({'latent_id': f.latent_id, 'n_a': f.n_a, 'n_b': f.n_b})
                FROM (
                    SELECT
                        lc.latent_id,
                        coalesce(sum(lc.n_positive) FILTER (WHERE lc.dataset_id = ids.id_a), 0)
                            AS n_a,
                        coalesce(sum(lc.n_positive) FILTER (WHERE lc.dataset_id = ids.id_b), 0)
                            AS n_b
                    FROM latent_counts AS lc
                    WHERE lc.sae_id = resolve_sae(sae)
                      AND lc.dataset_id IN (ids.id_a, ids.id_b)
                    GROUP BY lc.latent_id
                    HAVING sum(lc.n_positive) > 0
                ) AS f
            ), [])
        }
        FROM (
            SELECT
                coalesce(
                    (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = a),
                    error('diff: there is no dataset named ' || a)
                ) AS id_a,
                coalesce(
                    (SELECT ds.dataset_id FROM datasets AS ds WHERE ds.name = b),
                    error('diff: there is no dataset named ' || b)
                ) AS id_b
        ) AS ids
        WHERE CAST(threshold AS REAL) = 0
          AND coalesce((SELECT sum(c.n_fired) FROM latent_counts AS c), 0)
              = (SELECT count(*) FROM doc_latents)
    )
)
ORDER BY difference DESC, latent_id;
