-- name: diff_doc_sets
-- kind: table_macro
-- answers: The statistics behind diff, diff_one_vs_rest and diff_metadata: which latents fire more often in one set of documents than in another, and is the difference more than chance?
-- inputs: doc_latents, doc_encodings, settings
-- grain: one row per latent that fired in set a or set b and passes the coverage filter, sorted by difference, largest first
-- params: docs_a, docs_b, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0, label_a := 'diff_doc_sets: document set a', label_b := 'diff_doc_sets: document set b', precounted := NULL
-- param docs_a: LIST of doc_ids, the first set (duplicates count once; documents not encoded with the SAE are left out)
-- param docs_b: LIST of doc_ids, the second set (may overlap docs_a)
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_freq: keep latents whose frequency over both sets together is at least this
-- param max_freq: keep latents whose frequency over both sets together is at most this
-- param threshold: a latent fired in a document when its max_act there is above this (compared as
--   REAL, the precision max_act is stored in, so a threshold equal to a stored value as printed excludes it)
-- param label_a: how errors name set a: the error reads label_a || ' has no documents encoded with SAE ' || sae
-- param label_b: how errors name set b
-- param precounted: NULL (the default), or the counts already known, as STRUCT(size_a BIGINT,
--   size_b BIGINT, fired STRUCT(latent_id INTEGER, n_a BIGINT, n_b BIGINT)[]): then docs_a, docs_b
--   and threshold are not used and doc_latents is not read (diff passes the counts kept in
--   latent_counts; fired lists the latents with n_a + n_b > 0)
-- depends: resolve_sae, normal_sf
-- notes: a set's size is its documents encoded with the SAE (rows in doc_encodings), documents
--   where nothing fired included; a set with no such documents (an empty or NULL list
--   included) is an error. A document in both sets counts in both. The test is the two-sided
--   two-proportion z-test with the pooled proportion p = (n_a + n_b) / (size_a + size_b):
--   z = (freq_a - freq_b) / sqrt(p (1 - p) (1 / size_a + 1 / size_b)), p_value = 2 normal_sf(|z|);
--   when p is 1 (fired in every document of both) there is no difference and p_value is 1.
--   Latents that fired in neither set are not tested and not returned; q_value is the
--   Benjamini-Hochberg adjusted p-value over the latents returned (those passing the coverage
--   filter). relative_difference is freq_a / freq_b; it is +Infinity (DOUBLE 'inf') for a
--   latent that fired only in a and 0 for one that fired only in b (use isinf() to filter).
--   diff, diff_one_vs_rest and diff_metadata build the two lists and call this macro; the
--   macro's own CTEs are named dds_*, so subqueries passed in must not use those names.
--   With precounted given, the same statistics are computed from its counts and sizes.
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
CREATE OR REPLACE MACRO diff_doc_sets(
    docs_a, docs_b, sae := NULL, min_freq := 0.0, max_freq := 1.0, threshold := 0.0,
    label_a := 'diff_doc_sets: document set a', label_b := 'diff_doc_sets: document set b',
    precounted := NULL
) AS TABLE
WITH dds_sae AS (
    SELECT resolve_sae(sae) AS sae_id
),
dds_pre AS (
    SELECT CAST(precounted AS STRUCT(
        size_a BIGINT, size_b BIGINT, fired STRUCT(latent_id INTEGER, n_a BIGINT, n_b BIGINT)[]
    )) AS p
),
dds_marked AS (
    -- membership by semi-join on doc_encodings (not a GROUP BY over the unnested lists) keeps
    -- doc_encodings' statistics on doc_id, so the big join below can be a perfect hash join
    SELECT
        de.doc_id,
        de.doc_id IN (SELECT CAST(unnest(docs_a) AS BIGINT)) AS in_a,
        de.doc_id IN (SELECT CAST(unnest(docs_b) AS BIGINT)) AS in_b
    FROM doc_encodings AS de
    JOIN dds_sae AS c ON de.sae_id = c.sae_id
    WHERE (SELECT pre.p IS NULL FROM dds_pre AS pre)
),
dds_docs AS (
    SELECT doc_id, in_a, in_b
    FROM dds_marked
    WHERE in_a OR in_b
),
dds_counted AS (
    SELECT
        coalesce((SELECT pre.p.size_a FROM dds_pre AS pre), count(*) FILTER (WHERE in_a))
            AS size_a,
        coalesce((SELECT pre.p.size_b FROM dds_pre AS pre), count(*) FILTER (WHERE in_b))
            AS size_b
    FROM dds_docs
),
dds_sizes AS (
    SELECT
        CASE WHEN size_a = 0
            THEN error(label_a || ' has no documents encoded with SAE ' || resolve_sae(sae))
            ELSE size_a END AS size_a,
        CASE WHEN size_b = 0
            THEN error(label_b || ' has no documents encoded with SAE ' || resolve_sae(sae))
            ELSE size_b END AS size_b
    FROM dds_counted
),
dds_fired AS (
    SELECT
        dl.latent_id,
        count(*) FILTER (WHERE dds_docs.in_a) AS n_a,
        count(*) FILTER (WHERE dds_docs.in_b) AS n_b
    FROM doc_latents AS dl
    JOIN dds_sae AS c ON dl.sae_id = c.sae_id
    JOIN dds_docs ON dds_docs.doc_id = dl.doc_id
    WHERE dl.max_act > CAST(threshold AS REAL)
      AND (SELECT pre.p IS NULL FROM dds_pre AS pre)
    GROUP BY dl.latent_id
    UNION ALL
    SELECT u.f.latent_id, u.f.n_a, u.f.n_b
    FROM (SELECT unnest(pre.p.fired) AS f FROM dds_pre AS pre) AS u
),
dds_tested AS (
    SELECT
        f.latent_id,
        f.n_a,
        f.n_b,
        s.size_a,
        s.size_b,
        CAST(f.n_a AS DOUBLE) / s.size_a AS freq_a,
        CAST(f.n_b AS DOUBLE) / s.size_b AS freq_b,
        CAST(f.n_a + f.n_b AS DOUBLE) / (s.size_a + s.size_b) AS pooled
    FROM dds_fired AS f
    CROSS JOIN dds_sizes AS s
    WHERE CAST(f.n_a + f.n_b AS DOUBLE) / (s.size_a + s.size_b) BETWEEN min_freq AND max_freq
),
dds_scored AS (
    SELECT
        *,
        CASE WHEN pooled >= 1.0 THEN 1.0
            ELSE least(1.0, 2.0 * normal_sf(
                abs(freq_a - freq_b)
                / sqrt(pooled * (1.0 - pooled) * (1.0 / size_a + 1.0 / size_b))
            )) END AS p_value
    FROM dds_tested
),
dds_ranked AS (
    SELECT
        *,
        row_number() OVER (ORDER BY p_value, latent_id) AS p_rank,
        count(*) OVER () AS n_tested
    FROM dds_scored
),
dds_result AS (
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
    FROM dds_ranked
)
SELECT * FROM dds_result
-- the sizes are checked even when nothing fired (no row to cross join them with): this
-- branch never yields a row, but computing its filter raises the error for an empty set
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, size_a, size_b, NULL, NULL
FROM dds_sizes
WHERE size_a < 0 OR size_b < 0
ORDER BY difference DESC, latent_id;
