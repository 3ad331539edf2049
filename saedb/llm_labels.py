"""The LLM labeler: latent labels from an OpenAI-compatible chat model, scored by detection.

For each latent:

1. **Examples** (SQL, deterministic for a seed): positives sampled from its strongest documents
   by the table macro ``latent_examples``, each a window around the peak token marked
   ``<<...>>``; random negatives (encoded documents where it did not fire) from the same macro;
   and, unless ``near_misses=False``, near-miss negatives from ``latent_near_misses``
   (documents of the same datasets where it did not fire but the latents that fire with it
   did). Each kind is split in two by its
   sample rank: the first part is shown to the model, the rest is **held out** for scoring.
2. **Label**: the model gets the shown positives and negatives and answers a short label and a
   one-sentence description as JSON (code fences and stray text are tolerated). A bad answer
   (no JSON, a blank label) gets one retry that quotes the error; a second bad answer is a
   failure of that latent, recorded in ``label_failures``, and nothing is written for it.
3. **Score** (unless ``score=False``): the held-out positives (without their ``<< >>`` marks)
   and negatives, shuffled, are judged by the model against the label (does the feature fire
   here, 1 or 0). The confusion counts, accuracy, balanced accuracy, precision and recall go to
   ``label_scores``; ``latent_labels.score`` is the balanced accuracy, so ``current_labels``
   prefers the label that best predicts where the latent fires.
4. **Relabel** (``relabel_below``): while the best score is below the threshold and fewer than
   ``max_rounds`` rounds ran, label again from other shown examples (the next seed, held-out
   documents excluded) with the previous label and its score as feedback, score against the
   same held-out set, and keep the better label. A latent that already has a label of this
   labeler, model and prompt version is skipped, unless its score is below
   ``relabel_below``: then the rounds start from it and a new label is written only if it
   scores higher.

Each latent's label and score are written in one transaction when the latent is done; every
call is cached and accounted by :class:`saedb.llm.LLMClient` as it ends. A run that is
interrupted and started again therefore skips finished latents and answers the calls it has
already paid for from ``llm_cache``.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saedb.errors import ConfigError, StoreError
from saedb.labels import _sae_id, choose_latents
from saedb.llm import (
    CallStats,
    LLMClient,
    LLMConfig,
    LLMEndpointError,
    LLMError,
    LLMResponseError,
    chat_json,
    parse_json_object,
    run_sync,
)

if TYPE_CHECKING:
    from saedb.store import Store

LABELER = "llm"
PROMPT_VERSION = "llm-2"
"""Changes whenever the prompts or the example sample change (labels record it). llm-2:
the texts judged in scoring lose the ``…`` that marked where a window was cut."""

RANDOM_NEGATIVES = "-random-negatives"
"""Appended to the prompt version of labels made without near misses (``near_misses=False``)."""
N_POS, N_NEG, N_NEAR = 10, 5, 5
"""Examples shown to the model: positives, random negatives, near-miss negatives."""
S_POS, S_NEG, S_NEAR = 10, 5, 5
"""Examples held out for scoring, of each kind (fewer when the latent has fewer)."""
TOP, CONTEXT, SEED = 40, 80, 0
"""Positives come from the TOP strongest documents; CONTEXT characters either side."""
MAX_LABEL_CHARS = 80
"""A label longer than this is refused (asked again): labels are meant to be short."""

SYSTEM = (
    "You are an interpretability researcher. You explain features of a sparse autoencoder "
    "trained on a language model's activations: each feature fires on some tokens of some "
    "texts. You answer with JSON only."
)


@dataclass(frozen=True)
class Example:
    doc_id: int
    snippet: str
    positive: bool
    kind: str
    """'positive', 'negative' (random) or 'near' (near-miss negative)."""


@dataclass
class LatentExamples:
    """A latent's examples, split into what the labeler sees and what scoring holds out."""

    shown: list[Example]
    held_out: list[Example]

    @property
    def n_positive(self) -> int:
        return sum(e.positive for e in self.shown)


