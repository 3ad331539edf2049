-- name: llm_spend
-- kind: view
-- answers: What have calls to LLM and embedding endpoints cost, in requests, tokens and estimated money, per model and purpose?
-- inputs: llm_calls
-- grain: one row per (model, purpose, kind) that has at least one recorded call
-- notes: counts every HTTP attempt: requests = ok + retried + failed, the requests the
--   endpoint saw; cache hits are counted apart and cost nothing. cost sums the estimates of
--   answered calls; it is NULL when no call of the group had a price configured, and
--   n_unpriced says how many answered calls had none (their cost is not in the sum).
--   Filter llm_calls on session_id or started_at for one run.
-- column model: the model name at the endpoint
-- column purpose: what the calls were for ('label', 'label-retry', 'relabel', 'score', 'score-retry', 'rerank', 'embed', ...)
-- column kind: 'chat' or 'embedding'
-- column requests: HTTP requests sent (every attempt, retries included)
-- column ok: requests answered
-- column retried: failed requests that were tried again
-- column failed: requests that failed for good (the call gave up)
-- column cached: calls answered from llm_cache without a request
-- column prompt_tokens: prompt tokens of the answered requests
-- column completion_tokens: completion tokens of the answered requests
-- column cost: estimated cost of the answered requests (price per 1M tokens as configured); NULL when none was priced
-- column n_unpriced: answered requests without a configured price
-- column mean_latency_s: mean seconds per answered request
-- column first_call: when the first call of the group started
-- column last_call: when the last call of the group started
CREATE OR REPLACE VIEW llm_spend AS
SELECT
    c.model,
    c.purpose,
    c.kind,
    count(*) FILTER (WHERE c.status <> 'cached') AS requests,
    count(*) FILTER (WHERE c.status = 'ok') AS ok,
    count(*) FILTER (WHERE c.status = 'retried') AS retried,
    count(*) FILTER (WHERE c.status = 'failed') AS failed,
    count(*) FILTER (WHERE c.status = 'cached') AS cached,
    coalesce(sum(c.prompt_tokens) FILTER (WHERE c.status = 'ok'), 0) AS prompt_tokens,
    coalesce(sum(c.completion_tokens) FILTER (WHERE c.status = 'ok'), 0) AS completion_tokens,
    sum(c.cost) FILTER (WHERE c.status = 'ok') AS cost,
    count(*) FILTER (WHERE c.status = 'ok' AND c.cost IS NULL) AS n_unpriced,
    avg(c.latency_s) FILTER (WHERE c.status = 'ok') AS mean_latency_s,
    min(c.started_at) AS first_call,
    max(c.started_at) AS last_call
FROM llm_calls AS c
GROUP BY c.model, c.purpose, c.kind;
