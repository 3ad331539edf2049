-- name: label_similarity
-- kind: macro
-- answers: How similar are the current labels of two latents (cosine similarity of their label embeddings)?
-- inputs: current_label_embeddings, settings
-- params: latent_a, latent_b, sae := NULL, model := 'sentence-transformers/all-MiniLM-L6-v2'
-- param latent_a: the first latent id
-- param latent_b: the second latent id
-- param sae: the SAE id; NULL means the store's default SAE
-- param model: the embedding model whose embeddings are compared (label_embeddings.model)
-- depends: resolve_sae, current_label_embeddings
-- notes: a DOUBLE in [-1, 1] (1: the same direction), computed by list_cosine_similarity on the
--   embeddings of the latents' current labels (current_label_embeddings); NULL when either
--   latent has no current label or its label has no embedding of the model. Works on columns
--   too: SELECT latent_i, latent_j, label_similarity(latent_i, latent_j) FROM ... For every
--   labelled latent's nearest labels at once read the materialised view
--   latent_label_neighbors; npmi, npmi_targets and latent_npmi carry this similarity as the
--   column label_similarity.
CREATE OR REPLACE MACRO label_similarity(
    latent_a, latent_b, sae := NULL, model := 'sentence-transformers/all-MiniLM-L6-v2'
) AS (
    SELECT CAST(list_cosine_similarity(ea.embedding, eb.embedding) AS DOUBLE)
    FROM current_label_embeddings AS ea, current_label_embeddings AS eb
    WHERE ea.sae_id = resolve_sae(sae) AND eb.sae_id = ea.sae_id
      AND ea.latent_id = latent_a AND eb.latent_id = latent_b
      AND ea.embedding_model = model AND eb.embedding_model = model
);
