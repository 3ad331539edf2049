-- migration: 0004_labels
-- what: human-readable labels of latents (several versions per latent may coexist: one row per
--       labelling, by whichever labeler, model and prompt version made it) and the sentence
--       embeddings of those labels.
-- notes: a label is never empty (CHECK). score is NULL when the label was not scored (the
--        offline labeler never scores); the view current_labels picks per (sae_id, latent_id)
--        the highest score, then the most recent. label_embeddings is keyed on label_id, so
--        an embedding always belongs to one exact label version; a label may have embeddings
--        from several embedding models (model says which). Rows are only ever inserted, by
--        saedb.labels, one transaction per chunk of latents.

CREATE TABLE latent_labels (
    label_id        BIGINT PRIMARY KEY,
    sae_id          INTEGER NOT NULL,
    latent_id       INTEGER NOT NULL,
    label           VARCHAR NOT NULL CHECK (length(trim(label)) > 0),
    description     VARCHAR,
    labeler         VARCHAR NOT NULL,
    model           VARCHAR,
    prompt_version  VARCHAR,
    score           DOUBLE,
    n_examples      INTEGER NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE label_embeddings (
    label_id    BIGINT NOT NULL,
    model       VARCHAR NOT NULL,
    embedding   FLOAT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (label_id, model)
);
