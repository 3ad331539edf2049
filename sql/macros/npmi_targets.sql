-- name: npmi_targets
-- kind: table_macro
-- answers: Which latents fire together with each of a few target latents more often than chance, by normalised pointwise mutual information (NPMI) over documents?
-- inputs: doc_latents, doc_encodings, documents, datasets, settings, current_labels, label_embeddings
-- grain: one row per (target latent, other latent) that fired together in at least min_count documents, sorted by target_latent, then npmi largest first (ties by latent_id)
-- params: targets, datasets := NULL, sae := NULL, min_count := 5, threshold := 0.0, embedding_model := 'sentence-transformers/all-MiniLM-L6-v2'
-- param targets: LIST of target latent ids, e.g. [12, 345] (duplicates count once; a target that never fired has no rows)
-- param datasets: LIST of dataset names (datasets.name) whose documents are counted; NULL means every dataset
-- param sae: the SAE id; NULL means the store's default SAE
-- param min_count: keep pairs that fired together in at least this many documents (values below 1 act as 1: pairs that never fired together have no row)
-- param threshold: a latent fired in a document when its max_act there is above this (compared as REAL, the precision max_act is stored in)
-- param embedding_model: the embedding model whose label embeddings give label_similarity (label_embeddings.model)
-- depends: resolve_sae, npmi_score, current_labels
-- notes: the documents are those of the chosen datasets encoded with the SAE (rows in
--   doc_encodings), documents where nothing fired included; N is their number. With
--   p(i) = n_i / N and p(i, j) = n_both / N, npmi = ln(p(i, j) / (p(i) p(j))) / -ln p(i, j),
--   computed as (ln n_both + ln N - ln n_i - ln n_j) / (ln N - ln n_both), clamped to [-1, 1]
--   against rounding. When n_both = N (both fired in every document) the quotient is 0 / 0
--   and npmi is defined as 1, so no row holds NaN or infinity. npmi is 1 when the two
--   latents always fire together, 0 when they are independent, towards -1 when they avoid
--   each other (pairs that never fire together are not returned). An unknown dataset name
--   is an error that names it; datasets with no documents encoded with the SAE give no rows.
--   The work is one join of the targets' documents against all fired rows of those
--   documents, after dropping latents that fired in fewer than min_count documents: fast
--   for a few hundred targets. npmi gives every pair, and the table latent_cooccurrence
--   (view latent_npmi, filled by saedb.cooccurrence.refresh_cooccurrence) every pair of a
--   large store. label_i (of target_latent), label_j (of latent_id) and label_similarity
--   come from the current labels and their embeddings of embedding_model, NULL as in npmi.
-- column target_latent: the target latent (one of targets)
-- column latent_id: another latent that fired in at least min_count of the target's documents
-- column n_target: documents where the target fired
-- column n_latent: documents where latent_id fired
-- column n_both: documents where both fired
-- column npmi: normalised pointwise mutual information of the pair, in [-1, 1]; 1 when n_both is the number of documents
-- column label_i: the current label of target_latent (NULL when it has none)
-- column label_j: the current label of latent_id (NULL when it has none)
-- column label_similarity: cosine similarity of the two labels' embeddings (NULL when either has none)
CREATE OR REPLACE MACRO npmi_targets(
    targets, datasets := NULL, sae := NULL, min_count := 5, threshold := 0.0,
    embedding_model := 'sentence-transformers/all-MiniLM-L6-v2'
) AS TABLE
WITH npt_scope AS (
    SELECT CASE
        WHEN unknown IS NULL THEN resolve_sae(sae)
        ELSE error('npmi_targets: there is no dataset named ' || unknown)
    END AS sae_id
    FROM (
        SELECT string_agg(u.name, ', ' ORDER BY u.name) AS unknown
        FROM (SELECT DISTINCT unnest(datasets) AS name) AS u
        ANTI JOIN datasets AS ds ON ds.name = u.name
    )
),
npt_docs AS (
    SELECT de.doc_id
    FROM doc_encodings AS de
    JOIN npt_scope AS c ON de.sae_id = c.sae_id
    JOIN documents AS d ON d.doc_id = de.doc_id
    JOIN datasets AS ds ON ds.dataset_id = d.dataset_id
    WHERE datasets IS NULL OR list_contains(datasets, ds.name)
),
npt_size AS (
    SELECT count(*) AS n_docs FROM npt_docs
),
npt_fired AS (
    SELECT dl.doc_id, dl.latent_id
    FROM doc_latents AS dl
    JOIN npt_scope AS c ON dl.sae_id = c.sae_id
    SEMI JOIN npt_docs AS x ON x.doc_id = dl.doc_id
    WHERE dl.max_act > CAST(threshold AS REAL)
),
npt_counts AS (
    SELECT latent_id, count(*) AS n
    FROM npt_fired
    GROUP BY latent_id
    HAVING count(*) >= min_count
),
npt_targets AS (
    SELECT DISTINCT CAST(unnest(targets) AS INTEGER) AS latent_id
),
npt_target_docs AS (
    SELECT f.doc_id, f.latent_id
    FROM npt_fired AS f
    SEMI JOIN npt_targets AS t ON t.latent_id = f.latent_id
    SEMI JOIN npt_counts AS k ON k.latent_id = f.latent_id
),
npt_pairs AS (
    SELECT t.latent_id AS target_latent, f.latent_id, count(*) AS n_both
    FROM npt_target_docs AS t
    JOIN npt_fired AS f ON f.doc_id = t.doc_id AND f.latent_id <> t.latent_id
    SEMI JOIN npt_counts AS k ON k.latent_id = f.latent_id
    GROUP BY t.latent_id, f.latent_id
    HAVING count(*) >= min_count
),
npt_labels AS (
    SELECT cl.latent_id, cl.label, e.embedding
    FROM current_labels AS cl
    JOIN npt_scope AS c ON cl.sae_id = c.sae_id
    SEMI JOIN npt_counts AS k ON k.latent_id = cl.latent_id
    LEFT JOIN (
        SELECT le.label_id, le.embedding FROM label_embeddings AS le
        WHERE le.model = embedding_model
    ) AS e ON e.label_id = cl.label_id
)
SELECT
    p.target_latent,
    p.latent_id,
    kt.n AS n_target,
    kl.n AS n_latent,
    p.n_both,
    npmi_score(p.n_both, kt.n, kl.n, s.n_docs) AS npmi,
    lt.label AS label_i,
    ll.label AS label_j,
    CAST(list_cosine_similarity(lt.embedding, ll.embedding) AS DOUBLE) AS label_similarity
FROM npt_pairs AS p
JOIN npt_counts AS kt ON kt.latent_id = p.target_latent
JOIN npt_counts AS kl ON kl.latent_id = p.latent_id
CROSS JOIN npt_size AS s
LEFT JOIN npt_labels AS lt ON lt.latent_id = p.target_latent
LEFT JOIN npt_labels AS ll ON ll.latent_id = p.latent_id
ORDER BY p.target_latent, npmi DESC, p.latent_id;
