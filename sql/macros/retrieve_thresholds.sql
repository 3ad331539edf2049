-- name: retrieve_thresholds
-- kind: table_macro
-- answers: Above which contribution does each latent of a retrieve query make a document worth scoring, and from what statistics was that chosen?
-- inputs: latent_counts, datasets, settings
-- grain: one row per distinct latent of weights (a latent listed twice has its weights added up; NULL latent ids and weights are left out)
-- params: weights, sae := NULL, k := 100, datasets := NULL
-- param weights: LIST of STRUCT(latent_id INTEGER, weight DOUBLE), as retrieve takes it
-- param sae: the SAE id; NULL means the store's default SAE
-- param k: how many documents the retrieve query asks for
-- param datasets: LIST of dataset names the query searches (datasets.name); NULL means all datasets
-- depends: resolve_sae
-- notes: retrieve's first pass sums, per document, only the rows whose contribution
--   (weight * max_act) is above its latent's threshold; a document with no such row scores at
--   most the sum of the thresholds, so when that sum is below the k-th best of the first pass
--   those documents cannot be in the top k and are never aggregated
--   (docs/design.md#retrieve-a-bound-that-skips-most-documents).
--   The thresholds only decide how much work that saves, never the result: retrieve checks the
--   bound on the data and otherwise scores every document. They are chosen from latent_counts
--   (counts and mean activations, which may lag doc_latents or be empty: then the latent's
--   threshold is 0 and all of its rows are summed) by modelling each latent's contributions as
--   exponential with that mean: budget is 0.6 times the estimated k-th largest contribution of
--   the most promising latent (mean * ln(n / k)), and the thresholds, which add up to budget,
--   minimise the expected number of rows above them (water-filling: threshold = mean *
--   (ln(n / mean) - ln lambda), or 0). Latents with a weight <= 0 get threshold 0. An unknown
--   dataset name in datasets is an error (worded as retrieve's, whose helper this is).
-- column latent_id: the latent
-- column weight: its weight (repeats added up)
-- column n_fired: documents in scope where it fired, by latent_counts (NULL: no counts)
-- column mean_contribution: weight times its mean max_act, by latent_counts
-- column threshold: rows of this latent with a larger contribution are summed in the first pass
-- column budget: the sum the thresholds were chosen to reach (NULL: no latent had counts, or none had more than k documents)
CREATE OR REPLACE MACRO retrieve_thresholds(weights, sae := NULL, k := 100, datasets := NULL) AS TABLE
WITH th_weights AS (
    SELECT CAST(w.latent_id AS INTEGER) AS latent_id, sum(CAST(w.weight AS DOUBLE)) AS weight
    FROM (SELECT unnest(weights, recursive := true)) AS w
    WHERE w.latent_id IS NOT NULL AND w.weight IS NOT NULL
    GROUP BY ALL
),
th_unknown AS (
    SELECT string_agg(u.name, ', ' ORDER BY u.name) AS names
    FROM (SELECT unnest(datasets) AS name) AS u
    ANTI JOIN datasets AS ds ON ds.name = u.name
),
th_stats AS (
    SELECT
        w.latent_id,
        CAST(sum(c.n_fired) AS BIGINT) AS n_fired,
        w.weight * sum(c.sum_max_act) / sum(c.n_fired) AS mean_contribution
    FROM th_weights AS w
    JOIN latent_counts AS c ON c.latent_id = w.latent_id
    JOIN datasets AS ds ON ds.dataset_id = c.dataset_id
    WHERE c.sae_id = resolve_sae(sae)
      AND (datasets IS NULL OR list_contains(datasets, ds.name))
    GROUP BY w.latent_id, w.weight
    HAVING sum(c.n_fired) > 0
),
th_fill AS (
    -- latents in order of ln(n / mean), with the running sums water-filling needs
    SELECT
        s.latent_id,
        s.n_fired,
        s.mean_contribution AS mu,
        ln(s.n_fired / s.mean_contribution) AS a,
        sum(s.mean_contribution * ln(s.n_fired / s.mean_contribution)) OVER (
            ORDER BY ln(s.n_fired / s.mean_contribution) DESC, s.latent_id
        ) AS sum_mu_a,
        sum(s.mean_contribution) OVER (
            ORDER BY ln(s.n_fired / s.mean_contribution) DESC, s.latent_id
        ) AS sum_mu
    FROM th_stats AS s
    WHERE s.mean_contribution > 0
),
th_budget AS (
    SELECT 0.6 * max(f.mu * ln(f.n_fired / k)) AS budget
    FROM th_fill AS f
    WHERE f.n_fired > k
),
th_level AS (
    -- ln lambda: of the candidate levels (one per prefix of th_fill), the highest is the one
    -- whose prefix holds exactly the latents with a positive threshold
    SELECT max((f.sum_mu_a - b.budget) / f.sum_mu) AS ln_lambda
    FROM th_fill AS f, th_budget AS b
    WHERE b.budget > 0
)
SELECT
    w.latent_id,
    w.weight,
    s.n_fired,
    s.mean_contribution,
    coalesce(greatest(f.mu * (f.a - l.ln_lambda), 0), 0) AS threshold,
    b.budget
FROM th_weights AS w
LEFT JOIN th_stats AS s ON s.latent_id = w.latent_id
LEFT JOIN th_fill AS f ON f.latent_id = w.latent_id
CROSS JOIN th_level AS l
CROSS JOIN th_budget AS b
-- never yields a row; its filter raises the error for unknown dataset names
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL
FROM th_unknown AS un
WHERE CASE WHEN un.names IS NULL THEN false
    ELSE error('retrieve: there is no dataset named ' || un.names) END
ORDER BY latent_id;
