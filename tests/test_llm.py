"""saedb.llm against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py):
configuration, retries and backoff (429 with Retry-After, 500, timeouts), the cache, the
accounting in llm_calls / llm_spend, tolerant JSON parsing, rerank_latents, embed_texts, and
the API key staying out of errors and the store.
"""

from __future__ import annotations

import asyncio
import json
import math

import duckdb
import pytest

import saedb
from saedb import catalog, llm, migrations
from saedb.errors import ConfigError
from tests.openai_server import embed

KEY = "sk-test-0123456789abcdef-SECRET"


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "llm.duckdb"
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
    with saedb.open(path) as s:
        yield s


def config(server, **kw) -> llm.LLMConfig:
    base = {"base_url": server.base_url, "model": "test-model", "backoff": 0.01, "timeout": 2.0}
    return llm.LLMConfig(**{**base, **kw})


def chat(cfg, store, text: str, **kw):
    async def go():
        async with llm.LLMClient(cfg, store) as client:
            return await client.chat([{"role": "user", "content": text}], purpose="test", **kw)

    return asyncio.run(go())


def calls(store) -> list[dict]:
    return store.arrow(
        "SELECT attempt, status, http_status, error, prompt_tokens, completion_tokens, cost "
        "FROM llm_calls ORDER BY call_id"
    ).to_pylist()


# -- configuration ---------------------------------------------------------------------------


def test_config_file_env_and_overrides(tmp_path, monkeypatch) -> None:
    file = tmp_path / "llm.toml"
    file.write_text(
        'base_url = "http://localhost:11434/v1"\nmodel = "qwen"\napi_key = "from-file"\n'
        "price_in = 0.5\nprice_out = 1.5\nconcurrency = 3\n"
    )
    monkeypatch.setenv(llm.CONFIG_ENV, str(file))
    cfg = llm.LLMConfig.load(model="other", concurrency=None)
    assert (cfg.base_url, cfg.model, cfg.concurrency) == ("http://localhost:11434/v1", "other", 3)
    assert cfg.resolve_key() == "from-file" and "from-file" not in repr(cfg)
    assert cfg.cost(1_000_000, 2_000_000) == pytest.approx(0.5 + 3.0)
    monkeypatch.setenv("MY_KEY", KEY)
    assert llm.LLMConfig(api_key_env="MY_KEY").resolve_key() == KEY
    assert llm.LLMConfig().cost(10, 10) is None  # no prices: cost unknown, not 0
    file.write_text('modle = "typo"\n')
    with pytest.raises(ConfigError, match="unknown key.*modle.*valid keys"):
        llm.LLMConfig.load()
    monkeypatch.setenv(llm.CONFIG_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        llm.LLMConfig.load()
    with pytest.raises(ConfigError, match="http"):
        llm.LLMConfig(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="concurrency"):
        llm.LLMConfig(concurrency=0)


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"label": "x", "n": [1, 2]}',
        'Sure!\n```json\n{"label": "x", "n": [1, 2]}\n```\nAnything else?',
        '```\n{"label": "x", "n": [1, 2]}\n```',
        'The answer is {"label": "x", "n": [1, 2]} as requested.',
        'noise {not json} then {"label": "x", "n": [1, 2]}',
    ],
)
def test_parse_json_object_tolerates_fences_and_chatter(text) -> None:
    assert llm.parse_json_object(text) == {"label": "x", "n": [1, 2]}


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "empty"), ("   ", "empty"), ("no json here", "no JSON object"), ('{"a": ', "no JSON")],
)
def test_parse_json_object_errors_say_why(text, says) -> None:
    with pytest.raises(llm.LLMResponseError, match=says):
        llm.parse_json_object(text)


# -- retries, backoff, accounting ------------------------------------------------------------


def test_retries_429_500_timeout_and_honours_retry_after(openai_server, store) -> None:
    openai_server.fail("429", retry_after=1)
    openai_server.fail("500")
    openai_server.fail("timeout", seconds=1.5)
    cfg = config(openai_server, timeout=0.5, price_in=1.0, price_out=2.0)
    reply = chat(cfg, store, "hello there")
    assert reply.text == "I do not know what to say." and not reply.cached
    reqs = openai_server.requests
    assert [r.failure for r in reqs] == ["429", "500", "timeout", None]
    # Retry-After: 1 is honoured although the backoff base is 0.01 s
    assert reqs[1].received - reqs[0].received >= 1.0
    assert reqs[2].received - reqs[1].received < 0.5
    rows = calls(store)
    assert [(r["attempt"], r["status"], r["http_status"]) for r in rows] == [
        (1, "retried", 429),
        (2, "retried", 500),
        (3, "retried", None),
        (4, "ok", 200),
    ]
    assert "timeout" in rows[2]["error"] and "429" in rows[0]["error"]
    ok = rows[3]
    n_out = len(openai_server.answered[0].content.split())  # the server's usage counts words
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (2, n_out)
    assert ok["cost"] == pytest.approx((2 * 1.0 + n_out * 2.0) / 1e6)
    assert all(r["cost"] is None and r["prompt_tokens"] == 0 for r in rows[:3])


