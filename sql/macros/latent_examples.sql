-- name: latent_examples
-- kind: table_macro
-- answers: Which example texts show what a latent responds to: a sample of its strongest documents (positives) and of encoded documents where it did not fire (negatives)?
-- inputs: doc_latents, doc_encodings, documents, datasets, settings
-- grain: one row per example: up to n_pos positives (kind 'positive') then up to n_neg negatives (kind 'negative'), each numbered from 1 in rank
-- params: latent, sae := NULL, n_pos := 10, top := 30, n_neg := 10, context := 120, seed := 0
-- param latent: the latent (latent_id)
-- param sae: the SAE id; NULL means the store's default SAE
-- param n_pos: how many positives to sample
-- param top: the positives are sampled from this many documents with the highest max_act (ties by doc_id)
-- param n_neg: how many negatives to sample
-- param context: characters of text either side of the peak token (positives); negatives show the first 2 * context characters; NULL keeps the whole text
-- param seed: the sample: the same seed gives the same examples, another seed (usually) others
-- depends: resolve_sae, mark_span
-- notes: both samples take the rows with the smallest hash(doc_id, seed) (ties by doc_id), so
--   they are deterministic for a seed and need no random(). Positives come from a top-k of
--   one latent's doc_latents rows; negatives are the documents recorded in doc_encodings for
--   the SAE with no doc_latents row for the latent (an anti-join), of which only the n_neg
--   smallest hashes are kept (a top-n, not a sort of the table), so the macro streams over
--   the store and never holds more than top + n_neg rows. Positives are in sample order
--   (not by activation); max_act and token are NULL for negatives.
-- column kind: 'positive' or 'negative'
-- column rank: the example's place in its sample, from 1
-- column doc_id: the document
-- column dataset: the name of the document's dataset
-- column max_act: the latent's peak activation in the document (NULL for negatives)
-- column token: the text of the peak token (NULL for negatives)
-- column snippet: positives: context characters either side of the peak token, the token wrapped in << >>, … where cut; negatives: the start of the document, … where cut
CREATE OR REPLACE MACRO latent_examples(
    latent, sae := NULL, n_pos := 10, top := 30, n_neg := 10, context := 120, seed := 0
) AS TABLE
WITH strongest AS (
    SELECT dl.doc_id, dl.max_act, dl.max_char_start, dl.max_char_end
    FROM doc_latents AS dl
    WHERE dl.latent_id = latent
      AND dl.sae_id = resolve_sae(sae)
    ORDER BY dl.max_act DESC, dl.doc_id
    LIMIT top
),
positives AS (
    SELECT s.*
    FROM strongest AS s
    ORDER BY hash(s.doc_id, CAST(seed AS BIGINT)), s.doc_id
    LIMIT n_pos
),
fired AS (
    SELECT dl.doc_id
    FROM doc_latents AS dl
    WHERE dl.latent_id = latent
      AND dl.sae_id = resolve_sae(sae)
),
negatives AS (
    SELECT de.doc_id
    FROM doc_encodings AS de
    ANTI JOIN fired AS f ON f.doc_id = de.doc_id
    WHERE de.sae_id = resolve_sae(sae)
    ORDER BY hash(de.doc_id, CAST(seed AS BIGINT)), de.doc_id
    LIMIT n_neg
),
examples AS (
    SELECT
        'positive' AS kind,
        row_number() OVER (ORDER BY hash(p.doc_id, CAST(seed AS BIGINT)), p.doc_id) AS rank,
        p.doc_id,
        CAST(p.max_act AS DOUBLE) AS max_act,
        substring(d.text, p.max_char_start + 1, p.max_char_end - p.max_char_start) AS token,
        mark_span(d.text, p.max_char_start, p.max_char_end, context) AS snippet,
        d.dataset_id
    FROM positives AS p
    JOIN documents AS d ON d.doc_id = p.doc_id
    UNION ALL
    SELECT
        'negative' AS kind,
        row_number() OVER (ORDER BY hash(n.doc_id, CAST(seed AS BIGINT)), n.doc_id) AS rank,
        n.doc_id,
        CAST(NULL AS DOUBLE) AS max_act,
        CAST(NULL AS VARCHAR) AS token,
        substring(d.text, 1, greatest(coalesce(2 * context, length(d.text)), 0))
            || CASE WHEN length(d.text) > greatest(coalesce(2 * context, length(d.text)), 0)
                THEN '…' ELSE '' END AS snippet,
        d.dataset_id
    FROM negatives AS n
    JOIN documents AS d ON d.doc_id = n.doc_id
)
SELECT e.kind, e.rank, e.doc_id, ds.name AS dataset, e.max_act, e.token, e.snippet
FROM examples AS e
JOIN datasets AS ds ON ds.dataset_id = e.dataset_id
ORDER BY e.kind DESC, e.rank;