@dataclass(frozen=True)
class Score:
    """A label's detection test on held-out examples."""

    true_pos: int
    false_pos: int
    true_neg: int
    false_neg: int

    @property
    def n_positive(self) -> int:
        return self.true_pos + self.false_neg

    @property
    def n_negative(self) -> int:
        return self.true_neg + self.false_pos

    @property
    def accuracy(self) -> float:
        return (self.true_pos + self.true_neg) / (self.n_positive + self.n_negative)

    @property
    def recall(self) -> float:
        return self.true_pos / self.n_positive

    @property
    def precision(self) -> float | None:
        said = self.true_pos + self.false_pos
        return self.true_pos / said if said else None

    @property
    def balanced_accuracy(self) -> float:
        return (self.recall + self.true_neg / self.n_negative) / 2


@dataclass
class Candidate:
    """One label proposal and how it scored."""

    label: str
    description: str
    score: Score | None
    round: int
    n_shown: int = 0
    value: float | None = None
    """The balanced accuracy (from ``score``, or stored for an existing label)."""

    def __post_init__(self) -> None:
        if self.score is not None:
            self.value = self.score.balanced_accuracy


@dataclass
class LLMLabelRun:
    """What :func:`label_llm_run` did."""

    model: str
    prompt_version: str = PROMPT_VERSION
    """The prompt version of the labels this run wrote (and skipped)."""
    labelled: list[int] = field(default_factory=list)
    """Latents given a new label."""
    already: list[int] = field(default_factory=list)
    """Latents skipped: they have a label of this labeler, model and prompt version."""
    kept: list[int] = field(default_factory=list)
    """Latents relabelled without beating their existing label (nothing new written)."""
    relabelled: list[int] = field(default_factory=list)
    """Latents that went through more than one labelling round (or had a label below it)."""
    never_fired: list[int] = field(default_factory=list)
    unscored: list[int] = field(default_factory=list)
    """Latents labelled without a score although scoring was asked for: too few examples
    to hold any out (a latent that fired in one document, say)."""
    failed: dict[int, str] = field(default_factory=dict)
    """Latent -> why it got no label."""
    warnings: dict[int, str] = field(default_factory=dict)
    """Latent -> a relabelling round that failed (the latent kept the best earlier label)."""
    stats: CallStats = field(default_factory=CallStats)


# -- examples --------------------------------------------------------------------------------


