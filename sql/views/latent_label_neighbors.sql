-- name: latent_label_neighbors
-- kind: view
-- answers: Which latents have the labels most similar to each labelled latent's label (its nearest labels), from the materialised table label_neighbors?
-- inputs: label_neighbors, label_neighbor_runs, current_labels
-- depends: current_labels
-- grain: one row per (sae_id, embedding model, latent_id, rank): the latent's k nearest labelled latents, rank 1 the most similar
-- notes: the rows are those saedb.label_neighbors.refresh_label_neighbors computed (saedb label
--   runs it after labelling and embedding; k is 20 by default): cosine similarity of the
--   current labels' embeddings, over every other latent of the SAE whose current label has an
--   embedding of the model, ties by latent id. The labels shown are today's current labels;
--   stale is true when either latent's current label is no longer the version that was
--   compared (labelled again since the refresh: run saedb label again, or
--   saedb.label_neighbors.refresh_label_neighbors). For the similarity of any two latents use
--   the macro label_similarity.
-- column sae_id: the SAE (saes.sae_id)
-- column embedding_model: the embedding model compared (label_embeddings.model)
-- column latent_id: the latent
-- column label: its current label
-- column rank: 1 for the most similar neighbour, 2 for the next, ...
-- column neighbor_latent: the neighbouring latent
-- column neighbor_label: its current label
-- column similarity: cosine similarity of the two labels' embeddings, in [-1, 1]
-- column stale: true when either current label changed since the refresh
-- column computed_at: when the refresh ran
CREATE OR REPLACE VIEW latent_label_neighbors AS
SELECT
    n.sae_id,
    n.model AS embedding_model,
    n.latent_id,
    a.label,
    n.rank,
    n.neighbor_latent,
    b.label AS neighbor_label,
    n.similarity,
    (a.label_id IS DISTINCT FROM n.label_id)
        OR (b.label_id IS DISTINCT FROM n.neighbor_label_id) AS stale,
    r.computed_at
FROM label_neighbors AS n
LEFT JOIN current_labels AS a ON a.sae_id = n.sae_id AND a.latent_id = n.latent_id
LEFT JOIN current_labels AS b ON b.sae_id = n.sae_id AND b.latent_id = n.neighbor_latent
LEFT JOIN label_neighbor_runs AS r ON r.sae_id = n.sae_id AND r.model = n.model;