def test_gives_up_after_max_retries_and_records_each_attempt(openai_server, store) -> None:
    openai_server.fail("500", times=3)
    with pytest.raises(llm.LLMError, match="after 3 attempts: HTTP 500"):
        chat(config(openai_server, max_retries=2), store, "hi")
    assert len(openai_server.requests) == 3
    assert [r["status"] for r in calls(store)] == ["retried", "retried", "failed"]
    assert store.sql("SELECT count(*) AS n FROM llm_cache").n[0] == 0


def test_client_errors_are_not_retried_and_the_key_never_shows(openai_server, store) -> None:
    openai_server.fail("401")
    cfg = config(openai_server, api_key=KEY)
    with pytest.raises(llm.LLMEndpointError) as exc:
        chat(cfg, store, "hi")
    assert len(openai_server.requests) == 1  # a 401 is not retried
    assert openai_server.requests[0].authorization == f"Bearer {KEY}"  # the key was sent...
    assert KEY not in str(exc.value) and "check the API key" in str(exc.value)  # ...not shown
    row = calls(store)[0]
    assert row["status"] == "failed" and row["http_status"] == 401
    assert KEY not in row["error"] and "***" in row["error"]


def test_identical_requests_come_from_the_cache_at_no_cost(openai_server, store) -> None:
    cfg = config(openai_server, price_in=3.0, price_out=3.0)
    first = chat(cfg, store, "same words")
    again = chat(cfg, store, "same words")
    other = chat(cfg, store, "same words", temperature=0.7)  # other parameters: a new request
    assert first.text == again.text and again.cached and not other.cached
    assert len(openai_server.requests) == 2
    rows = calls(store)
    assert [r["status"] for r in rows] == ["ok", "cached", "ok"]
    assert rows[1]["cost"] == 0 and rows[1]["prompt_tokens"] == 0
    spend = store.sql("SELECT * FROM llm_spend").iloc[0]
    assert (spend.requests, spend.ok, spend.cached, spend.failed) == (2, 2, 1, 0)
    assert spend.prompt_tokens == 4 and spend.cost == pytest.approx(sum(r["cost"] for r in rows))


def test_concurrent_identical_requests_are_sent_once(openai_server, store) -> None:
    openai_server.delay = 0.2

    async def go():
        async with llm.LLMClient(config(openai_server), store) as client:
            msgs = [{"role": "user", "content": "one question"}]
            return await asyncio.gather(*(client.chat(msgs, purpose="t") for _ in range(5)))

    replies = asyncio.run(go())
    assert len(openai_server.requests) == 1
    assert sorted(r.cached for r in replies) == [False] + [True] * 4


def test_concurrency_is_bounded(openai_server, store) -> None:
    openai_server.delay = 0.15

    async def go():
        async with llm.LLMClient(config(openai_server, concurrency=3), store) as client:
            await asyncio.gather(
                *(
                    client.chat([{"role": "user", "content": f"q {i}"}], purpose="t")
                    for i in range(9)
                )
            )
            return client.stats

    stats = asyncio.run(go())
    assert openai_server.max_in_flight == 3 and stats.calls == 9 and stats.ok == 9


def test_bad_json_gets_one_retry_quoting_the_error(openai_server, store) -> None:
    openai_server.fail("malformed")
    cands = [
        {"latent_id": 5, "label": "zebra stripes", "description": "animals", "similarity": 0.2},
        {"latent_id": 6, "label": "coffee", "description": "drinks", "similarity": 0.9},
        {"latent_id": 7, "label": "zebra", "description": "savanna animals", "similarity": 0.4},
    ]
    got = llm.rerank_latents(config(openai_server), "zebra stripes", cands, store=store)
    reqs = openai_server.requests
    assert len(reqs) == 2 and "could not be used" in reqs[1].text and "JSON" in reqs[1].text
    assert [c["latent_id"] for c in got] == [5, 7]  # coffee is not relevant
    assert got[0]["relevance"] == 1.0 and got[1]["relevance"] == 0.5
    assert got[0]["label"] == "zebra stripes" and got[0]["similarity"] == 0.2
    purposes = store.sql("SELECT purpose FROM llm_calls ORDER BY call_id").purpose.tolist()
    assert purposes == ["rerank", "rerank-retry"]
    cached = store.sql("SELECT response FROM llm_cache").response.tolist()
    assert len(cached) == 1 and "unfinished" not in cached[0]  # the bad answer is not cached


