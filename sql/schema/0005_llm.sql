-- migration: 0005_llm
-- what: calls to OpenAI-compatible LLM and embedding endpoints (accounting and a cache of
--       answers), the detection scores of labels, and per-latent labelling failures.
-- notes: llm_calls has one row per HTTP attempt (a retried call leaves one 'retried' row per
--        failed attempt, then an 'ok' or 'failed' row) and one 'cached' row per answer served
--        from llm_cache (no tokens, cost 0), so the rows that are not 'cached' are exactly the
--        requests the endpoint saw. cost is NULL when no price was configured. llm_cache is
--        keyed on a SHA-256 of (kind, model, messages or input, parameters); it holds only
--        answers the caller accepted (an answer that could not be parsed is not kept). The API
--        key is never written to any table. saedb.llm writes both tables from one thread,
--        each row committed as soon as the call ends, so an interrupted run keeps what it
--        paid for. label_scores holds the confusion counts of a label's detection test
--        (held-out examples judged by the LLM against the label); latent_labels.score is its
--        balanced accuracy. label_failures records each latent the LLM labeler could not
--        label, and why.

CREATE SEQUENCE llm_call_ids START 1;

CREATE TABLE llm_calls (
    call_id            BIGINT PRIMARY KEY DEFAULT nextval('llm_call_ids'),
    session_id         VARCHAR NOT NULL,
    kind               VARCHAR NOT NULL CHECK (kind IN ('chat', 'embedding')),
    purpose            VARCHAR NOT NULL,
    model              VARCHAR NOT NULL,
    base_url           VARCHAR,
    request_hash       VARCHAR NOT NULL,
    sae_id             INTEGER,
    latent_id          INTEGER,
    attempt            INTEGER NOT NULL,
    status             VARCHAR NOT NULL CHECK (status IN ('ok', 'cached', 'retried', 'failed')),
    http_status        INTEGER,
    error              VARCHAR,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    cost               DOUBLE,
    latency_s          DOUBLE,
    started_at         TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE llm_cache (
    request_hash       VARCHAR PRIMARY KEY,
    kind               VARCHAR NOT NULL CHECK (kind IN ('chat', 'embedding')),
    model              VARCHAR NOT NULL,
    request            JSON NOT NULL,
    response           VARCHAR NOT NULL,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE label_scores (
    label_id           BIGINT PRIMARY KEY,
    sae_id             INTEGER NOT NULL,
    latent_id          INTEGER NOT NULL,
    judge_model        VARCHAR NOT NULL,
    n_positive         INTEGER NOT NULL,
    n_negative         INTEGER NOT NULL,
    true_pos           INTEGER NOT NULL,
    false_pos          INTEGER NOT NULL,
    true_neg           INTEGER NOT NULL,
    false_neg          INTEGER NOT NULL,
    accuracy           DOUBLE NOT NULL,
    balanced_accuracy  DOUBLE NOT NULL,
    "precision"        DOUBLE,
    recall             DOUBLE,
    round              INTEGER NOT NULL DEFAULT 1,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE label_failures (
    sae_id          INTEGER NOT NULL,
    latent_id       INTEGER NOT NULL,
    labeler         VARCHAR NOT NULL,
    model           VARCHAR,
    prompt_version  VARCHAR,
    stage           VARCHAR NOT NULL,
    error           VARCHAR NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
