-- name: latents_for_embedding
-- kind: table_macro
-- answers: Which latents have current labels most similar to a given embedding (a query embedded by any means)?
-- inputs: current_label_embeddings, settings
-- grain: one row per latent whose current label has an embedding of the model: the k most similar, most similar first (ties by latent_id)
-- params: embedding, k := 20, sae := NULL, model := 'sentence-transformers/all-MiniLM-L6-v2'
-- param embedding: the query vector, a FLOAT[] (or DOUBLE[]) of the model's dimension
-- param k: how many latents to return
-- param sae: the SAE id; NULL means the store's default SAE
-- param model: the embedding model of the label embeddings to compare with (label_embeddings.model); the query must be embedded by the same model
-- depends: resolve_sae, current_label_embeddings
-- notes: similarity is list_cosine_similarity of the label's embedding and the given one. An
--   SAE none of whose current labels has an embedding of the model is an error that says to
--   run saedb label first (rather than an empty answer). A vector of another length than the
--   labels' is DuckDB's error. latents_for_query does the same for a query text whose
--   embedding saedb has cached in query_embeddings.
-- column sae_id: the SAE (saes.sae_id)
-- column latent_id: the latent
-- column label: its current label
-- column description: the label's one-sentence description
-- column similarity: cosine similarity of the label's embedding and the query's, in [-1, 1]
-- column label_id: the current label version (latent_labels.label_id)
CREATE OR REPLACE MACRO latents_for_embedding(
    embedding, k := 20, sae := NULL, model := 'sentence-transformers/all-MiniLM-L6-v2'
) AS TABLE
WITH lfe_vector AS (
    SELECT CAST(embedding AS FLOAT[]) AS v
),
lfe_labels AS (
    SELECT e.sae_id, e.latent_id, e.label, e.description, e.label_id, e.embedding
    FROM current_label_embeddings AS e
    WHERE e.sae_id = resolve_sae(sae) AND e.embedding_model = model
),
lfe_check AS (
    SELECT count(*) AS n FROM lfe_labels
),
lfe_ranked AS (
    SELECT
        l.sae_id,
        l.latent_id,
        l.label,
        l.description,
        CAST(list_cosine_similarity(l.embedding, q.v) AS DOUBLE) AS similarity,
        l.label_id
    FROM lfe_labels AS l
    CROSS JOIN lfe_vector AS q
    ORDER BY similarity DESC NULLS LAST, l.latent_id
    LIMIT k
)
SELECT * FROM lfe_ranked
-- never yields a row; its filter raises the error when there is nothing to compare with
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL
FROM lfe_check AS c
WHERE CASE WHEN c.n > 0 THEN false
    ELSE error('latents_for_embedding: no current label of SAE ' || resolve_sae(sae)
        || ' has an embedding of model ''' || model || ''': label the latents first, e.g. '
        || 'saedb label STORE --all-firing') END
ORDER BY similarity DESC NULLS LAST, latent_id;
