"""A small OpenAI-compatible HTTP server for tests: real HTTP on 127.0.0.1, deterministic answers.

It speaks ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` (the subset saedb uses) and
answers from the prompt itself, as a very literal model would:

- a labelling prompt (it has a line ``Examples where the feature fires:``): the label is the
  most frequent word marked ``<<...>>`` in those examples (ties: alphabetical), the answer a
  JSON object inside a code fence with a sentence of chatter around it;
- a detection prompt (a line ``Label: ...`` and numbered texts ``[1] ...``): text i matches when
  it contains the first word of the label; the answer is ``{"matches": [...]}``;
- a rerank prompt (a line ``Query: ...`` and candidates ``latent <id>: <label> | <desc>``):
  relevance is the share of the query's words found in the candidate's label and description;
- embeddings: a hashed bag of the text's words, ``DIM`` floats, L2-normalised.

Usage counts are words of the request and the answer. Failures are queued with :meth:`fail`
(optionally only for requests whose body contains a string) and consumed one per request:
``429`` (with ``Retry-After``), ``500``, ``timeout`` (answer after a sleep longer than the
client waits), ``malformed`` (content that is not JSON), ``empty`` (empty content; for
embeddings no vectors), ``blank`` (a JSON label that is blank), ``length`` (the answer cut
in half, ``finish_reason: "length"``), ``zero`` (embeddings: a zero vector), ``401`` (an
error body that echoes the Authorization header, as careless servers do). With
``strict_params`` it refuses ``max_tokens`` and a temperature other than 1 with 400, as
OpenAI does for its reasoning models. :meth:`hang_after` makes every request after the n-th answered
one wait until :meth:`release` (to interrupt a client mid-run). Every request is recorded.
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIM = 64
_WORD = re.compile(r"[a-z]+")


@dataclass
class Failure:
    kind: str
    match: str | None = None
    path: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0


@dataclass
class Request:
    path: str
    body: dict[str, Any]
    received: float
    authorization: str | None
    status: int = 0
    answered: bool = False
    failure: str | None = None
    content: str | None = None

    @property
    def text(self) -> str:
        """All message contents (chat) or inputs (embeddings), joined."""
        if "messages" in self.body:
            return "\n".join(m.get("content") or "" for m in self.body["messages"])
        inp = self.body.get("input", [])
        return "\n".join(inp if isinstance(inp, list) else [inp])


@dataclass
class FakeOpenAI:
    """The server; ``with FakeOpenAI() as srv: srv.base_url`` starts and stops it."""

    requests: list[Request] = field(default_factory=list)
    _failures: list[Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hang_after: int | None = None
    _released: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0
    """Seconds every request waits before it is answered."""
    strict_params: bool = False
    """Refuse chat requests with max_tokens or a temperature other than 1 (400)."""
    in_flight: int = 0
    max_in_flight: int = 0
    """The most requests that were being handled at once."""

    # -- control ---------------------------------------------------------------------------

    def fail(
        self,
        kind: str,
        times: int = 1,
        *,
        match: str | None = None,
        path: str | None = None,
        retry_after: float | None = None,
        seconds: float = 3.0,
    ) -> None:
        """Queue ``times`` failures of ``kind`` for the next requests (containing ``match``,
        to a path ending in ``path``: ``/embeddings``, ``/chat/completions``)."""
        known = ("429", "500", "timeout", "malformed", "empty", "blank", "length", "zero", "401")
        assert kind in known, kind
        with self._lock:
            for _ in range(times):
                self._failures.append(Failure(kind, match, path, retry_after, seconds))

    def hang_after(self, n: int) -> None:
        """Requests after the n-th answered one wait until :meth:`release`."""
        self._released.clear()
        self._hang_after = n

    def release(self) -> None:
        self._hang_after = None
        self._released.set()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._failures.clear()
            self.max_in_flight = 0

    @property
    def answered(self) -> list[Request]:
        """Requests answered with 200 (what a paid endpoint would charge for)."""
        with self._lock:
            return [r for r in self.requests if r.answered]

    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.base_url

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering -------------------------------------------------------------------------

    def _take_failure(self, req: Request) -> Failure | None:
        with self._lock:
            for i, f in enumerate(self._failures):
                if (f.match is None or f.match in req.text) and (
                    f.path is None or req.path.endswith(f.path)
                ):
                    return self._failures.pop(i)
        return None

    def _must_hang(self) -> bool:
        with self._lock:
            n = self._hang_after
            return n is not None and sum(r.answered for r in self.requests) >= n


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        fake = self.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        req = Request(self.path, body, time.monotonic(), self.headers.get("Authorization"))
        with fake._lock:
            fake.requests.append(req)
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            self._handle(fake, req, body)
        finally:
            with fake._lock:
                fake.in_flight -= 1

    def _handle(self, fake: FakeOpenAI, req: Request, body: dict[str, Any]) -> None:
        if fake.delay:
            time.sleep(fake.delay)
        if fake._must_hang():  # never answered: the client is meant to be gone by then
            fake._released.wait(timeout=60)
            req.failure = "hung"
            self.close_connection = True
            return
        failure = fake._take_failure(req)
        req.failure = failure.kind if failure else None
        if failure is not None and failure.kind in ("429", "500", "401"):
            req.status = int(failure.kind)
            headers = {}
            message = {"429": "rate limited", "500": "internal error"}.get(failure.kind, "")
            if failure.kind == "429" and failure.retry_after is not None:
                headers["Retry-After"] = f"{failure.retry_after:g}"
            if failure.kind == "401":
                message = f"invalid credentials: {req.authorization}"
            self._send(req.status, {"error": {"message": message, "type": "x"}}, headers)
            return
        if failure is not None and failure.kind == "timeout":
            time.sleep(failure.seconds)
        kind = failure.kind if failure else None
        if self.path.endswith("/embeddings"):
            payload = _embeddings(body)
            if kind == "empty":
                payload["data"] = []
            elif kind == "zero":
                payload["data"][0]["embedding"] = [0.0] * DIM
        elif self.path.endswith("/chat/completions"):
            refused = _refused(body) if fake.strict_params else None
            if refused is not None:
                req.status = 400
                self._send(400, {"error": refused})
                return
            content, finish = _answer(req.text), "stop"
            if kind == "malformed":
                content = 'Sure! {"label": "unfinished, "description": '
            elif kind == "empty":
                content = ""
            elif kind == "blank":
                content = '{"label": "   ", "description": "nothing"}'
            elif kind == "length":
                content, finish = content[: len(content) // 2], "length"
            req.content = content
            payload = _completion(body, req.text, content, finish)
        else:
            req.status = 404
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        req.status, req.answered = 200, True
        self._send(200, payload)


# -- deterministic "model" -------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _answer(prompt: str) -> str:
    if "Examples where the feature fires:" in prompt:
        section = prompt.split("Examples where the feature fires:", 1)[1]
        section = section.split("Examples where it does not fire", 1)[0]
        marked = Counter(w for m in re.findall(r"<<(.*?)>>", section) for w in words(m))
        if not marked:
            return '{"label": "", "description": ""}'
        word = min(marked, key=lambda w: (-marked[w], w))
        obj = {"label": word, "description": f'Fires on the word "{word}".'}
        return f"Here is my answer:\n```json\n{json.dumps(obj)}\n```\nHope this helps."
    label = re.search(r"^Label: (.*)$", prompt, re.MULTILINE)
    if label:
        key = (words(label.group(1)) or [""])[0]
        texts = re.findall(r"^\[(\d+)\] (.*)$", prompt, re.MULTILINE)
        return json.dumps({"matches": [int(key in words(t)) for _, t in texts]})
    query = re.search(r"^Query: (.*)$", prompt, re.MULTILINE)
    if query:
        q = set(words(query.group(1)))
        out = []
        for lid, rest in re.findall(r"^latent (\d+): (.*)$", prompt, re.MULTILINE):
            share = len(q & set(words(rest))) / max(len(q), 1)
            if share > 0:
                out.append({"latent_id": int(lid), "relevance": round(share, 4)})
        return json.dumps({"relevant": out})
    return "I do not know what to say."


def _refused(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenAI's 400 error for a reasoning model's unsupported parameters, or None."""
    if "max_tokens" in body:
        return {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    if body.get("temperature", 1) != 1:
        return {
            "message": f"Unsupported value: 'temperature' does not support "
            f"{body['temperature']} with this model. Only the default (1) value is supported.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_value",
        }
    return None


def _completion(
    body: dict[str, Any], prompt: str, content: str, finish: str = "stop"
) -> dict[str, Any]:
    n_in, n_out = len(prompt.split()), len(content.split())
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
    }


def embed(text: str) -> list[float]:
    """The server's embedding of one text (hashed bag of words, unit norm)."""
    v = [0.0] * DIM
    for w in words(text):
        v[zlib.crc32(w.encode()) % DIM] += 1.0
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    return [x / norm for x in v]


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    inp = body.get("input", [])
    texts = inp if isinstance(inp, list) else [inp]
    n = sum(len(t.split()) for t in texts)
    return {
        "object": "list",
        "model": body.get("model", ""),
        "data": [
            {"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }


if __name__ == "__main__":  # run it by hand: python -m tests.openai_server
    with FakeOpenAI() as srv:
        print(srv.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
