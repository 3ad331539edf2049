"""The diffing study's LLM judge: does a latent's label describe a known property?

When an OpenAI-compatible endpoint is configured the way ``saedb label`` finds one (the LLM
config file: ``--llm-config``, else ``$SAEDB_LLM_CONFIG``, else ``~/.config/saedb/llm.toml``;
``--base-url`` and ``--model`` win over it), each top diff latent's label and description go
to the chat model together with the properties of the two subsets, and the model answers
``{"answer": "yes"}`` or ``{"answer": "no"}``: does the label describe the property of the
subset the latent favours? The calls go through saedb's own client
(:class:`saedb.llm.LLMClient`): bounded concurrency, retries, one retry quoting an answer that
did not parse (:func:`saedb.llm.chat_json`), and, with the store, a cache (``llm_cache``) and
accounting (``llm_calls``, purpose :data:`PURPOSE`), so a re-run is answered from the cache at
no cost. Without an endpoint the diffing study uses its keyword check alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eval.config import EvalConfig

PURPOSE = "eval-judge"
"""``llm_calls.purpose`` of the judge's calls."""

SYSTEM = (
    "You check labels of features of a text model. A feature fires on some documents; its "
    "label says in a few words what it responds to. You decide whether a label describes a "
    "given property of a set of documents."
)


@dataclass(frozen=True)
class Item:
    """One question: does ``label`` describe ``favoured``, the property of the side the latent
    fires more often in (``other`` is the property of the side it is compared with)?"""

    sae_id: int
    latent_id: int
    label: str
    description: str
    favoured: str
    other: str


@dataclass
class Verdicts:
    """The judge's answers, one per item: True (yes), False (no) or None (no usable answer
    after the client's retries; ``errors`` says why)."""

    answers: list[bool | None]
    errors: list[str]
    calls: int = 0
    """Requests sent (retries included); 0 when every answer came from the cache."""
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def endpoint(cfg: EvalConfig) -> tuple[Any, str]:
    """The judge's :class:`saedb.llm.LLMConfig`, or None and why not.

    Raises :class:`saedb.errors.ConfigError` for a configuration that is wrong rather than
    absent (a config file that does not exist or does not parse, a base URL without a model),
    as ``saedb label`` does.
    """
    if not cfg.llm_judge:
        return None, "the LLM judge is turned off (--no-llm-judge)"
    try:
        from saedb.llm import LLMConfig
    except ImportError as exc:  # pragma: no cover - saedb.llm ships with saedb
        return None, f"saedb's LLM client is not importable ({exc})"
    from saedb.errors import ConfigError

    config = LLMConfig.load(
        str(cfg.llm_config) if cfg.llm_config else None,
        base_url=cfg.llm_base_url,
        model=cfg.llm_model,
    )
    if not config.configured:
        return None, "no LLM endpoint is configured"
    if not config.model:
        raise ConfigError(
            f"an LLM endpoint is configured ({config.base_url}) but no model: give --model "
            "(or model in the LLM config file)"
        )
    try:
        import openai  # noqa: F401
    except ImportError:
        return None, "the openai package is not installed (pip install 'saedb[llm]')"
    return config, ""


def messages(item: Item) -> list[dict[str, str]]:
    """The chat messages asking about one item."""
    label = " ".join(item.label.split())
    description = " ".join(item.description.split()) or "(none)"
    user = (
        "Two sets of documents differ in a known way.\n"
        f"Set A: {item.favoured}\n"
        f"Set B: {item.other}\n\n"
        "A feature of a text model fires more often in set A than in set B.\n"
        f"Feature label: {label}\n"
        f"Feature description: {description}\n\n"
        f'Does the feature\'s label describe the property of set A ("{item.favoured}")? '
        'Answer with JSON only: {"answer": "yes"} or {"answer": "no"}.'
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_answer(text: str) -> bool:
    """True for a yes, False for a no; :class:`saedb.llm.LLMResponseError` otherwise."""
    from saedb.llm import LLMResponseError, parse_json_object

    value = parse_json_object(text).get("answer")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return value.strip().lower() == "yes"
    raise LLMResponseError(f'"answer" must be "yes" or "no", not {value!r}')


def judge(config: Any, items: Sequence[Item], store: Any = None) -> Verdicts:
    """Ask the judge about every item (concurrently, ``config.concurrency`` at a time).

    An item whose calls all fail, or whose answer does not parse even after the retry, gets
    None. An endpoint that refuses every call (bad key, unknown model, wrong URL:
    :class:`saedb.llm.LLMEndpointError`) stops the run: a misconfigured judge is not silently
    replaced by the keyword check.
    """
    from saedb import llm

    return llm.run_sync(_ajudge(config, list(items), store))


async def _ajudge(config: Any, items: list[Item], store: Any) -> Verdicts:
    import asyncio

    from saedb import llm

    async with llm.LLMClient(config, store) as client:

        async def one(item: Item) -> tuple[bool | None, str]:
            try:
                value, _ = await llm.chat_json(
                    client,
                    messages(item),
                    parse_answer,
                    purpose=PURPOSE,
                    sae_id=item.sae_id,
                    latent_id=item.latent_id,
                )
            except llm.LLMEndpointError:
                raise
            except llm.LLMError as exc:
                return None, f"latent {item.latent_id}: {exc}"
            return value, ""

        out = await asyncio.gather(*(one(i) for i in items))
        s = client.stats
    return Verdicts(
        [v for v, _ in out],
        [e for _, e in out if e],
        calls=s.calls,
        cached=s.cached,
        prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens,
    )