def _split(n: int, shown_max: int, held_max: int) -> int:
    """How many of n sampled examples to show (the rest are held out)."""
    held = min(held_max, n // 2)
    return min(shown_max, n - held)


def _rows(con: Any, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur = con.execute(query, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def latent_examples(
    store: Store | Any, sae_id: int, latent: int, seed: int = SEED, near_misses: bool = True
) -> LatentExamples:
    """The latent's shown and held-out examples (see the module's docstring).

    ``store`` is a :class:`Store` or a DuckDB connection (a cursor of the store's, so that
    examples can be read in a worker thread while the event loop's thread writes). With
    ``near_misses=False`` every negative is a random one (and ``latent_near_misses`` is not
    run): as many negatives, none of them chosen to look like the positives.
    """
    con = getattr(store, "con", store)
    n_neg, s_neg = (N_NEG, S_NEG) if near_misses else (N_NEG + N_NEAR, S_NEG + S_NEAR)
    rows = _rows(
        con,
        "SELECT kind, doc_id, snippet FROM latent_examples($latent, sae := $sae, "
        "n_pos := $n_pos, top := $top, n_neg := $n_neg, context := $context, seed := $seed) "
        "ORDER BY kind DESC, rank",
        {
            "latent": latent,
            "sae": sae_id,
            "n_pos": N_POS + S_POS,
            "top": TOP,
            "n_neg": N_NEG + S_NEG + N_NEAR + S_NEAR,  # room for dropping near misses
            "context": CONTEXT,
            "seed": seed,
        },
    )
    near = []
    if near_misses:
        near = _rows(
            con,
            "SELECT doc_id, snippet FROM latent_near_misses($latent, sae := $sae, n := $n, "
            "top := $top, context := $context, seed := $seed) ORDER BY rank",
            {
                "latent": latent,
                "sae": sae_id,
                "n": N_NEAR + S_NEAR,
                "top": TOP,
                "context": CONTEXT,
                "seed": seed,
            },
        )
    pos = [
        Example(r["doc_id"], r["snippet"], True, "positive")
        for r in rows
        if r["kind"] == "positive"
    ]
    near_ids = {r["doc_id"] for r in near}
    neg = [
        Example(r["doc_id"], r["snippet"], False, "negative")
        for r in rows
        if r["kind"] == "negative" and r["doc_id"] not in near_ids
    ][: n_neg + s_neg]
    # near misses alternate between shown and held out, so both get the closest ones
    nears = [Example(r["doc_id"], r["snippet"], False, "near") for r in near]
    shown_near = nears[0::2][: _split(len(nears), N_NEAR, S_NEAR)]
    held_near = [e for e in nears if e not in shown_near][:S_NEAR]
    k_pos, k_neg = _split(len(pos), N_POS, S_POS), _split(len(neg), n_neg, s_neg)
    return LatentExamples(
        shown=pos[:k_pos] + neg[:k_neg] + shown_near,
        held_out=pos[k_pos : k_pos + S_POS] + neg[k_neg : k_neg + s_neg] + held_near,
    )


def relabel_examples(
    store: Store | Any,
    sae_id: int,
    latent: int,
    offset: int,
    held_out: Sequence[Example],
    near_misses: bool = True,
) -> list[Example]:
    """Examples to show when relabelling: seed ``SEED + offset``, held-out documents excluded."""
    other = latent_examples(store, sae_id, latent, seed=SEED + offset, near_misses=near_misses)
    banned = {e.doc_id for e in held_out}
    fresh = [e for e in other.shown + other.held_out if e.doc_id not in banned]
    out: list[Example] = []
    n_neg = N_NEG if near_misses else N_NEG + N_NEAR
    for kind, n in (("positive", N_POS), ("negative", n_neg), ("near", N_NEAR)):
        out += [e for e in fresh if e.kind == kind][:n]
    return out


# -- prompts and answers ---------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def label_messages(
    examples: Sequence[Example], feedback: Candidate | None = None
) -> list[dict[str, str]]:
    """The labelling prompt."""
    pos = [e for e in examples if e.positive]
    near = [e for e in examples if e.kind == "near"]
    neg = [e for e in examples if e.kind == "negative"]
    parts = [
        "Below are text excerpts where a feature fires, with the token where it fires most "
        "strongly marked <<like this>>, and excerpts where it does not fire.",
        "",
        "Examples where the feature fires:",
        *(f"{i}. {_one_line(e.snippet)}" for i, e in enumerate(pos, 1)),
    ]
    if near:
        parts += ["", "Examples where it does not fire (similar texts):"]
        parts += [f"{i}. {_one_line(e.snippet)}" for i, e in enumerate(near, 1)]
    if neg:
        parts += ["", "Examples where it does not fire (random texts):"]
        parts += [f"{i}. {_one_line(e.snippet)}" for i, e in enumerate(neg, 1)]
    if feedback is not None:
        value = "unknown" if feedback.value is None else f"{feedback.value:.2f}"
        parts += [
            "",
            f'An earlier label, "{_one_line(feedback.label)}", predicted where the feature '
            f"fires with a balanced accuracy of {value} (1 is perfect, 0.5 is chance). Find a "
            "more precise one.",
        ]
    parts += [
        "",
        "What does the feature respond to? Give a short label (at most 6 words) and one "
        'sentence describing it. Answer with JSON only: {"label": "...", "description": "..."}',
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def parse_label(text: str) -> tuple[str, str]:
    """(label, description) from the model's answer; blank or overlong labels are errors."""
    obj = parse_json_object(text)
    label, description = obj.get("label"), obj.get("description")
    if not isinstance(label, str) or not label.strip():
        raise LLMResponseError(f'the answer has no label (a non-empty "label" string): {obj}')
    label = _one_line(label)
    if len(label) > MAX_LABEL_CHARS:
        raise LLMResponseError(
            f"the label is {len(label)} characters long; at most {MAX_LABEL_CHARS} are allowed"
        )
    desc = _one_line(description) if isinstance(description, str) else ""
    return label, desc


def detection_items(held_out: Sequence[Example], latent: int) -> list[Example]:
    """The held-out examples in the order they are shown (a fixed shuffle per latent)."""
    items = list(held_out)
    random.Random(latent).shuffle(items)
    return items


_CUT_WORD = 24
"""At most this many characters of a word cut off at a window's edge are dropped."""


def detection_text(snippet: str) -> str:
    """A snippet as the scoring prompt shows it: no ``<< >>`` marks, and where a window was cut
    (``…``) neither the ``…`` nor the cut word. Positives are windows around a peak, cut at
    both ends and often mid-word; random negatives are the starts of documents, cut at the
    end only: left in, those cuts would tell the judge which texts are positives without
    reading them."""
    text = snippet.strip()  # the cut words are found before the marks go: never the peak
    if text.startswith("…"):
        text = re.sub(rf"^[^\s<>]{{0,{_CUT_WORD}}}\s+", "", text[1:])
    if text.endswith("…"):
        text = re.sub(rf"\s+[^\s<>]{{0,{_CUT_WORD}}}$", "", text[:-1])
    return text.replace("<<", "").replace(">>", "").strip()


def detection_messages(label: str, description: str, items: Sequence[Example]) -> list[dict]:
    """The scoring prompt: does the feature fire in each text?"""
    parts = [
        "A feature of a language model is described by this label:",
        f"Label: {_one_line(label)}",
        f"Description: {_one_line(description)}",
        "",
        "For each numbered text below, say whether the feature fires somewhere in it (1) or "
        "not (0).",
        "",
        *(f"[{i}] {_one_line(detection_text(e.snippet))}" for i, e in enumerate(items, 1)),
        "",
        f'Answer with JSON only: {{"matches": [...]}}, a list of {len(items)} numbers (1 or 0), '
        "one per text, in order.",
    ]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def parse_matches(text: str, n: int) -> list[bool]:
    """The model's 0/1 answers for n texts."""
    obj = parse_json_object(text)
    got = obj.get("matches")
    if not isinstance(got, list) or len(got) != n:
        size = len(got) if isinstance(got, list) else "no list"
        raise LLMResponseError(f'"matches" must be a list of {n} numbers; got {size}')
    out = []
    for v in got:
        if isinstance(v, bool) or v in (0, 1):
            out.append(bool(v))
        elif isinstance(v, str) and v.strip().lower() in ("1", "0", "yes", "no", "true", "false"):
            out.append(v.strip().lower() in ("1", "yes", "true"))
        else:
            raise LLMResponseError(f'"matches" holds {v!r}; each must be 1 or 0')
    return out


def confusion(items: Sequence[Example], said: Sequence[bool]) -> Score:
    tp = sum(e.positive and s for e, s in zip(items, said, strict=True))
    fp = sum(not e.positive and s for e, s in zip(items, said, strict=True))
    fn = sum(e.positive and not s for e, s in zip(items, said, strict=True))
    tn = len(items) - tp - fp - fn
    return Score(tp, fp, tn, fn)


# -- the run ---------------------------------------------------------------------------------


class LabelRunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`label_llm_run`; ``run`` holds what it did and spent until then
    (the labels of finished latents and every answered call are already committed)."""

    def __init__(self, run: LLMLabelRun) -> None:
        super().__init__("interrupted")
        self.run = run


class _Skip(Exception):
    """The latent gets no label, for a reason that is not a failure (it never fired)."""


class _Failed(Exception):
    """A latent's labelling failed at ``stage`` ('label', 'score', 'relabel')."""

    def __init__(self, stage: str, error: LLMError) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


@dataclass(frozen=True)
class _Settings:
    """How :func:`label_llm_run` was asked to label (passed on to :func:`_run`)."""

    score: bool
    relabel_below: float | None
    max_rounds: int
    near_misses: bool
    prompt_version: str
    progress: bool


@dataclass
class _Context:
    store: Store
    client: LLMClient
    sae_id: int
    model: str
    score: bool
    relabel_below: float | None
    max_rounds: int
    existing: dict[int, Candidate]
    near_misses: bool = True
    prompt_version: str = PROMPT_VERSION
    fatal: LLMEndpointError | None = None
    warnings: dict[int, str] = field(default_factory=dict)


async def _in_thread(ctx: _Context, fn: Any, *args: Any) -> Any:
    """``fn(cursor, *args)`` in a worker thread, on a cursor of the store (reads only), so the
    event loop goes on with HTTP while DuckDB works."""
    cur = ctx.store.con.cursor()
    try:
        return await asyncio.to_thread(fn, cur, *args)
    finally:
        cur.close()


async def _label_latent(ctx: _Context, latent: int) -> tuple[int, Candidate | None]:
    """Label (and score) one latent: the rounds it took and the label to write (None: keep)."""
    ex = await _in_thread(ctx, latent_examples, ctx.sae_id, latent, SEED, ctx.near_misses)
    if not ex.n_positive:
        raise _Skip
    can_score = (
        ctx.score
        and any(e.positive for e in ex.held_out)
        and any(not e.positive for e in ex.held_out)
    )
    items = detection_items(ex.held_out, latent)
    baseline = ctx.existing.get(latent)
    best: Candidate | None = None
    feedback = baseline
    shown = ex.shown
    rounds = ctx.max_rounds if ctx.relabel_below is not None else 1
    n_rounds = 0
    for round_ in range(1, rounds + 1):
        n_rounds = round_
        offset = round_ - 1 + (baseline is not None)
        if offset:
            shown = await _in_thread(
                ctx, relabel_examples, ctx.sae_id, latent, offset, ex.held_out, ctx.near_misses
            )
        relabel = round_ > 1 or baseline is not None
        try:
            (label, desc), _ = await chat_json(
                ctx.client,
                label_messages(shown, feedback),
                parse_label,
                purpose="relabel" if relabel else "label",
                sae_id=ctx.sae_id,
                latent_id=latent,
            )
        except LLMError as exc:
            if best is None or isinstance(exc, LLMEndpointError):
                raise _Failed("relabel" if relabel else "label", exc) from exc
            ctx.warnings[latent] = f"relabelling round {round_} failed, label kept: {exc}"
            break  # keep the label of an earlier round
        score = None
        if can_score:
            try:
                said, _ = await chat_json(
                    ctx.client,
                    detection_messages(label, desc, items),
                    lambda text: parse_matches(text, len(items)),
                    purpose="score",
                    sae_id=ctx.sae_id,
                    latent_id=latent,
                )
            except LLMError as exc:
                if best is None or isinstance(exc, LLMEndpointError):
                    raise _Failed("score", exc) from exc
                ctx.warnings[latent] = (
                    f"scoring in relabelling round {round_} failed, label kept: {exc}"
                )
                break
            score = confusion(items, said)
        cand = Candidate(label, desc, score, round_, n_shown=len(shown))
        if best is None or (
            cand.value is not None and (best.value is None or cand.value > best.value)
        ):
            best = cand
        feedback = best
        if ctx.relabel_below is None or best.value is None or best.value >= ctx.relabel_below:
            break
    assert best is not None
    if baseline is not None and (best.value is None or best.value <= (baseline.value or 0.0)):
        return n_rounds, None
    return n_rounds, best


def _write(ctx: _Context, latent: int, cand: Candidate) -> None:
    """One latent's label and score, in one transaction."""
    if not cand.label.strip():  # parse_label refuses these; the table's CHECK would too
        raise StoreError(f"refusing to write an empty label for latent {latent}")
    con = ctx.store.con
    con.execute("BEGIN TRANSACTION")
    try:
        (label_id,) = con.execute(
            "SELECT coalesce(max(label_id), 0) + 1 FROM latent_labels"
        ).fetchone()  # type: ignore[misc]
        con.execute(
            "INSERT INTO latent_labels (label_id, sae_id, latent_id, label, description, "
            "labeler, model, prompt_version, score, n_examples) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                label_id,
                ctx.sae_id,
                latent,
                cand.label,
                cand.description,
                LABELER,
                ctx.model,
                ctx.prompt_version,
                cand.value,
                cand.n_shown,
            ],
        )
        s = cand.score
        if s is not None:
            con.execute(
                "INSERT INTO label_scores (label_id, sae_id, latent_id, judge_model, n_positive, "
                "n_negative, true_pos, false_pos, true_neg, false_neg, accuracy, "
                'balanced_accuracy, "precision", recall, round) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    label_id,
                    ctx.sae_id,
                    latent,
                    ctx.model,
                    s.n_positive,
                    s.n_negative,
                    s.true_pos,
                    s.false_pos,
                    s.true_neg,
                    s.false_neg,
                    s.accuracy,
                    s.balanced_accuracy,
                    s.precision,
                    s.recall,
                    cand.round,
                ],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _record_failure(ctx: _Context, latent: int, stage: str, error: str) -> None:
    ctx.store.con.execute(
        "INSERT INTO label_failures (sae_id, latent_id, labeler, model, prompt_version, stage, "
        "error) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [ctx.sae_id, latent, LABELER, ctx.model, ctx.prompt_version, stage, error],
    )


def _existing(
    store: Store, sae_id: int, model: str, version: str
) -> tuple[set[int], dict[int, Candidate]]:
    """Latents with a label of this version, and the best such label of each (with score)."""
    rows = store.arrow(
        "SELECT latent_id, arg_max(label, coalesce(score, -1)) AS label, "
        "arg_max(description, coalesce(score, -1)) AS description, max(score) AS score "
        "FROM latent_labels WHERE sae_id = ? AND labeler = ? AND model = ? "
        "AND prompt_version = ? GROUP BY latent_id",
        [sae_id, LABELER, model, version],
    ).to_pylist()
    best = {
        r["latent_id"]: Candidate(r["label"], r["description"] or "", None, 0, value=r["score"])
        for r in rows
    }
    return set(best), best


def label_llm_run(
    store: Store,
    config: LLMConfig,
    latents: Iterable[int] | None = None,
    *,
    sae: int | str | None = None,
    top_diff: tuple[str, str] | None = None,
    all_firing: bool = False,
    limit: int | None = None,
    score: bool = True,
    relabel_below: float | None = None,
    max_rounds: int = 3,
    near_misses: bool = True,
    progress: bool = True,
) -> LLMLabelRun:
    """Label latents with the LLM of ``config`` (see the module's docstring).

    ``near_misses=False`` takes every negative at random (no ``latent_near_misses`` query,
    faster on large stores); its labels have prompt version ``PROMPT_VERSION +
    RANDOM_NEGATIVES``, so they coexist with labels made with near misses.

    Choose latents as :func:`saedb.labels.label_offline` does. Never raises for one latent's
    failure: those are in the result's ``failed`` (and in ``label_failures``); raises
    :class:`saedb.llm.LLMEndpointError` only through ``failed`` too, after stopping early
    when the endpoint refuses every call (bad key, unknown model). Ctrl-C raises
    :class:`LabelRunInterrupted` (a ``KeyboardInterrupt``) carrying what was done and spent.
    """
    if relabel_below is not None and not 0.0 <= relabel_below <= 1.0:
        raise ConfigError(
            f"relabel_below must be in [0, 1] (a balanced accuracy), not {relabel_below}"
        )
    if relabel_below is not None and not score:
        raise ConfigError("relabelling below a score needs scoring: drop --no-score")
    if max_rounds < 1:
        raise ConfigError(f"max_rounds must be at least 1, not {max_rounds}")
    if not config.model:
        raise ConfigError("no model named: give --model NAME (or model in the LLM config)")
    sae_id = _sae_id(store, sae)
    ids = choose_latents(
        store, sae_id, latents, top_diff=top_diff, all_firing=all_firing, limit=limit
    )
    version = PROMPT_VERSION if near_misses else PROMPT_VERSION + RANDOM_NEGATIVES
    done, existing = _existing(store, sae_id, config.model, version)
    if relabel_below is not None:
        low = {
            i for i in done if existing[i].value is not None and existing[i].value < relabel_below
        }
    else:
        low = set()
    run = LLMLabelRun(model=config.model, prompt_version=version)
    run.already = [i for i in ids if i in done and i not in low]
    todo = [i for i in ids if i not in done or i in low]
    base = {i: existing[i] for i in low}
    try:
        settings = _Settings(score, relabel_below, max_rounds, near_misses, version, progress)
        return run_sync(_run(store, config, sae_id, todo, base, run, settings))
    except KeyboardInterrupt as exc:
        raise LabelRunInterrupted(run) from exc


async def _run(
    store: Store,
    config: LLMConfig,
    sae_id: int,
    todo: list[int],
    existing: dict[int, Candidate],
    run: LLMLabelRun,
    settings: _Settings,
) -> LLMLabelRun:
    from tqdm import tqdm

    progress = settings.progress

    assert config.model is not None
    queue: asyncio.Queue[int] = asyncio.Queue()
    for latent in todo:
        queue.put_nowait(latent)
    bar = tqdm(total=len(todo), desc="labelling (LLM)", unit="latent", disable=not progress)
    async with LLMClient(config, store) as client:
        run.stats = client.stats
        ctx_warnings: dict[int, str] = {}
        run.warnings = ctx_warnings
        ctx = _Context(
            store,
            client,
            sae_id,
            config.model,
            settings.score,
            settings.relabel_below,
            settings.max_rounds,
            existing,
            settings.near_misses,
            settings.prompt_version,
            warnings=ctx_warnings,
        )

        async def worker() -> None:
            while True:
                try:
                    latent = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if ctx.fatal is not None:
                    run.failed[latent] = f"not attempted: {ctx.fatal}"
                    bar.update(1)
                    continue
                try:
                    n_rounds, cand = await _label_latent(ctx, latent)
                except _Skip:
                    run.never_fired.append(latent)
                except _Failed as exc:
                    if isinstance(exc.error, LLMEndpointError):
                        ctx.fatal = ctx.fatal or exc.error
                    run.failed[latent] = str(exc)
                    _record_failure(ctx, latent, exc.stage, str(exc.error))
                else:
                    if cand is None:
                        run.kept.append(latent)
                    else:
                        _write(ctx, latent, cand)
                        run.labelled.append(latent)
                        if ctx.score and cand.score is None:
                            run.unscored.append(latent)
                    if n_rounds > 1 or latent in existing:
                        run.relabelled.append(latent)
                bar.update(1)
                bar.set_postfix(failed=len(run.failed), cached=client.stats.cached)

        try:
            await asyncio.gather(
                *(worker() for _ in range(min(config.concurrency, len(todo)) or 1))
            )
        finally:
            bar.close()
    run.labelled.sort()
    run.unscored.sort()
    return run


# -- label embeddings from an endpoint -------------------------------------------------------


def embed_labels_remote(store: Store, config: LLMConfig, *, sae: int | str | None = None) -> int:
    """Embed every label of the SAE that has no embedding from ``config.model`` yet.

    The vectors come from the OpenAI-compatible embeddings endpoint of ``config`` and are
    L2-normalised (like the MiniLM ones) before they go to ``label_embeddings`` with
    ``model = config.model``, in one transaction. Returns how many were embedded.
    """
    import pyarrow as pa

    from saedb.llm import aembed_texts, unit_vectors

    if not config.model:
        raise ConfigError("no embedding model named: give --embed-model NAME")
    sae_id = _sae_id(store, sae)
    todo = store.arrow(
        """
        SELECT l.label_id, l.label FROM latent_labels AS l
        ANTI JOIN label_embeddings AS e ON e.label_id = l.label_id AND e.model = ?
        WHERE l.sae_id = ? ORDER BY l.label_id
        """,
        [config.model, sae_id],
    )
    if todo.num_rows == 0:
        return 0
    vectors = run_sync(
        aembed_texts(config, todo.column("label").to_pylist(), config.model, store=store)
    )
    unit = unit_vectors(vectors, "label", todo.column("label_id").to_pylist())
    table = pa.table(
        {
            "label_id": todo.column("label_id"),
            "embedding": pa.array(unit, pa.list_(pa.float32())),
        }
    )
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_new_embeddings", table)
        con.execute(
            "INSERT INTO label_embeddings (label_id, model, embedding) "
            "SELECT label_id, ?, embedding FROM _new_embeddings",
            [config.model],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_new_embeddings")
    return todo.num_rows


def summarise(stats: CallStats) -> str:
    """One line: requests, cache hits, tokens, estimated cost."""
    cost = f"${stats.cost:.4f}"
    if stats.unpriced:
        cost = (
            "unknown (set --price-in and --price-out)"
            if stats.unpriced == stats.ok
            else f"{cost} + {stats.unpriced} unpriced calls"
        )
    return (
        f"LLM calls: {stats.calls} requests ({stats.ok} ok, {stats.retried} retried, "
        f"{stats.failed} failed), {stats.cached} answered from the cache; tokens "
        f"{stats.prompt_tokens} in + {stats.completion_tokens} out; estimated cost {cost}"
    )
