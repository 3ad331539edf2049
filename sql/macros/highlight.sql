-- name: highlight
-- kind: table_macro
-- answers: Where in a document did a latent peak: the document's text with the peak token wrapped in << >>, and a snippet around it.
-- inputs: doc_latents, documents, settings
-- grain: one row, or none when the latent did not fire in the document for that SAE
-- params: doc, latent, sae := NULL, context := 200
-- param doc: the document (documents.doc_id)
-- param latent: the latent (latent_id)
-- param sae: the SAE id; NULL means the store's default SAE
-- param context: characters of text to keep either side of the peak token in snippet
-- depends: resolve_sae, mark_span
-- notes: the peak token is documents.text from max_char_start to max_char_end of the
--   document's doc_latents row: 0-based code point offsets, end exclusive, as in Python.
-- column doc_id: the document
-- column sae_id: the SAE
-- column latent_id: the latent
-- column max_act: the latent's peak activation in the document
-- column char_start: 0-based character offset where the peak token starts
-- column char_end: 0-based character offset where the peak token ends (exclusive)
-- column token: the text of the peak token
-- column highlighted: the whole document text with the peak token wrapped in << >>
-- column snippet: up to context characters either side of the marked token, with … where cut
CREATE OR REPLACE MACRO highlight(doc, latent, sae := NULL, context := 200) AS TABLE
SELECT
    dl.doc_id,
    dl.sae_id,
    dl.latent_id,
    CAST(dl.max_act AS DOUBLE) AS max_act,
    dl.max_char_start AS char_start,
    dl.max_char_end AS char_end,
    substring(d.text, dl.max_char_start + 1, dl.max_char_end - dl.max_char_start) AS token,
    mark_span(d.text, dl.max_char_start, dl.max_char_end, NULL) AS highlighted,
    mark_span(d.text, dl.max_char_start, dl.max_char_end, context) AS snippet
FROM doc_latents AS dl
JOIN documents AS d ON d.doc_id = dl.doc_id
WHERE dl.doc_id = doc
  AND dl.latent_id = latent
  AND dl.sae_id = resolve_sae(sae);
