-- name: latent_npmi
-- kind: view
-- answers: Which latents fire together with a latent more often than chance, by NPMI over documents, from the materialised table latent_cooccurrence?
-- inputs: latent_cooccurrence, latent_cooccurrence_scopes, saes, current_labels, label_embeddings
-- depends: current_labels
-- grain: one row per (sae_id, scope, latent_id, other_latent) stored in latent_cooccurrence, each pair both ways: filter on latent_id to get all of a latent's partners
-- notes: latent_cooccurrence holds each pair once (latent_i < latent_j); this view shows it
--   twice, as (latent_i, latent_j) and as (latent_j, latent_i), so WHERE latent_id = 123
--   finds every partner of latent 123 whichever id is smaller (DuckDB pushes the filter into
--   both halves). For distinct pairs add WHERE latent_id < other_latent. It holds only what
--   saedb.cooccurrence.refresh_cooccurrence has computed (pairs that fired together in at
--   least min_count documents of the scope's datasets) and adds what does not depend on the
--   documents: the SAE's name and the parameters the scope was computed with. The numbers
--   are those of the table macro npmi with the same datasets, sae, min_count and threshold.
--   scope is 'all' or the sorted dataset names joined with ',' (see latent_cooccurrence).
--   label_i (of latent_id), label_j (of other_latent) are the current labels, NULL for an
--   unlabelled latent; label_similarity is the cosine similarity of their embeddings by
--   saedb's default embedding model 'sentence-transformers/all-MiniLM-L6-v2' (NULL unless
--   both have one; for another model use the macro label_similarity).
-- column sae_id: the SAE (saes.sae_id)
-- column sae: the SAE's name (NULL if the SAE is no longer registered)
-- column scope: the set of datasets counted: 'all', or the dataset names joined with ','
-- column latent_id: the latent
-- column other_latent: a latent that fired together with latent_id in at least min_count documents
-- column n_latent: documents of the scope where latent_id fired
-- column n_other: documents of the scope where other_latent fired
-- column n_both: documents of the scope where both fired
-- column n_docs: documents of the scope encoded with the SAE (N)
-- column npmi: normalised pointwise mutual information of the pair, in [-1, 1]
-- column label_i: the current label of latent_id (NULL when it has none)
-- column label_j: the current label of other_latent (NULL when it has none)
-- column label_similarity: cosine similarity of the two labels' MiniLM embeddings (NULL when either has none)
-- column min_count: the min_count the scope was computed with
-- column threshold: the activation threshold the scope was computed with
-- column computed_at: when the scope was computed
CREATE OR REPLACE VIEW latent_npmi AS
WITH both_ways AS (
    SELECT
        sae_id, scope, latent_i AS latent_id, latent_j AS other_latent,
        n_i AS n_latent, n_j AS n_other, n_both, n_docs, npmi, computed_at
    FROM latent_cooccurrence
    UNION ALL
    SELECT
        sae_id, scope, latent_j AS latent_id, latent_i AS other_latent,
        n_j AS n_latent, n_i AS n_other, n_both, n_docs, npmi, computed_at
    FROM latent_cooccurrence
),
labelled AS (
    SELECT cl.sae_id, cl.latent_id, cl.label, e.embedding
    FROM current_labels AS cl
    LEFT JOIN label_embeddings AS e
        ON e.label_id = cl.label_id AND e.model = 'sentence-transformers/all-MiniLM-L6-v2'
)
SELECT
    b.sae_id,
    s.name AS sae,
    b.scope,
    b.latent_id,
    b.other_latent,
    b.n_latent,
    b.n_other,
    b.n_both,
    b.n_docs,
    b.npmi,
    la.label AS label_i,
    lo.label AS label_j,
    CAST(list_cosine_similarity(la.embedding, lo.embedding) AS DOUBLE) AS label_similarity,
    r.min_count,
    r.threshold,
    b.computed_at
FROM both_ways AS b
LEFT JOIN saes AS s ON s.sae_id = b.sae_id
LEFT JOIN latent_cooccurrence_scopes AS r ON r.sae_id = b.sae_id AND r.scope = b.scope
LEFT JOIN labelled AS la ON la.sae_id = b.sae_id AND la.latent_id = b.latent_id
LEFT JOIN labelled AS lo ON lo.sae_id = b.sae_id AND lo.latent_id = b.other_latent;
