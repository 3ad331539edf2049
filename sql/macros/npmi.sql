-- name: npmi
-- kind: table_macro
-- answers: Which pairs of latents fire together more often than chance, by normalised pointwise mutual information (NPMI) over documents? Every pair, in SQL: for small stores.
-- inputs: doc_latents, doc_encodings, documents, datasets, settings, current_labels, label_embeddings
-- grain: one row per pair of latents (latent_i < latent_j) that fired together in at least min_count documents, sorted by npmi, largest first (ties by latent_i, latent_j)
-- params: datasets := NULL, sae := NULL, min_count := 5, threshold := 0.0, embedding_model := 'sentence-transformers/all-MiniLM-L6-v2'
-- param datasets: LIST of dataset names (datasets.name) whose documents are counted; NULL means every dataset
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_count: keep pairs that fired together in at least this many documents (values below 1 act as 1: pairs that never fired together have no row)
-- param threshold: a latent fired in a document when its max_act there is above this (compared as REAL, the precision max_act is stored in)
-- param embedding_model: the embedding model whose label embeddings give label_similarity (label_embeddings.model)
-- depends: resolve_sae, npmi_score, current_labels
-- notes: the same definitions as npmi_targets: N is the number of documents of the chosen
--   datasets encoded with the SAE (documents where nothing fired included),
--   npmi = (ln n_both + ln N - ln n_i - ln n_j) / (ln N - ln n_both), clamped to [-1, 1],
--   and 1 when n_both = N; never NaN or infinity. An unknown dataset name is an error that
--   names it. This is a self-join of the fired rows on doc_id after dropping latents that
--   fired in fewer than min_count documents: its cost grows with the sum over documents of
--   (latents fired)^2, and the result of a large store is nearly all pairs (100k documents
--   x 16k latents took minutes and 16 GB). For a large store, materialise the pairs once
--   with saedb.cooccurrence.refresh_cooccurrence (blocked, bounded memory) into the table
--   latent_cooccurrence and query the view latent_npmi; for a few latents use npmi_targets.
--   refresh_cooccurrence gives exactly these rows for the same parameters. label_i,
--   label_j and label_similarity come from the current labels (current_labels) and their
--   embeddings of embedding_model; they are NULL for unlabelled latents, and
--   label_similarity is NULL unless both labels have an embedding. Filter near-synonymous
--   pairs with WHERE label_similarity IS NULL OR label_similarity < 0.8 (say).
-- column latent_i: the first latent of the pair (the smaller id)
-- column latent_j: the second latent of the pair (the larger id)
-- column n_i: documents where latent_i fired
-- column n_j: documents where latent_j fired
-- column n_both: documents where both fired
-- column n_docs: documents counted (N): those of the chosen datasets encoded with the SAE
-- column npmi: normalised pointwise mutual information of the pair, in [-1, 1]; 1 when n_both = n_docs
-- column label_i: the current label of latent_i (NULL when it has none)
-- column label_j: the current label of latent_j (NULL when it has none)
-- column label_similarity: cosine similarity of the two labels' embeddings (NULL when either has none)
CREATE OR REPLACE MACRO npmi(
    datasets := NULL, sae := NULL, min_count := 5, threshold := 0.0,
    embedding_model := 'sentence-transformers/all-MiniLM-L6-v2'
) AS TABLE
WITH npa_scope AS (
    SELECT CASE
        WHEN unknown IS NULL THEN resolve_sae(sae)
        ELSE error('npmi: there is no dataset named ' || unknown)
    END AS sae_id
    FROM (
        SELECT string_agg(u.name, ', ' ORDER BY u.name) AS unknown
        FROM (SELECT DISTINCT unnest(datasets) AS name) AS u
        ANTI JOIN datasets AS ds ON ds.name = u.name
    )
),
npa_docs AS (
    SELECT de.doc_id
    FROM doc_encodings AS de
    JOIN npa_scope AS c ON de.sae_id = c.sae_id
    JOIN documents AS d ON d.doc_id = de.doc_id
    JOIN datasets AS ds ON ds.dataset_id = d.dataset_id
    WHERE datasets IS NULL OR list_contains(datasets, ds.name)
),
npa_size AS (
    SELECT count(*) AS n_docs FROM npa_docs
),
npa_fired AS (
    SELECT dl.doc_id, dl.latent_id
    FROM doc_latents AS dl
    JOIN npa_scope AS c ON dl.sae_id = c.sae_id
    SEMI JOIN npa_docs AS x ON x.doc_id = dl.doc_id
    WHERE dl.max_act > CAST(threshold AS REAL)
),
npa_counts AS (
    SELECT latent_id, count(*) AS n
    FROM npa_fired
    GROUP BY latent_id
    HAVING count(*) >= min_count
),
npa_kept AS (
    SELECT f.doc_id, f.latent_id
    FROM npa_fired AS f
    SEMI JOIN npa_counts AS k ON k.latent_id = f.latent_id
),
npa_pairs AS (
    SELECT a.latent_id AS latent_i, b.latent_id AS latent_j, count(*) AS n_both
    FROM npa_kept AS a
    JOIN npa_kept AS b ON b.doc_id = a.doc_id AND b.latent_id > a.latent_id
    GROUP BY a.latent_id, b.latent_id
    HAVING count(*) >= min_count
),
npa_labels AS (
    SELECT cl.latent_id, cl.label, e.embedding
    FROM current_labels AS cl
    JOIN npa_scope AS c ON cl.sae_id = c.sae_id
    SEMI JOIN npa_counts AS k ON k.latent_id = cl.latent_id
    LEFT JOIN (
        SELECT le.label_id, le.embedding FROM label_embeddings AS le
        WHERE le.model = embedding_model
    ) AS e ON e.label_id = cl.label_id
)
SELECT
    p.latent_i,
    p.latent_j,
    ki.n AS n_i,
    kj.n AS n_j,
    p.n_both,
    s.n_docs,
    npmi_score(p.n_both, ki.n, kj.n, s.n_docs) AS npmi,
    li.label AS label_i,
    lj.label AS label_j,
    CAST(list_cosine_similarity(li.embedding, lj.embedding) AS DOUBLE) AS label_similarity
FROM npa_pairs AS p
JOIN npa_counts AS ki ON ki.latent_id = p.latent_i
JOIN npa_counts AS kj ON kj.latent_id = p.latent_j
CROSS JOIN npa_size AS s
LEFT JOIN npa_labels AS li ON li.latent_id = p.latent_i
LEFT JOIN npa_labels AS lj ON lj.latent_id = p.latent_j
ORDER BY npmi DESC, p.latent_i, p.latent_j;
