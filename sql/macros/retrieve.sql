-- name: retrieve
-- kind: table_macro
-- answers: Which documents score highest on a weighted combination of latents, which latents gave each its score, and what text did the strongest one fire on?
-- inputs: doc_latents, documents, datasets, settings
-- grain: one row per document, the k documents with the highest score, highest first (ties by doc_id)
-- params: weights, sae := NULL, k := 100, datasets := NULL
-- param weights: LIST of STRUCT(latent_id INTEGER, weight DOUBLE), written [{'latent_id': 12, 'weight': 1.0}, {'latent_id': 40, 'weight': -0.5}]
-- param sae: the SAE id; NULL means the store's default SAE
-- param k: how many documents to return
-- param datasets: LIST of dataset names to search in (datasets.name); NULL means all datasets
-- depends: resolve_sae, mark_span
-- notes: score = sum over the listed latents that fired in the document of weight * max_act
--   (latents that did not fire add 0). A latent listed twice has its weights added up;
--   entries with a NULL latent_id or weight are ignored. Only documents where at least one
--   listed latent fired are candidates, so with negative weights a document where nothing
--   listed fired (score 0) is never returned while one with a negative score can be. The
--   score is summed in latent order, so equal inputs give equal scores and ties are broken
--   by doc_id: the result is deterministic. An ordered aggregate over every candidate costs
--   ~4x a plain one, so ranking takes two passes: plain DOUBLE sums (whose last bits depend
--   on the order threads add them) pick the k best and every document within 1e-9 of the
--   sum of its |contributions| of the k-th (a bound far above any rounding difference), and
--   only those get the ordered sum that decides the result. Ranking reads every row of the
--   listed latents (a threshold-algorithm shortcut over per-latent top lists was measured
--   and rejected: a document's score sums several latents, and the bound it needs rarely
--   prunes). doc_latents is filtered by joining the small weights table on latent_id, fast
--   on the latent-sorted layout. Like
--   top_documents, every doc_latents row of the SAE counts (doc_encodings is not consulted).
--   An unknown dataset name in datasets is an error. snippet keeps 100 characters either
--   side of the peak token.
-- column doc_id: the document
-- column dataset: the name of the document's dataset
-- column external_id: the document's id in its source corpus
-- column score: sum of weight * max_act over the listed latents that fired in the document
-- column contributions: LIST of STRUCT(latent_id, weight, max_act), one per listed latent that fired, largest weight * max_act first (ties by latent_id)
-- column snippet: the text around the peak token of the first latent in contributions, the token wrapped in << >>, … where cut
CREATE OR REPLACE MACRO retrieve(weights, sae := NULL, k := 100, datasets := NULL) AS TABLE
WITH rt_unknown AS (
    SELECT string_agg(u.name, ', ' ORDER BY u.name) AS names
    FROM (SELECT unnest(datasets) AS name) AS u
    ANTI JOIN datasets AS ds ON ds.name = u.name
),
rt_scope AS (
    SELECT ds.dataset_id
    FROM datasets AS ds
    WHERE list_contains(datasets, ds.name)
),
rt_weights AS (
    SELECT CAST(w.latent_id AS INTEGER) AS latent_id, sum(CAST(w.weight AS DOUBLE)) AS weight
    FROM (SELECT unnest(weights, recursive := true)) AS w
    WHERE w.latent_id IS NOT NULL AND w.weight IS NOT NULL
    GROUP BY ALL
),
rt_rows AS (
    SELECT
        dl.doc_id,
        w.latent_id,
        w.weight,
        CAST(dl.max_act AS DOUBLE) AS max_act,
        w.weight * CAST(dl.max_act AS DOUBLE) AS contribution,
        dl.max_char_start,
        dl.max_char_end
    FROM doc_latents AS dl
    JOIN rt_weights AS w ON dl.latent_id = w.latent_id
    WHERE dl.sae_id = resolve_sae(sae)
),
rt_in_scope AS (
    SELECT r.*
    FROM rt_rows AS r
    WHERE datasets IS NULL
       OR r.doc_id IN (
           SELECT d.doc_id FROM documents AS d JOIN rt_scope AS s ON d.dataset_id = s.dataset_id
       )
),
rt_approx AS (
    -- a fast first pass: plain DOUBLE sums, whose last bits depend on the order in which
    -- threads add them, and a bound on that: 1e-9 of the sum of |contribution| is far more
    -- than the rounding of any order of the additions
    SELECT
        r.doc_id,
        sum(r.contribution) AS approx,
        1e-9 * sum(abs(r.contribution)) AS slack
    FROM rt_in_scope AS r
    GROUP BY r.doc_id
),
rt_best AS (
    SELECT a.approx, a.slack
    FROM rt_approx AS a
    ORDER BY a.approx DESC
    LIMIT k
),
rt_floor AS (
    -- the k-th best exact score is at least this; fewer than k documents: all are wanted
    SELECT CASE WHEN count(*) < k THEN CAST('-inf' AS DOUBLE)
        ELSE min(b.approx) - max(b.slack) END AS floor
    FROM rt_best AS b
),
rt_top AS (
    -- the exact score (summed in latent order, so equal inputs give equal scores) of the
    -- documents that can reach the floor: the k best and the few within rounding of them
    SELECT r.doc_id, sum(r.contribution ORDER BY r.latent_id) AS score
    FROM rt_in_scope AS r
    SEMI JOIN (
        SELECT a.doc_id
        FROM rt_approx AS a, rt_floor AS f
        WHERE a.approx + a.slack >= f.floor
    ) AS c ON c.doc_id = r.doc_id
    GROUP BY r.doc_id
    ORDER BY score DESC, r.doc_id
    LIMIT k
),
rt_parts AS (
    SELECT
        r.doc_id,
        list_sort(list({
            'neg_contribution': -r.contribution,
            'latent_id': r.latent_id,
            'weight': r.weight,
            'max_act': r.max_act,
            'char_start': r.max_char_start,
            'char_end': r.max_char_end
        })) AS parts
    FROM rt_in_scope AS r
    SEMI JOIN rt_top AS t ON t.doc_id = r.doc_id
    GROUP BY r.doc_id
)
SELECT
    t.doc_id,
    ds.name AS dataset,
    d.external_id,
    t.score,
    list_transform(
        p.parts, lambda x: {'latent_id': x.latent_id, 'weight': x.weight, 'max_act': x.max_act}
    ) AS contributions,
    mark_span(d.text, p.parts[1].char_start, p.parts[1].char_end, 100) AS snippet
FROM rt_top AS t
JOIN rt_parts AS p ON p.doc_id = t.doc_id
JOIN documents AS d ON d.doc_id = t.doc_id
JOIN datasets AS ds ON ds.dataset_id = d.dataset_id
-- never yields a row; its filter raises the error for unknown dataset names, whatever matched
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL
FROM rt_unknown AS un
WHERE CASE WHEN un.names IS NULL THEN false
    ELSE error('retrieve: there is no dataset named ' || un.names) END
ORDER BY score DESC, doc_id;