def test_rerank_fails_clearly_after_two_bad_answers(openai_server) -> None:
    openai_server.fail("malformed", times=2)
    cands = [{"latent_id": 1, "label": "x", "description": "y", "similarity": 0.1}]
    with pytest.raises(llm.LLMResponseError, match="no JSON object"):
        llm.rerank_latents(config(openai_server), "x", cands)
    assert len(openai_server.requests) == 2
    with pytest.raises(ConfigError):
        llm.rerank_latents(config(openai_server), "  ", cands)
    assert llm.rerank_latents(config(openai_server), "x", []) == []


def test_parse_rerank_checks_relevance() -> None:
    cands = [{"latent_id": 1, "similarity": 0.5}, {"latent_id": 2, "similarity": 0.9}]
    got = llm.parse_rerank(
        '{"relevant": [{"latent_id": 1, "relevance": 0.5}, {"latent_id": 2, "relevance": 0.5},'
        ' {"latent_id": 42, "relevance": 1.0}, {"latent_id": 1, "relevance": 0.3}]}',
        cands,
    )
    assert [(c["latent_id"], c["relevance"]) for c in got] == [(2, 0.5), (1, 0.5)]
    with pytest.raises(llm.LLMResponseError, match="not in"):
        llm.parse_rerank('{"relevant": [{"latent_id": 1, "relevance": 7}]}', cands)
    with pytest.raises(llm.LLMResponseError, match="relevant"):
        llm.parse_rerank('{"results": []}', cands)


def test_embed_texts_batches_retries_and_caches(openai_server, store) -> None:
    texts = ["zebra stripes", "coffee cup", "a zebra", "river bank", "stripes"]
    openai_server.fail("500")
    cfg = config(openai_server, model="embedder", embed_batch=2)
    vectors = llm.embed_texts(cfg, texts, store=store)
    assert len(vectors) == 5
    for text, v in zip(texts, vectors, strict=True):
        assert v == pytest.approx(embed(text))
        assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6)
    assert len(openai_server.requests) == 4  # 3 batches, one retried
    assert sorted(len(r.body["input"]) for r in openai_server.answered) == [1, 2, 2]
    assert llm.embed_texts(cfg, texts, store=store) == vectors
    assert len(openai_server.requests) == 4  # all from the cache
    statuses = store.sql("SELECT status, kind, purpose FROM llm_calls")
    assert set(statuses.kind) == {"embedding"} and (statuses.status == "cached").sum() == 3


def test_no_key_in_the_store_file(openai_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAEDB_TEST_KEY", KEY)
    path = tmp_path / "k.duckdb"
    with duckdb.connect(str(path)) as con:
        migrations.migrate(con)
        catalog.install(con)
    openai_server.fail("401")
    with saedb.open(path) as s:
        cfg = config(openai_server, api_key_env="SAEDB_TEST_KEY")
        with pytest.raises(llm.LLMError):
            chat(cfg, s, "one")
        chat(cfg, s, "two")
        llm.embed_texts(cfg, ["three"], store=s)
        assert s.sql("SELECT count(*) AS n FROM llm_calls").n[0] == 3
    assert all(r.authorization == f"Bearer {KEY}" for r in openai_server.requests)
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("k.duckdb"))
    assert KEY.encode() not in data and b"SECRET" not in data


def test_request_hash_covers_model_messages_and_params() -> None:
    a = llm._request_hash("chat", {"model": "m", "messages": [1], "params": {"t": 0}})
    assert a == llm._request_hash("chat", {"params": {"t": 0}, "messages": [1], "model": "m"})
    assert a != llm._request_hash("chat", {"model": "n", "messages": [1], "params": {"t": 0}})
    assert a != llm._request_hash("chat", {"model": "m", "messages": [2], "params": {"t": 0}})
    assert a != llm._request_hash("chat", {"model": "m", "messages": [1], "params": {"t": 1}})
    assert json.loads(json.dumps({"k": a}))["k"] == a


