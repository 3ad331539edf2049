-- name: current_label_embeddings
-- kind: view
-- answers: What is the sentence embedding of each latent's current label, per embedding model?
-- inputs: current_labels, label_embeddings
-- depends: current_labels
-- grain: one row per (sae_id, latent_id, embedding model) whose current label has an embedding of that model
-- notes: the current label is the one current_labels picks; a latent whose current label has
--   no embedding of a model has no row for it (even when an older version of its label has
--   one). Embeddings are FLOAT[] lists, unit length as saedb writes them; compare two with
--   list_cosine_similarity. The default embedding model of saedb is
--   'sentence-transformers/all-MiniLM-L6-v2' (384 dimensions).
-- column sae_id: the SAE (saes.sae_id)
-- column latent_id: the latent
-- column label_id: the current label version (latent_labels.label_id)
-- column label: the current label
-- column description: its one-sentence description
-- column embedding_model: the model that embedded the label (label_embeddings.model)
-- column embedding: the label's embedding (FLOAT[])
CREATE OR REPLACE VIEW current_label_embeddings AS
SELECT
    c.sae_id,
    c.latent_id,
    c.label_id,
    c.label,
    c.description,
    e.model AS embedding_model,
    e.embedding
FROM current_labels AS c
JOIN label_embeddings AS e ON e.label_id = c.label_id;
