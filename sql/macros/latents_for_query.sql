-- name: latents_for_query
-- kind: table_macro
-- answers: Which latents have current labels most related to a natural-language query that saedb has embedded before (query_embeddings)?
-- inputs: query_embeddings, current_label_embeddings, settings
-- grain: one row per latent whose current label has an embedding of the model: the k most similar to the query, most similar first (ties by latent_id)
-- params: query, k := 20, sae := NULL, model := 'sentence-transformers/all-MiniLM-L6-v2'
-- param query: the query text, e.g. 'tone of voice' (whitespace is collapsed and trimmed before the lookup, as saedb does when it caches)
-- param k: how many latents to return
-- param sae: the SAE id; NULL means the store's default SAE
-- param model: the embedding model (of the cached query and of the label embeddings)
-- depends: latents_for_embedding
-- notes: plain SQL cannot run a sentence encoder, so the query's embedding comes from the
--   cache query_embeddings, which saedb fills whenever it embeds a query: saedb search STORE
--   "text", saedb cluster STORE --axis "text", saedb embed-query STORE "text", or
--   Store.relevant_latents in Python. A query that is not there is an error that says to run
--   one of those first; inside saedb's own processes the UDF embed_query(text) embeds any text
--   (SELECT * FROM latents_for_embedding(embed_query('...')) ). The ranking is
--   latents_for_embedding's: cosine similarity of each current label's embedding with the
--   query's.
-- column sae_id: the SAE (saes.sae_id)
-- column latent_id: the latent
-- column label: its current label
-- column description: the label's one-sentence description
-- column similarity: cosine similarity of the label's embedding and the query's, in [-1, 1]
-- column label_id: the current label version (latent_labels.label_id)
CREATE OR REPLACE MACRO latents_for_query(
    query, k := 20, sae := NULL, model := 'sentence-transformers/all-MiniLM-L6-v2'
) AS TABLE
WITH lfq_text AS (
    SELECT trim(regexp_replace(CAST(query AS VARCHAR), '\s+', ' ', 'g')) AS text
),
lfq_cache AS (
    -- renamed, so that the column model cannot be confused with the parameter model
    SELECT qe.query AS q_text, qe.model AS q_model, qe.embedding AS q_vector
    FROM query_embeddings AS qe
),
lfq_found AS (
    SELECT count(c.q_vector) AS n
    FROM lfq_text AS t
    LEFT JOIN lfq_cache AS c ON c.q_text = t.text AND c.q_model = model
)
SELECT r.*
FROM latents_for_embedding(
    (SELECT c.q_vector FROM lfq_cache AS c JOIN lfq_text AS t
     ON c.q_text = t.text AND c.q_model = model),
    k := k, sae := sae, model := model
) AS r
-- never yields a row; its filter raises the error when the query has not been embedded
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL
FROM lfq_found AS f
WHERE CASE WHEN f.n > 0 THEN false
    ELSE error('latents_for_query: the query ''' || (SELECT t.text FROM lfq_text AS t)
        || ''' has not been embedded with model ''' || model || ''' (query_embeddings has '
        || 'no row for it): run saedb embed-query STORE "' || (SELECT t.text FROM lfq_text AS t)
        || '" or saedb search STORE "' || (SELECT t.text FROM lfq_text AS t) || '" first') END
ORDER BY similarity DESC NULLS LAST, latent_id;
