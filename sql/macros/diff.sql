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
-- depends: resolve_sae, normal_sf
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
WITH chosen AS (
    SELECT
        resolve_sae(sae) AS sae_id,
        coalesce(
            (SELECT dataset_id FROM datasets WHERE name = a),
            error('diff: there is no dataset named ' || a)
        ) AS id_a,
        coalesce(
            (SELECT dataset_id FROM datasets WHERE name = b),
            error('diff: there is no dataset named ' || b)
        ) AS id_b
),
docs AS (
    SELECT de.doc_id, d.dataset_id = c.id_a AS in_a, d.dataset_id = c.id_b AS in_b
    FROM doc_encodings AS de
    JOIN documents AS d ON d.doc_id = de.doc_id
    JOIN chosen AS c ON de.sae_id = c.sae_id AND d.dataset_id IN (c.id_a, c.id_b)
),
sizes AS (
    SELECT
        CASE WHEN count(*) FILTER (WHERE in_a) = 0
            THEN error('diff: dataset ' || a || ' has no documents encoded with SAE ' || resolve_sae(sae))
            ELSE count(*) FILTER (WHERE in_a) END AS size_a,
        CASE WHEN count(*) FILTER (WHERE in_b) = 0
            THEN error('diff: dataset ' || b || ' has no documents encoded with SAE ' || resolve_sae(sae))
            ELSE count(*) FILTER (WHERE in_b) END AS size_b
    FROM docs
),
fired AS (
    SELECT
        dl.latent_id,
        count(*) FILTER (WHERE docs.in_a) AS n_a,
        count(*) FILTER (WHERE docs.in_b) AS n_b
    FROM doc_latents AS dl
    JOIN chosen AS c ON dl.sae_id = c.sae_id
    JOIN docs ON docs.doc_id = dl.doc_id
    WHERE dl.max_act > CAST(threshold AS REAL)
    GROUP BY dl.latent_id
),
tested AS (
    SELECT
        f.latent_id,
        f.n_a,
        f.n_b,
        s.size_a,
        s.size_b,
        CAST(f.n_a AS DOUBLE) / s.size_a AS freq_a,
        CAST(f.n_b AS DOUBLE) / s.size_b AS freq_b,
        CAST(f.n_a + f.n_b AS DOUBLE) / (s.size_a + s.size_b) AS pooled
    FROM fired AS f
    CROSS JOIN sizes AS s
    WHERE CAST(f.n_a + f.n_b AS DOUBLE) / (s.size_a + s.size_b) BETWEEN min_freq AND max_freq
),
scored AS (
    SELECT
        *,
        CASE WHEN pooled >= 1.0 THEN 1.0
            ELSE least(1.0, 2.0 * normal_sf(
                abs(freq_a - freq_b)
                / sqrt(pooled * (1.0 - pooled) * (1.0 / size_a + 1.0 / size_b))
            )) END AS p_value
    FROM tested
),
ranked AS (
    SELECT
        *,
        row_number() OVER (ORDER BY p_value, latent_id) AS p_rank,
        count(*) OVER () AS n_tested
    FROM scored
)
SELECT
    latent_id,
    freq_a,
    freq_b,
    freq_a - freq_b AS difference,
    CASE WHEN freq_b > 0 THEN freq_a / freq_b ELSE CAST('inf' AS DOUBLE) END
        AS relative_difference,
    n_a,
    n_b,
    size_a,
    size_b,
    p_value,
    least(1.0, min(p_value * n_tested / p_rank) OVER (
        ORDER BY p_value DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )) AS q_value
FROM ranked
ORDER BY difference DESC, latent_id;