def test_backoff_doubles_per_attempt_and_is_capped(openai_server, store, monkeypatch) -> None:
    monkeypatch.setattr(llm.random, "random", lambda: 0.5)  # jitter factor 0.5 + 0.5 = 1
    openai_server.fail("500", times=3)
    openai_server.fail("429", retry_after=30)  # more than max_backoff: capped too
    chat(config(openai_server, backoff=0.2, max_backoff=0.5), store, "patience")
    reqs = openai_server.requests
    assert [r.failure for r in reqs] == ["500", "500", "500", "429", None]
    gaps = [b.received - a.received for a, b in zip(reqs, reqs[1:], strict=False)]
    # 0.2, 0.4, then 0.8 and 30 capped at 0.5 (upper bounds leave room for a loaded machine)
    for gap, want in zip(gaps, [0.2, 0.4, 0.5, 0.5], strict=True):
        assert want <= gap < want + 0.25, gaps


def test_adapts_to_reasoning_model_parameters(openai_server, store) -> None:
    cfg = config(openai_server, max_tokens=300)
    chat(cfg, store, "first")  # an ordinary server takes max_tokens and temperature
    assert openai_server.requests[0].body["max_tokens"] == 300
    assert openai_server.requests[0].body["temperature"] == 0.0
    openai_server.reset()
    openai_server.strict_params = True

    async def go():
        async with llm.LLMClient(cfg, store) as client:
            a = await client.chat([{"role": "user", "content": "a"}], purpose="t")
            b = await client.chat([{"role": "user", "content": "b"}], purpose="t")
            return a, b

    a, b = asyncio.run(go())
    assert a.text == b.text == "I do not know what to say."
    statuses = [r.status for r in openai_server.requests]
    assert statuses == [400, 400, 200, 200]  # refused twice, then adapted for the session
    last = openai_server.requests[-1].body
    assert last["max_completion_tokens"] == 300 and "max_tokens" not in last
    assert "temperature" not in last
    rows = calls(store)[1:]
    assert [(r["status"], r["http_status"]) for r in rows] == [
        ("retried", 400),
        ("retried", 400),
        ("ok", 200),
        ("ok", 200),
    ]
    assert "max_completion_tokens" in rows[0]["error"]
    # a new session adapts again (the 400s cost nothing) and then finds the answer cached
    openai_server.reset()
    again = chat(cfg, store, "a")
    assert again.cached and [r.status for r in openai_server.requests] == [400, 400]


def test_a_cut_off_answer_says_to_raise_max_tokens(openai_server, store) -> None:
    openai_server.fail("length", times=2)
    cands = [{"latent_id": 1, "label": "tea", "description": "drinks", "similarity": 0.5}]
    with pytest.raises(llm.LLMResponseError, match=r"cut off at the limit of 50.*max_tokens"):
        llm.rerank_latents(config(openai_server, max_tokens=50), "tea", cands, store=store)
    assert [r.failure for r in openai_server.requests] == ["length", "length"]
    assert store.sql("SELECT count(*) AS n FROM llm_cache").n[0] == 0


@pytest.mark.parametrize(("kind", "says"), [("empty", "0 embeddings for 2"), ("zero", "zero")])
def test_bad_embeddings_are_errors_and_not_cached(openai_server, store, kind, says) -> None:
    openai_server.fail(kind)
    cfg = config(openai_server, model="embedder")
    with pytest.raises(llm.LLMResponseError, match=says):
        llm.embed_texts(cfg, ["zebra", "kettle"], store=store)
    assert store.sql("SELECT count(*) AS n FROM llm_cache").n[0] == 0
    vectors = llm.embed_texts(cfg, ["zebra", "kettle"], store=store)  # asked again: fine now
    assert vectors[0] == pytest.approx(embed("zebra"))
    assert len(openai_server.answered) == 2


def test_endpoint_encoder_gives_unit_vectors(openai_server, store) -> None:
    enc = llm.EndpointEncoder(config(openai_server, model="embedder"), store)
    got = enc.encode(["zebra stripes", "tea"])
    assert got[0] == pytest.approx(embed("zebra stripes"))
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in got)
    with pytest.raises(ConfigError, match="embedding model"):
        llm.EndpointEncoder(llm.LLMConfig(base_url=openai_server.base_url))
    with pytest.raises(llm.LLMError, match="zero or non-finite vector for label 7"):
        llm.unit_vectors([[1.0, 0.0], [0.0, 0.0]], "label", [3, 7])
