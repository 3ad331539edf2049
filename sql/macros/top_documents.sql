-- name: top_documents
-- kind: table_macro
-- answers: In which documents does a latent fire most strongly, and what text is it firing on?
-- inputs: doc_latents, documents, datasets, settings
-- grain: one row per document, the k documents with the highest peak activation of the latent, strongest first
-- params: latent, sae := NULL, k := 10, context := 100
-- param latent: the latent (latent_id)
-- param sae: the SAE id; NULL means the store's default SAE
-- param k: how many documents to return
-- param context: characters of text to keep either side of the peak token in snippet
-- depends: resolve_sae, mark_span
-- notes: ties in max_act are broken by doc_id, so the result is deterministic.
-- column doc_id: the document
-- column dataset: the name of the document's dataset
-- column external_id: the document's id in its source corpus
-- column max_act: the latent's peak activation in the document
-- column snippet: the text around the peak token, the token wrapped in << >>, … where cut
CREATE OR REPLACE MACRO top_documents(latent, sae := NULL, k := 10, context := 100) AS TABLE
WITH strongest AS (
    SELECT dl.doc_id, dl.max_act, dl.max_char_start, dl.max_char_end
    FROM doc_latents AS dl
    WHERE dl.latent_id = latent
      AND dl.sae_id = resolve_sae(sae)
    ORDER BY dl.max_act DESC, dl.doc_id
    LIMIT k
)
SELECT
    t.doc_id,
    ds.name AS dataset,
    d.external_id,
    CAST(t.max_act AS DOUBLE) AS max_act,
    mark_span(d.text, t.max_char_start, t.max_char_end, context) AS snippet
FROM strongest AS t
JOIN documents AS d ON d.doc_id = t.doc_id
JOIN datasets AS ds ON ds.dataset_id = d.dataset_id
ORDER BY t.max_act DESC, t.doc_id;
