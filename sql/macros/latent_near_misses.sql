-- name: latent_near_misses
-- kind: table_macro
-- answers: Which documents look most like where a latent fires but where it did not fire (near-miss negatives for labelling and scoring a latent)?
-- inputs: doc_latents, latent_counts, doc_encodings, documents, datasets, settings
-- grain: one row per near-miss document, up to n, numbered from 1 by rank (most similar first)
-- params: latent, sae := NULL, n := 10, top := 30, n_partners := 20, context := 120, seed := 0
-- param latent: the latent (latent_id)
-- param sae: the SAE id; NULL means the store's default SAE
-- param n: how many near-miss documents to return
-- param top: the latent's strongest documents (by max_act, ties by doc_id) that define its partners and datasets
-- param n_partners: how many partner latents to score documents by
-- param context: characters of text either side of the partner's peak token; NULL keeps the whole text
-- param seed: breaks ties between equally scored documents: the same seed gives the same rows
-- depends: resolve_sae
-- notes: a near miss is a document of the same datasets as the latent's strongest documents
--   where the latent did not fire but the latents that fire with it do. Partners are the
--   latents firing in the top documents whose share there most exceeds their share of all
--   encoded documents: weight = n_top / top_docs - n_docs / n_encoded, where n_top counts top
--   documents with the partner and n_docs the documents encoded for the SAE with it (from
--   latent_counts while it accounts for every row of doc_latents, as latent_frequency
--   checks; else counted in doc_latents); the 3 * n_partners latents most common in the top
--   documents are candidates, the n_partners with the largest positive weight are kept. A
--   document's score is the sum of the weights of the partners that fired in it (computed
--   from integer sums, so it is exact and the order is the same on every run); the n
--   highest-scoring documents without a doc_latents row for the latent are returned (ties by
--   hash(doc_id, seed), then doc_id). After the top documents only the partners' doc_latents
--   rows are read, and texts only for the n chosen documents, so memory stays at one row per
--   document where a partner fired (0.3-1 s per latent at 1M documents with 50 latents each,
--   on 2 shared cores under a 512MB memory_limit: bench/llm_labels.py). The snippet is a window around the peak of the document's
--   highest-weighted partner, unmarked (the latent itself has no peak there). Empty when the
--   latent never fired or no partner has a positive weight.
-- column rank: the document's place, from 1 (highest score)
-- column doc_id: the document
-- column dataset: the name of the document's dataset
-- column score: sum of the weights of the partner latents that fired in the document
-- column n_shared: how many of the partner latents fired in the document
-- column partner: the highest-weighted partner latent that fired in it (the snippet's centre)
-- column snippet: context characters either side of that partner's peak token, … where cut, no << >> marks
CREATE OR REPLACE MACRO latent_near_misses(
    latent, sae := NULL, n := 10, top := 30, n_partners := 20, context := 120, seed := 0
) AS TABLE
WITH strongest AS (
    SELECT dl.doc_id
    FROM doc_latents AS dl
    WHERE dl.latent_id = latent
      AND dl.sae_id = resolve_sae(sae)
    ORDER BY dl.max_act DESC, dl.doc_id
    LIMIT top
),
top_datasets AS (
    SELECT DISTINCT d.dataset_id
    FROM strongest AS s
    JOIN documents AS d ON d.doc_id = s.doc_id
),
candidates AS (
    SELECT dl.latent_id, count(*) AS n_top
    FROM doc_latents AS dl
    JOIN strongest AS s ON s.doc_id = dl.doc_id
    WHERE dl.sae_id = resolve_sae(sae)
      AND dl.latent_id <> latent
    GROUP BY dl.latent_id
    ORDER BY n_top DESC, dl.latent_id
    LIMIT 3 * n_partners
),
fresh AS (
    -- does latent_counts account for every row of doc_latents? (as latent_frequency asks)
    SELECT coalesce((SELECT sum(c.n_fired) FROM latent_counts AS c), 0)
        = (SELECT count(*) FROM doc_latents) AS ok
),
candidate_totals AS (
    -- documents (encoded for the SAE) where each candidate fired: a few rows of
    -- latent_counts per candidate, or a count over its doc_latents rows when they are stale
    SELECT c.latent_id, sum(c.n_fired) AS n_docs
    FROM latent_counts AS c
    SEMI JOIN candidates AS k ON k.latent_id = c.latent_id
    WHERE c.sae_id = resolve_sae(sae)
      AND (SELECT ok FROM fresh)
    GROUP BY c.latent_id
    UNION ALL
    SELECT dl.latent_id, count(*) AS n_docs
    FROM doc_latents AS dl
    -- no candidates when the counts are fresh, so that this branch reads nothing then
    SEMI JOIN (
        SELECT k.latent_id FROM candidates AS k WHERE NOT (SELECT ok FROM fresh)
    ) AS k ON k.latent_id = dl.latent_id
    SEMI JOIN doc_encodings AS de ON de.doc_id = dl.doc_id AND de.sae_id = dl.sae_id
    WHERE dl.sae_id = resolve_sae(sae)
    GROUP BY dl.latent_id
),
n_encoded AS (
    SELECT count(*) AS n_docs
    FROM doc_encodings AS de
    WHERE de.sae_id = resolve_sae(sae)
),
partners AS (
    SELECT
        c.latent_id,
        c.n_top,
        t.n_docs,
        c.n_top / (SELECT count(*) FROM strongest)
            - t.n_docs / greatest((SELECT e.n_docs FROM n_encoded AS e), 1) AS weight
    FROM candidates AS c
    JOIN candidate_totals AS t ON t.latent_id = c.latent_id
    WHERE weight > 0
    ORDER BY weight DESC, c.latent_id
    LIMIT n_partners
),
partner_rows AS (
    SELECT dl.doc_id, dl.latent_id, dl.max_char_start, dl.max_char_end
    FROM doc_latents AS dl
    SEMI JOIN partners AS p ON p.latent_id = dl.latent_id
    WHERE dl.sae_id = resolve_sae(sae)
),
fired AS (
    SELECT dl.doc_id
    FROM doc_latents AS dl
    WHERE dl.latent_id = latent
      AND dl.sae_id = resolve_sae(sae)
),
scored AS (
    -- the sum of the partners' weights, from integer sums: exact, so the order never
    -- depends on the order in which parallel threads add up floating-point weights
    SELECT
        r.doc_id,
        sum(p.n_top) / (SELECT count(*) FROM strongest)
            - sum(p.n_docs) / greatest((SELECT e.n_docs FROM n_encoded AS e), 1) AS score,
        count(*) AS n_shared
    FROM partner_rows AS r
    JOIN partners AS p ON p.latent_id = r.latent_id
    ANTI JOIN fired AS f ON f.doc_id = r.doc_id
    GROUP BY r.doc_id
),
chosen AS (
    SELECT s.*, d.dataset_id
    FROM scored AS s
    JOIN documents AS d ON d.doc_id = s.doc_id
    SEMI JOIN top_datasets AS t ON t.dataset_id = d.dataset_id
    ORDER BY s.score DESC, hash(s.doc_id, CAST(seed AS BIGINT)), s.doc_id
    LIMIT n
),
peaks AS (
    -- the highest-weighted partner of each chosen document only (not of every scored one)
    SELECT
        dl.doc_id,
        arg_max(
            {'latent_id': dl.latent_id, 'char_start': dl.max_char_start,
             'char_end': dl.max_char_end},
            (p.weight, -dl.latent_id)
        ) AS peak
    FROM doc_latents AS dl
    JOIN partners AS p ON p.latent_id = dl.latent_id
    SEMI JOIN chosen AS c ON c.doc_id = dl.doc_id
    WHERE dl.sae_id = resolve_sae(sae)
    GROUP BY dl.doc_id
),
windows AS (
    SELECT
        c.*,
        k.peak,
        d.text,
        greatest(k.peak.char_start - greatest(coalesce(context, length(d.text)), 0), 0) AS lo,
        least(
            k.peak.char_end + greatest(coalesce(context, length(d.text)), 0), length(d.text)
        ) AS hi
    FROM chosen AS c
    JOIN peaks AS k ON k.doc_id = c.doc_id
    JOIN documents AS d ON d.doc_id = c.doc_id
)
SELECT
    row_number() OVER (
        ORDER BY w.score DESC, hash(w.doc_id, CAST(seed AS BIGINT)), w.doc_id
    ) AS rank,
    w.doc_id,
    ds.name AS dataset,
    CAST(w.score AS DOUBLE) AS score,
    CAST(w.n_shared AS INTEGER) AS n_shared,
    w.peak.latent_id AS partner,
    CASE WHEN w.lo > 0 THEN '…' ELSE '' END
        || substring(w.text, w.lo + 1, w.hi - w.lo)
        || CASE WHEN w.hi < length(w.text) THEN '…' ELSE '' END AS snippet
FROM windows AS w
JOIN datasets AS ds ON ds.dataset_id = w.dataset_id
ORDER BY rank;
