"""Calls to OpenAI-compatible chat and embedding endpoints, with a cache and accounting.

Anything that speaks the OpenAI protocol works: OpenAI itself, OpenRouter, vLLM
(``http://localhost:8000/v1``), Ollama (``http://localhost:11434/v1``). :class:`LLMConfig` says
where and how (from arguments, a TOML file and the environment); :class:`LLMClient` makes the
calls with the ``openai`` package (an optional dependency: the ``llm`` extra):

- bounded concurrency (an ``asyncio.Semaphore`` of ``concurrency`` requests in flight);
- retries with exponential backoff and jitter on 429 (honouring ``Retry-After``), 5xx, timeouts
  and connection errors; the ``openai`` package's own retries are off, so every attempt is ours
  and is counted;
- with a store: a cache (``llm_cache``, keyed on a SHA-256 of the model, messages and
  parameters) answers identical requests without a call, and every attempt, cache hit and
  failure is a row of ``llm_calls`` with tokens, estimated cost, latency, status and error.
  Rows are written from the thread running the event loop and committed one by one, so an
  interrupted run keeps what it paid for.

The API key comes from the environment variable ``api_key_env`` or the config file. It is
never written to the store, never printed, and removed from every error message.

:func:`rerank_latents` and :func:`embed_texts` (with async twins) are the entry points for
other parts of saedb; :mod:`saedb.llm_labels` builds the LLM labeler on :class:`LLMClient`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import math
import os
import random
import re
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from saedb.errors import ConfigError, MissingDependencyError, SaedbError

if TYPE_CHECKING:
    from saedb.store import Store

T = TypeVar("T")

CONFIG_ENV = "SAEDB_LLM_CONFIG"
"""Environment variable naming the config file (instead of :data:`DEFAULT_CONFIG_PATH`)."""
DEFAULT_CONFIG_PATH = Path("~/.config/saedb/llm.toml")
"""The config file read when ``$SAEDB_LLM_CONFIG`` is not set (if it exists)."""
RERANK_PROMPT_VERSION = "rerank-1"


class LLMError(SaedbError):
    """An LLM or embedding endpoint failed, or gave an answer saedb cannot use."""


class LLMResponseError(LLMError):
    """The endpoint answered, but the answer is not what was asked for (bad JSON, blank)."""


class LLMEndpointError(LLMError):
    """The endpoint refuses every call (bad key, unknown model, wrong URL): no use going on."""


# -- configuration ---------------------------------------------------------------------------


@dataclass
class LLMConfig:
    """Where the OpenAI-compatible endpoint is and how to call it."""

    base_url: str | None = None
    """The endpoint's base URL, e.g. ``http://localhost:8000/v1``; None: OpenAI's own."""
    model: str | None = None
    """The model name the endpoint knows (``gpt-4o-mini``, ``Qwen/Qwen2.5-7B-Instruct``)."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the API key."""
    api_key: str | None = field(default=None, repr=False)
    """The key itself (from the config file only); wins over ``api_key_env``. Never stored."""
    price_in: float | None = None
    """Price per 1M prompt tokens, for cost estimates; None: cost unknown."""
    price_out: float | None = None
    """Price per 1M completion tokens, for cost estimates; None: cost unknown."""
    concurrency: int = 8
    """Requests in flight at once."""
    max_retries: int = 5
    """Retries of a failed request (429, 5xx, timeout, connection error) before giving up."""
    timeout: float = 60.0
    """Seconds to wait for one answer."""
    backoff: float = 1.0
    """Base of the exponential backoff in seconds (attempt n waits about backoff * 2**(n-1))."""
    max_backoff: float = 60.0
    """Longest wait between attempts, also the cap on an endpoint's Retry-After."""
    temperature: float = 0.0
    """Sampling temperature of chat calls (0: as deterministic as the endpoint allows)."""
    max_tokens: int = 400
    """Most completion tokens per chat call."""
    embed_batch: int = 64
    """Texts per embeddings request."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {self.concurrency}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, not {self.max_retries}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive, not {self.timeout}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError("backoff and max_backoff must be 0 or more seconds")
        for name in ("price_in", "price_out"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be 0 or more (a price per 1M tokens)")
        if self.embed_batch < 1 or self.max_tokens < 1:
            raise ConfigError("embed_batch and max_tokens must be at least 1")
        if self.base_url is not None and not re.match(r"^https?://", self.base_url):
            raise ConfigError(
                f"base URL {self.base_url!r} must start with http:// or https:// "
                "(e.g. http://localhost:8000/v1)"
            )

    @property
    def configured(self) -> bool:
        """True when an endpoint or model was named (otherwise saedb labels offline)."""
        return bool(self.base_url or self.model)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> LLMConfig:
        """Defaults, then the config file, then ``overrides`` that are not None.

        The file is ``path``, else ``$SAEDB_LLM_CONFIG``, else ``~/.config/saedb/llm.toml``
        if it exists; its keys are this class's fields (``base_url``, ``model``, ``api_key``,
        ``api_key_env``, ``price_in``, ``price_out``, ``concurrency``, ``max_retries``,
        ``timeout``, ...).
        """
        values: dict[str, Any] = {}
        where = path or os.environ.get(CONFIG_ENV)
        file = Path(where).expanduser() if where else DEFAULT_CONFIG_PATH.expanduser()
        if where and not file.is_file():
            raise ConfigError(f"LLM config file {file} does not exist")
        if file.is_file():
            values.update(_read_config(file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolve_key(self) -> str | None:
        """The API key: the config file's, else ``$api_key_env``'s, else None."""
        return self.api_key or os.environ.get(self.api_key_env) or None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Estimated cost of a call; None when a price is not configured."""
        if self.price_in is None or self.price_out is None:
            return None
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


