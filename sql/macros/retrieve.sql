-- name: retrieve
-- kind: table_macro
-- answers: Which documents score highest on a weighted combination of latents, which latents gave each its score, and what text did the strongest one fire on?
-- inputs: doc_latents, latent_counts, documents, datasets, settings
-- grain: one row per document, the k documents with the highest score, highest first (ties by doc_id)
-- params: weights, sae := NULL, k := 100, datasets := NULL
-- param weights: LIST of STRUCT(latent_id INTEGER, weight DOUBLE), written [{'latent_id': 12, 'weight': 1.0}, {'latent_id': 40, 'weight': -0.5}]
-- param sae: the SAE id; NULL means the store's default SAE
-- param k: how many documents to return
-- param datasets: LIST of dataset names to search in (datasets.name); NULL means all datasets
-- depends: resolve_sae, mark_span, retrieve_thresholds
-- notes: score = sum over the listed latents that fired in the document of weight * max_act
--   (latents that did not fire add 0). A latent listed twice has its weights added up;
--   entries with a NULL latent_id or weight are ignored. Only documents where at least one
--   listed latent fired are candidates, so with negative weights a document where nothing
--   listed fired (score 0) is never returned while one with a negative score can be. The
--   score is summed in latent order, so equal inputs give equal scores and ties are broken
--   by doc_id: the result is deterministic, and exact. The k best are found without summing
--   every document (docs/design.md#retrieve-a-bound-that-skips-most-documents): a first pass
--   sums, per document, only its rows above their latent's threshold (retrieve_thresholds; negative rows always count), which
--   gives each such document a lower bound on its score, and the k-th best of those bounds is
--   compared with the sum of the thresholds, which is the most a document with no such row
--   can score. When it is higher (allowing 1e-9 of the magnitudes for rounding), only the
--   first pass's documents whose upper bound (seen sum plus the thresholds of their unseen
--   latents) reaches it get the exact sum. Otherwise (no counts in latent_counts, fewer than
--   k documents, a bound too weak) every document gets a plain DOUBLE sum and the k best,
--   with every document within 1e-9 of the sum of its |contributions| of the k-th, get the
--   exact sum. Both ways the answer is the same. Like
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
rt_weights AS (
    -- the listed latents, their summed weights and first-pass thresholds
    SELECT th.latent_id, th.weight, th.threshold, th.budget
    FROM retrieve_thresholds(weights, sae := sae, k := k, datasets := datasets) AS th
),
rt_rows AS MATERIALIZED (
    SELECT
        dl.doc_id,
        w.latent_id,
        w.weight * CAST(dl.max_act AS DOUBLE) AS contribution,
        w.threshold
    FROM doc_latents AS dl
    JOIN rt_weights AS w ON dl.latent_id = w.latent_id
    WHERE dl.sae_id = resolve_sae(sae)
      AND (datasets IS NULL OR dl.doc_id IN (
          SELECT d.doc_id
          FROM documents AS d
          JOIN datasets AS ds ON ds.dataset_id = d.dataset_id
          WHERE list_contains(datasets, ds.name)
      ))
),
rt_total AS (
    -- total: a document with no row above its threshold scores at most this; slack: with the
    -- size of a sum, bounds the magnitudes that rounding applies to (a document's negative
    -- rows weigh at most all negative rows together)
    SELECT
        t.total,
        t.budget,
        t.total - 2 * (SELECT coalesce(sum(r.contribution), 0) FROM rt_rows AS r
            WHERE r.contribution < 0) AS slack
    FROM (
        SELECT coalesce(sum(w.threshold), 0) AS total, max(w.budget) AS budget
        FROM rt_weights AS w
    ) AS t
),
rt_seen AS (
    -- first pass: per document, the sum of its rows above their threshold (negative rows are
    -- always included), and a bound on the rounding of sums of its rows
    SELECT
        r.doc_id,
        sum(r.contribution) AS seen,
        sum(r.threshold) AS seen_threshold,
        1e-9 * (abs(sum(r.contribution)) + (SELECT t.slack FROM rt_total AS t)) AS err
    FROM rt_rows AS r
    WHERE r.contribution > r.threshold OR r.contribution < 0
    GROUP BY r.doc_id
),
rt_bound AS (
    -- the k-th best lower bound; the shortcut holds when no unseen document can reach it
    SELECT
        b.kth,
        coalesce(t.budget > 0 AND t.total * (1 + 1e-9) < b.kth, false) AS pruned,
        t.total
    FROM (
        SELECT CASE WHEN count(*) >= k THEN min(s.low) END AS kth
        FROM (SELECT s.seen - s.err AS low FROM rt_seen AS s ORDER BY low DESC LIMIT k) AS s
    ) AS b, rt_total AS t
),
rt_sums AS (
    -- without the shortcut: plain DOUBLE sums of every document (whose last bits depend on
    -- the order threads add them) and a bound on that rounding
    SELECT
        r.doc_id,
        sum(r.contribution) AS approx,
        1e-9 * sum(abs(r.contribution)) AS slack
    FROM rt_rows AS r, rt_bound AS b
    WHERE NOT b.pruned
    GROUP BY r.doc_id
),
rt_sums_floor AS (
    SELECT CASE WHEN count(*) < k THEN CAST('-inf' AS DOUBLE)
        ELSE min(s.approx) - max(s.slack) END AS floor
    FROM (SELECT s.approx, s.slack FROM rt_sums AS s ORDER BY s.approx DESC LIMIT k) AS s
),
rt_candidates AS (
    -- the documents that can reach the top k: with the shortcut, those whose seen sum plus
    -- the thresholds of the latents not seen could reach the k-th lower bound; without it,
    -- the k best plain sums and the few within rounding of them
    SELECT s.doc_id
    FROM rt_seen AS s, rt_bound AS b
    WHERE b.pruned
      AND s.seen + (b.total - s.seen_threshold) + s.err >= b.kth
    UNION ALL
    SELECT s.doc_id
    FROM rt_sums AS s, rt_sums_floor AS f
    WHERE s.approx + s.slack >= f.floor
),
rt_top AS (
    -- the exact score (summed in latent order, so equal inputs give equal scores)
    SELECT r.doc_id, sum(r.contribution ORDER BY r.latent_id) AS score
    FROM rt_rows AS r
    SEMI JOIN rt_candidates AS c ON c.doc_id = r.doc_id
    GROUP BY r.doc_id
    ORDER BY score DESC, r.doc_id
    LIMIT k
),
rt_parts AS (
    -- the top documents' rows again, with what explaining them needs
    SELECT
        dl.doc_id,
        list_sort(list({
            'neg_contribution': -(w.weight * CAST(dl.max_act AS DOUBLE)),
            'latent_id': w.latent_id,
            'weight': w.weight,
            'max_act': CAST(dl.max_act AS DOUBLE),
            'char_start': dl.max_char_start,
            'char_end': dl.max_char_end
        })) AS parts
    FROM doc_latents AS dl
    JOIN rt_weights AS w ON dl.latent_id = w.latent_id
    SEMI JOIN rt_top AS t ON t.doc_id = dl.doc_id
    WHERE dl.sae_id = resolve_sae(sae)
    GROUP BY dl.doc_id
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
