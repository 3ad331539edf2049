-- name: current_labels
-- kind: view
-- answers: What is the current best label of each latent: the highest-scored version, else the most recent?
-- inputs: latent_labels
-- grain: one row per (sae_id, latent_id) that has at least one label
-- notes: versions are ranked by score (highest first, unscored versions after every scored
--   one), then created_at (newest first), then label_id (the last written first), so the
--   choice is deterministic. Latents without any label have no row.
-- column sae_id: the SAE (saes.sae_id)
-- column latent_id: the latent
-- column label_id: the chosen version (latent_labels.label_id; key of label_embeddings)
-- column label: the short label
-- column description: a one-sentence description
-- column labeler: what made it ('offline' for the log-odds labeler)
-- column model: the model used (for the offline labeler 'log-odds')
-- column prompt_version: the prompt or method version
-- column score: how well the label predicts activations; NULL when not scored
-- column n_examples: the number of examples (positives + negatives) the labeler saw
-- column created_at: when the version was written
-- column n_versions: how many versions of a label this latent has
CREATE OR REPLACE VIEW current_labels AS
SELECT
    l.sae_id,
    l.latent_id,
    l.label_id,
    l.label,
    l.description,
    l.labeler,
    l.model,
    l.prompt_version,
    l.score,
    l.n_examples,
    l.created_at,
    count(*) OVER (PARTITION BY l.sae_id, l.latent_id) AS n_versions
FROM latent_labels AS l
QUALIFY row_number() OVER (
    PARTITION BY l.sae_id, l.latent_id
    ORDER BY l.score DESC NULLS LAST, l.created_at DESC, l.label_id DESC
) = 1;