def _read_config(file: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read LLM config file {file}: {exc}") from exc
    fields = {f.name for f in dataclasses.fields(LLMConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{file}: unknown key(s) {', '.join(unknown)}; valid keys are "
            f"{', '.join(sorted(fields))}"
        )
    return data


# -- parsing answers -------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def parse_json_object(text: str | None) -> dict[str, Any]:
    """The JSON object in a model's answer, tolerating code fences and text around it.

    Raises :class:`LLMResponseError` saying what was wrong when there is none.
    """
    if text is None or not text.strip():
        raise LLMResponseError("the answer is empty")
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    decoder = json.JSONDecoder()
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    last_error = "no '{' in it"
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            last_error = str(exc)
            continue
        if isinstance(obj, dict):
            return obj
    snippet = " ".join(text.split())[:200]
    raise LLMResponseError(f"no JSON object in the answer ({last_error}): {snippet!r}")


# -- the client ------------------------------------------------------------------------------


@dataclass
class CallStats:
    """What a client's calls cost so far (this process only; ``llm_calls`` has them all)."""

    calls: int = 0
    """Requests sent to the endpoint (every attempt, retries included)."""
    ok: int = 0
    retried: int = 0
    failed: int = 0
    cached: int = 0
    """Requests answered from ``llm_cache`` (no call, no cost)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0
    """Answered calls whose cost is unknown (no price configured)."""


@dataclass(frozen=True)
class Reply:
    """One chat answer: the text, the parsed value, and whether it came from the cache."""

    text: str
    value: Any
    cached: bool
    prompt_tokens: int
    completion_tokens: int


class LLMClient:
    """Chat and embedding calls for one session; ``store`` (optional) gives cache and accounting.

    Use it inside one event loop (``async with LLMClient(...) as client``). Store writes happen
    in that loop's thread.
    """

    def __init__(self, config: LLMConfig, store: Store | None = None) -> None:
        try:
            import openai
        except ImportError as exc:
            raise MissingDependencyError(
                f"LLM calls need the openai package ({exc}): pip install 'saedb[llm]'"
            ) from exc
        if not config.model:
            raise ConfigError("no model named: give --model NAME (or model in the LLM config)")
        self.config = config
        self.store = store
        self.session_id = uuid.uuid4().hex
        self.stats = CallStats()
        self._openai = openai
        self._secret = config.resolve_key()
        self._client = openai.AsyncOpenAI(
            api_key=self._secret or "no-key",
            base_url=config.base_url,
            timeout=config.timeout,
            max_retries=0,
        )
        self._sem: asyncio.Semaphore | None = None
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self._token_param = "max_tokens"
        """Renamed to max_completion_tokens when the endpoint refuses max_tokens."""
        self._dropped: set[str] = set()
        """Chat parameters the endpoint refused (they are left out from then on)."""

    @property
    def where(self) -> str:
        """The endpoint, for messages."""
        return self.config.base_url or "the OpenAI API"

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    def redact(self, text: str) -> str:
        """``text`` with the API key (and the Bearer header) removed."""
        if self._secret:
            text = text.replace(self._secret, "***")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)

    # -- chat ------------------------------------------------------------------------------

    async def chat(
        self,
        messages: Sequence[dict[str, str]],
        *,
        purpose: str,
        parse: Callable[[str], T] | None = None,
        sae_id: int | None = None,
        latent_id: int | None = None,
        **extra: Any,
    ) -> Reply:
        """One chat completion, from the cache when the same request was answered before.

        ``parse`` turns the answer's text into a value; when it raises, the answer is not
        cached and the error propagates (the call was still made and is accounted). When the
        endpoint refuses a parameter this client can do without (OpenAI's reasoning models
        take ``max_completion_tokens`` instead of ``max_tokens`` and only the default
        temperature), the client adapts for the rest of the session and asks again.
        """
        while True:
            params = self._chat_params(extra)
            try:
                return await self._chat(messages, params, purpose, parse, (sae_id, latent_id))
            except _Unsupported as exc:
                self._adapt(exc.param)

    def _chat_params(self, extra: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {self._token_param: self.config.max_tokens}
        if "temperature" not in self._dropped:
            params["temperature"] = self.config.temperature
        params.update(extra)
        for name in self._dropped:
            params.pop(name, None)
        return params

    def _adapt(self, param: str) -> None:
        if param == "max_tokens":
            self._token_param = "max_completion_tokens"
        else:
            self._dropped.add(param)

    async def _chat(
        self,
        messages: Sequence[dict[str, str]],
        params: dict[str, Any],
        purpose: str,
        parse: Callable[[str], T] | None,
        subject: tuple[int | None, int | None],
    ) -> Reply:
        request = {"model": self.config.model, "messages": list(messages), "params": params}
        key = _request_hash("chat", request)
        while key in self._inflight:  # the same request is under way: wait for its answer
            try:
                await asyncio.shield(self._inflight[key])
            except Exception:  # noqa: BLE001 - that caller reports its own failure
                pass
        cached = self._cache_get(key)
        if cached is not None:
            self._record(key, "chat", purpose, subject, 0, "cached", None, None, 0, 0, 0.0)
            value = _parsed(parse, cached["response"])
            return Reply(cached["response"], value, True, 0, 0)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            resp, tokens = await self._with_retries(
                "chat",
                purpose,
                key,
                subject,
                lambda: self._client.chat.completions.create(
                    model=self.config.model, messages=list(messages), **params
                ),
                adaptable=self._adaptable(params),
            )
            choice = resp.choices[0] if resp.choices else None
            text = (choice.message.content if choice and choice.message else None) or ""
            try:
                value = _parsed(parse, text)
            except LLMResponseError as exc:
                if choice is not None and getattr(choice, "finish_reason", None) == "length":
                    limit = params.get(self._token_param)
                    exc.args = (
                        f"{exc} (the answer was cut off at the limit of {limit} completion "
                        "tokens: raise max_tokens in the LLM config)",
                    )
                raise
            self._cache_put(key, "chat", request, text, *tokens)
            fut.set_result(None)
            return Reply(text, value, False, *tokens)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else LLMError("cancelled"))
            fut.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            del self._inflight[key]

    def _adaptable(self, params: dict[str, Any]) -> frozenset[str]:
        """The parameters of this request the client can rename or leave out if refused."""
        names = {"max_tokens"} if self._token_param == "max_tokens" else set()
        if "temperature" in params:
            names.add("temperature")
        return frozenset(names & set(params))

    # -- embeddings ------------------------------------------------------------------------

    async def embed(
        self, texts: Sequence[str], *, purpose: str = "embed", model: str | None = None
    ) -> list[list[float]]:
        """Embeddings of ``texts`` from the endpoint, ``embed_batch`` texts per request."""
        model = model or self.config.model
        assert model is not None
        batches = [
            list(texts[i : i + self.config.embed_batch])
            for i in range(0, len(texts), self.config.embed_batch)
        ]
        results = await asyncio.gather(*(self._embed_batch(b, purpose, model) for b in batches))
        return [v for batch in results for v in batch]

    async def _embed_batch(self, texts: list[str], purpose: str, model: str) -> list[list[float]]:
        request = {"model": model, "input": texts, "params": {"encoding_format": "float"}}
        key = _request_hash("embedding", request)
        cached = self._cache_get(key)
        if cached is not None:
            self._record(key, "embedding", purpose, (None, None), 0, "cached", None, None, 0, 0, 0)
            return json.loads(cached["response"])
        resp, tokens = await self._with_retries(
            "embedding",
            purpose,
            key,
            (None, None),
            lambda: self._client.embeddings.create(
                model=model, input=texts, encoding_format="float"
            ),
            model=model,
        )
        data = sorted(resp.data, key=lambda d: d.index)
        if len(data) != len(texts) or any(not d.embedding for d in data):
            raise LLMResponseError(
                f"the embeddings endpoint {self.where} returned {len(data)} embeddings "
                f"for {len(texts)} texts"
            )
        vectors = [[float(x) for x in d.embedding] for d in data]
        for i, v in enumerate(vectors):  # refused before it is cached: asked again next time
            norm = math.sqrt(sum(x * x for x in v))
            if not norm or not math.isfinite(norm):
                raise LLMResponseError(
                    f"the embeddings endpoint {self.where} returned a zero or non-finite "
                    f"vector for {texts[i][:80]!r}"
                )
        self._cache_put(key, "embedding", request, json.dumps(vectors), *tokens)
        return vectors

    # -- retries and accounting ------------------------------------------------------------

    def _semaphore(self) -> asyncio.Semaphore:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.concurrency)
        return self._sem

    async def _with_retries(
        self,
        kind: str,
        purpose: str,
        key: str,
        subject: tuple[int | None, int | None],
        call: Callable[[], Any],
        model: str | None = None,
        adaptable: frozenset[str] = frozenset(),
    ) -> tuple[Any, tuple[int, int]]:
        openai = self._openai
        cfg = self.config
        attempts = cfg.max_retries + 1
        for attempt in range(1, attempts + 1):
            t0 = time.monotonic()
            wait: float | None = None
            http_status: int | None = None
            refused: str | None = None
            sent = False
            try:
                async with self._semaphore():
                    t0 = time.monotonic()
                    sent = True
                    resp = await call()
            except asyncio.CancelledError:  # Ctrl-C: the endpoint saw the request, account it
                if sent:
                    self._record(
                        key,
                        kind,
                        purpose,
                        subject,
                        attempt,
                        "failed",
                        None,
                        "interrupted before the answer came (the endpoint may still charge)",
                        0,
                        0,
                        None,
                        time.monotonic() - t0,
                        model,
                    )
                raise
            except openai.APIStatusError as exc:
                http_status = exc.status_code
                error = f"HTTP {exc.status_code}: {_message(exc)}"
                retryable = exc.status_code in (408, 409, 429) or exc.status_code >= 500
                wait = _retry_after(exc.response.headers)
                fatal = exc.status_code in (401, 403, 404)
                if exc.status_code == 400:
                    refused = _refused_param(exc, adaptable)
            except openai.APITimeoutError:
                error, retryable, fatal = (
                    f"no answer within {cfg.timeout:g}s (timeout)",
                    True,
                    False,
                )
            except openai.APIConnectionError as exc:
                error = f"cannot connect to {self.where}: {exc.__cause__ or exc}"
                retryable, fatal = True, False
            except openai.OpenAIError as exc:
                error, retryable, fatal = f"{type(exc).__name__}: {exc}", False, False
            else:
                latency = time.monotonic() - t0
                usage = getattr(resp, "usage", None)
                tokens = (
                    int(getattr(usage, "prompt_tokens", 0) or 0),
                    int(getattr(usage, "completion_tokens", 0) or 0),
                )
                cost = cfg.cost(*tokens)
                self._record(
                    key,
                    kind,
                    purpose,
                    subject,
                    attempt,
                    "ok",
                    200,
                    None,
                    *tokens,
                    cost,
                    latency,
                    model,
                )
                return resp, tokens
            latency = time.monotonic() - t0
            error = self.redact(error)
            last = attempt == attempts or not retryable
            status = "failed" if last and refused is None else "retried"
            self._record(
                key,
                kind,
                purpose,
                subject,
                attempt,
                status,
                http_status,
                error,
                0,
                0,
                None,
                latency,
                model,
            )
            if refused is not None:  # asked again without it, by the caller
                raise _Unsupported(refused)
            if last:
                what = f"{kind} call ({purpose}) to model {model or cfg.model} at {self.where}"
                tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
                hint = ""
                if http_status in (401, 403):
                    hint = f"; check the API key (environment variable {cfg.api_key_env})"
                elif http_status == 404:
                    hint = "; check --base-url (it usually ends in /v1) and --model"
                cls = LLMEndpointError if fatal else LLMError
                raise cls(f"{what} failed {tries}: {error}{hint}")
            backoff = min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1))
            backoff *= 0.5 + random.random()  # jitter
            await asyncio.sleep(min(cfg.max_backoff, wait) if wait is not None else backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        if self.store is None:
            return None
        rows = self.store.con.execute(
            "SELECT response FROM llm_cache WHERE request_hash = ?", [key]
        ).fetchall()
        return {"response": rows[0][0]} if rows else None

    def _cache_put(
        self,
        key: str,
        kind: str,
        request: dict[str, Any],
        response: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        if self.store is None:
            return
        self.store.con.execute(
            "INSERT OR IGNORE INTO llm_cache (request_hash, kind, model, request, response, "
            "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                key,
                kind,
                request["model"],
                json.dumps(request),
                response,
                prompt_tokens,
                completion_tokens,
            ],
        )

    def _record(
        self,
        key: str,
        kind: str,
        purpose: str,
        subject: tuple[int | None, int | None],
        attempt: int,
        status: str,
        http_status: int | None,
        error: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float | None,
        latency: float | None = None,
        model: str | None = None,
    ) -> None:
        s = self.stats
        if status == "cached":
            s.cached += 1
        else:
            s.calls += 1
            setattr(s, status, getattr(s, status) + 1)
            s.prompt_tokens += prompt_tokens
            s.completion_tokens += completion_tokens
            if status == "ok":
                if cost is None:
                    s.unpriced += 1
                else:
                    s.cost += cost
        if self.store is None:
            return
        self.store.con.execute(
            "INSERT INTO llm_calls (session_id, kind, purpose, model, base_url, request_hash, "
            "sae_id, latent_id, attempt, status, http_status, error, prompt_tokens, "
            "completion_tokens, cost, latency_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                self.session_id,
                kind,
                purpose,
                model or self.config.model,
                self.redact(self.config.base_url) if self.config.base_url else None,
                key,
                subject[0],
                subject[1],
                attempt,
                status,
                http_status,
                error,
                prompt_tokens,
                completion_tokens,
                cost,
                latency,
            ],
        )


class _Unsupported(Exception):
    """The endpoint refused a chat parameter the client can rename or leave out."""

    def __init__(self, param: str) -> None:
        super().__init__(param)
        self.param = param


def _refused_param(exc: Any, adaptable: frozenset[str]) -> str | None:
    """Which of ``adaptable`` a 400 answer says the model does not support, if any.

    OpenAI says so with ``param`` and code ``unsupported_parameter`` / ``unsupported_value``
    ("Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead."); other servers only in the message.
    """
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, dict) and inner.get("param") in adaptable:
        if str(inner.get("code") or "").startswith("unsupported"):
            return str(inner["param"])
    found = re.search(r"(?i)unsupported (?:parameter|value): '(\w+)'", _message(exc))
    if found and found.group(1) in adaptable:
        return found.group(1)
    return None


def _parsed(parse: Callable[[str], Any] | None, text: str) -> Any:
    """``parse(text)``; a parse error carries the answer (``.answer``) for a retry prompt."""
    if parse is None:
        return text
    try:
        return parse(text)
    except LLMResponseError as exc:
        exc.answer = text  # type: ignore[attr-defined]
        raise


def _request_hash(kind: str, request: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, **request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else inner
        if msg:
            return str(msg)
    return str(getattr(exc, "message", None) or exc)


def _retry_after(headers: Any) -> float | None:
    """Seconds the endpoint asks us to wait (``retry-after-ms`` or ``Retry-After``), if any."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(when.timestamp() - time.time(), 0.0) if when else None


# -- entry points for other modules ----------------------------------------------------------


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from synchronous code (refuses inside a running loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise LLMError("called from inside a running event loop: await the async variant instead")


async def aembed_texts(
    config: LLMConfig, texts: Sequence[str], model: str | None = None, *, store: Store | None = None
) -> list[list[float]]:
    """Async :func:`embed_texts`."""
    async with LLMClient(dataclasses.replace(config, model=model or config.model), store) as c:
        return await c.embed(texts, model=model)


def embed_texts(
    config: LLMConfig, texts: Sequence[str], model: str | None = None, *, store: Store | None = None
) -> list[list[float]]:
    """Embeddings of ``texts`` from the OpenAI-compatible embeddings endpoint ``config``.

    ``model`` defaults to ``config.model``. Batched (``config.embed_batch`` per request), with
    the same retries; with a ``store``, cached and accounted in ``llm_calls``.
    """
    return run_sync(aembed_texts(config, texts, model, store=store))


def unit_vectors(
    vectors: Sequence[Sequence[float]], what: str = "text", ids: Sequence[Any] | None = None
) -> list[list[float]]:
    """``vectors`` scaled to unit length (as saedb stores embeddings); a zero or non-finite
    vector is an :class:`LLMError` naming the ``what`` (and its id in ``ids``) it belongs to."""
    out = []
    for i, v in enumerate(vectors):
        norm = math.sqrt(sum(x * x for x in v))
        if not norm or not math.isfinite(norm):
            name = f"{what} {ids[i] if ids is not None else i + 1}"
            raise LLMError(
                f"the embeddings endpoint returned a zero or non-finite vector for {name}"
            )
        out.append([x / norm for x in v])
    return out


class EndpointEncoder:
    """An OpenAI-compatible embeddings endpoint as an encoder for :mod:`saedb.query`.

    Labels embedded from an endpoint (``saedb label --embed-base-url URL --embed-model NAME``)
    can only be compared with queries embedded by the same model: pass
    ``encoder=EndpointEncoder(config)`` and ``model=config.model`` to
    :func:`saedb.query.relevant_latents` or :func:`saedb.query.embed_queries`. The query's
    embedding is then cached in ``query_embeddings`` under that model like MiniLM's, so
    ``latents_for_query('...', model := NAME)`` finds it from SQL. With ``store`` the calls
    are cached and accounted in ``llm_calls``.
    """

    def __init__(self, config: LLMConfig, store: Store | None = None) -> None:
        if not config.model:
            raise ConfigError("no embedding model named: give the embedding model's name")
        self.config = config
        self.store = store

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit-length embeddings of ``texts``, one list of floats per text."""
        return unit_vectors(embed_texts(self.config, list(texts), store=self.store), "query")


RERANK_SYSTEM = (
    "You judge which features of a text model are relevant to a search query. Each feature "
    "has a short label and a description of what it responds to."
)


def rerank_prompt(query: str, candidates: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages asking which candidates are relevant to ``query``."""
    lines = []
    for c in candidates:
        desc = " ".join(str(c.get("description") or "").split())
        label = " ".join(str(c.get("label") or "").split())
        lines.append(f"latent {int(c['latent_id'])}: {label} | {desc}")
    user = (
        f"Query: {' '.join(query.split())}\n\nFeatures:\n"
        + "\n".join(lines)
        + "\n\nWhich features are relevant to the query? Answer with JSON only: "
        '{"relevant": [{"latent_id": <id>, "relevance": <number from 0 to 1>}, ...]}, most '
        "relevant first; leave out features that are not relevant."
    )
    return [{"role": "system", "content": RERANK_SYSTEM}, {"role": "user", "content": user}]


def parse_rerank(text: str, candidates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The relevant candidates from a rerank answer, each with ``relevance``, best first.

    Ids not among the candidates are ignored (the model invented them); a relevance that is
    not a number in [0, 1] is an error.
    """
    obj = parse_json_object(text)
    items = obj.get("relevant")
    if not isinstance(items, list):
        raise LLMResponseError('the answer has no list "relevant"')
    by_id = {int(c["latent_id"]): c for c in candidates}
    best: dict[int, float] = {}
    for item in items:
        if not isinstance(item, dict) or "latent_id" not in item or "relevance" not in item:
            raise LLMResponseError(f"an item of 'relevant' lacks latent_id or relevance: {item}")
        try:
            lid, rel = int(item["latent_id"]), float(item["relevance"])
        except (TypeError, ValueError) as exc:
            raise LLMResponseError(f"an item of 'relevant' is not numeric: {item}") from exc
        if not 0.0 <= rel <= 1.0:
            raise LLMResponseError(f"relevance {rel} of latent {lid} is not in [0, 1]")
        if lid in by_id and rel > 0:
            best[lid] = max(rel, best.get(lid, 0.0))
    out = [{**by_id[lid], "relevance": rel} for lid, rel in best.items()]
    out.sort(key=lambda c: (-c["relevance"], -(c.get("similarity") or 0.0), c["latent_id"]))
    return out


async def chat_json(
    client: LLMClient,
    messages: list[dict[str, str]],
    parse: Callable[[str], T],
    *,
    purpose: str,
    sae_id: int | None = None,
    latent_id: int | None = None,
) -> tuple[T, bool]:
    """A chat call whose answer must parse; on a parse error, one retry that quotes it.

    Returns the parsed value and whether the retry was needed; raises
    :class:`LLMResponseError` when the second answer does not parse either.
    """
    try:
        reply = await client.chat(
            messages, purpose=purpose, parse=parse, sae_id=sae_id, latent_id=latent_id
        )
        return reply.value, False
    except LLMResponseError as first:
        retry = [
            *messages,
            {"role": "assistant", "content": getattr(first, "answer", "") or ""},
            {
                "role": "user",
                "content": f"That answer could not be used: {first}. Answer again with the "
                "JSON object only, in the format asked for.",
            },
        ]
        try:
            reply = await client.chat(
                retry, purpose=purpose + "-retry", parse=parse, sae_id=sae_id, latent_id=latent_id
            )
        except LLMResponseError as second:
            raise LLMResponseError(f"{second} (and before the retry: {first})") from second
        return reply.value, True


async def arerank_latents(
    config: LLMConfig,
    query: str,
    candidates: Sequence[dict[str, Any]],
    *,
    store: Store | None = None,
    client: LLMClient | None = None,
) -> list[dict[str, Any]]:
    """Async :func:`rerank_latents`; pass ``client`` to share one session's client."""
    if not candidates:
        return []
    for c in candidates:
        if "latent_id" not in c:
            raise ConfigError(f"a rerank candidate has no latent_id: {c}")
    if not query.strip():
        raise ConfigError("the rerank query is empty")
    messages = rerank_prompt(query, candidates)

    def parse(text: str) -> list[dict[str, Any]]:
        return parse_rerank(text, candidates)

    if client is not None:
        value, _ = await chat_json(client, messages, parse, purpose="rerank")
        return value
    async with LLMClient(config, store) as own:
        value, _ = await chat_json(own, messages, parse, purpose="rerank")
        return value


def rerank_latents(
    config: LLMConfig,
    query: str,
    candidates: Sequence[dict[str, Any]],
    *,
    store: Store | None = None,
) -> list[dict[str, Any]]:
    """The candidates the LLM judges relevant to ``query``, best first, each with ``relevance``.

    ``candidates`` are dicts with ``latent_id``, ``label``, ``description`` and
    ``similarity`` (other keys are kept). The model answers in JSON; a bad answer gets one
    retry quoting the parse error, then :class:`LLMResponseError`. With a ``store`` the call
    is cached and accounted (purpose ``'rerank'``).
    """
    return run_sync(arerank_latents(config, query, candidates, store=store))
