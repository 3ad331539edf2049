"""Study 1: diffing recovers known differences.

For each pair of subsets that differ in a known property (spam vs ham, fortunes about
computers vs about people, WordNet glosses of foods vs of animals), take the top-k latents of
``diff(a, b)`` in each direction (q < 0.05, largest difference first), and score whether each
describes the side it favours: its offline label or its 5 most frequent peak tokens in that
side's documents contain one of the side's property keywords (:mod:`eval.truth`), and, when
an LLM endpoint is configured, whether an LLM judge (:mod:`eval.judge`) says its label
describes the side's property. Also count the tokens an LLM would read to compare the two
sets directly against the tokens an LLM labeler would read for saedb's top-k latents.
"""

from __future__ import annotations

import random
import time

from eval import judge
from eval.common import load_docs, n_tokens, pyplot, sae_id, savefig
from eval.config import EvalConfig
from eval.corpora import corpus_store
from eval.metrics import keyword_hit, precision_at_k
from eval.report import StudyResult, Table
from eval.truth import PAIRS, subset

PEAK_TOKENS_SQL = """
SELECT lower(trim(substring(d.text, l.max_char_start + 1, l.max_char_end - l.max_char_start)))
         AS token, count(*) AS n
FROM doc_latents l JOIN documents d USING (doc_id) JOIN datasets ds USING (dataset_id)
WHERE l.sae_id = ? AND l.latent_id = ? AND ds.name = ?
GROUP BY ALL ORDER BY n DESC, token LIMIT 5
"""

LABEL_PROMPT_TOKENS = 150
"""Instructions of one LLM labelling prompt, tokens (the examples are counted exactly)."""
LABEL_OUTPUT_TOKENS = 40
"""An LLM label and one-sentence description, tokens."""
COMPARE_PROMPT_TOKENS = 100
"""Instructions of a direct "how do these two sets differ" prompt, tokens."""
COMPARE_OUTPUT_TOKENS = 300
"""A direct comparison's answer, tokens."""
EXAMPLES = {"n_pos": 10, "top": 30, "n_neg": 10, "context": 120}
"""The examples an LLM labeler would be shown per latent (``latent_examples`` defaults)."""


def llm_judge_available(cfg: EvalConfig) -> bool:
    """Whether this run asks the LLM judge: an endpoint is configured as for ``saedb label``
    and the ``openai`` package is installed (see :func:`eval.judge.endpoint`)."""
    return judge.endpoint(cfg)[0] is not None


def judge_cell(verdicts: list[bool | None] | None, k: int, why: str) -> object:
    """The summary's "LLM judge" cell: the judge's precision@2k over both directions (its
    "yes" answers / 2k), or what was used instead and why."""
    if verdicts is None:
        return f"keyword check used ({why})"
    p = precision_at_k([v is True for v in verdicts], 2 * k)
    unanswered = sum(v is None for v in verdicts)
    return p if not unanswered else f"{p:.3f} ({unanswered} unanswered)"


def run(cfg: EvalConfig) -> StudyResult:
    t0 = time.perf_counter()
    import saedb

    k = cfg.top_k
    judge_config, judge_why = judge.endpoint(cfg)
    judging = judge_config is not None
    summary = Table(
        f"Top-{k} diff latents whose label or peak tokens name the property (precision@{k}); "
        f"LLM judge: precision@{2 * k} by its answers",
        [
            "pair (a vs b)",
            "docs a/b",
            "significant (q<0.05) a/b",
            f"P@{k} a",
            f"P@{k} b",
            f"P@{2 * k} both",
            "LLM judge",
        ],
    )
    examples = Table(
        "The 5 strongest latents each way: label, peak tokens, matched keyword"
        + (", the LLM judge's answer" if judging else ""),
        ["pair", "side", "latent", "freq a", "freq b", "q", "label", "peak tokens", "keyword"]
        + (["LLM judge"] if judging else []),
    )
    missed = Table(
        f"Top-{k} latents that matched no keyword (the misses)",
        ["pair", "side", "latent", "label", "peak tokens"] + (["LLM judge"] if judging else []),
    )
    cost = Table(
        "Tokens an LLM reads: direct comparison of the two sets vs labelling saedb's top latents",
        [
            "pair",
            "direct: all docs",
            f"direct: {cfg.sample_per_side}+{cfg.sample_per_side} docs",
            f"saedb: label {2 * k} latents",
            "all docs / saedb",
        ],
    )
    plot_rows = []
    misses: list[str] = []
    hows: set[str] = set()
    agree: list[bool] = []
    judge_calls = {"calls": 0, "cached": 0, "prompt": 0, "completion": 0}
    judge_errors: list[str] = []
    for corpus, a, b in PAIRS:
        path = corpus_store(corpus, cfg)
        # the judge's calls are cached and accounted in the store, so it is opened for writing
        with saedb.open(path, read_only=not judging) as store:
            sid = sae_id(store)
            rows = store.sql(
                "SELECT latent_id, freq_a, freq_b, difference, q_value FROM diff(?, ?, sae := ?) "
                "WHERE q_value < 0.05 ORDER BY difference DESC, latent_id",
                [a, b, sid],
            )
            up = rows[rows.difference > 0]
            down = rows[rows.difference < 0].sort_values(["difference", "latent_id"])
            labels, descriptions = {}, {}
            for lat, label, desc in store.con.execute(
                "SELECT latent_id, label, description FROM current_labels WHERE sae_id = ?", [sid]
            ).fetchall():
                labels[lat], descriptions[lat] = label, desc or ""
            # (side, subset, diff row, peak tokens, label, matched keyword), top k per side
            top_rows = []
            for side, frame, name in (("a", up, a), ("b", down, b)):
                kws = subset(corpus, name).keywords
                for r in frame.head(k).itertuples():
                    lat = int(r.latent_id)
                    toks = [
                        " ".join(t.split()) or repr(t)
                        for t, _ in store.con.execute(PEAK_TOKENS_SQL, [sid, lat, name]).fetchall()
                    ]
                    label = labels.get(lat, "(no label)")
                    top_rows.append((side, name, r, toks, label, keyword_hit([label, *toks], kws)))
            verdicts: list[bool | None] | None = None
            if judging:
                # a latent without a label has nothing to judge: a miss, not a question
                props = {a: subset(corpus, a).query, b: subset(corpus, b).query}
                asked = [i for i, row in enumerate(top_rows) if int(row[2].latent_id) in labels]
                got = judge.judge(
                    judge_config,
                    [
                        judge.Item(
                            sid,
                            int(r.latent_id),
                            label,
                            descriptions.get(int(r.latent_id), ""),
                            props[name],
                            props[b if name == a else a],
                        )
                        for _side, name, r, _toks, label, _hit in (top_rows[i] for i in asked)
                    ],
                    store,
                )
                verdicts = [False] * len(top_rows)
                for i, answer in zip(asked, got.answers, strict=True):
                    verdicts[i] = answer
                judge_errors += got.errors
                judge_calls["calls"] += got.calls
                judge_calls["cached"] += got.cached
                judge_calls["prompt"] += got.prompt_tokens
                judge_calls["completion"] += got.completion_tokens
            scores: dict[str, list[bool]] = {"a": [], "b": []}
            shown = {"a": 0, "b": 0}
            for i, (side, name, r, toks, label, hit) in enumerate(top_rows):
                lat = int(r.latent_id)
                scores[side].append(hit is not None)
                said = (
                    []
                    if verdicts is None
                    else [_answer_text(verdicts[i]) if lat in labels else "no label"]
                )
                if verdicts is not None and verdicts[i] is not None and lat in labels:
                    agree.append(verdicts[i] == (hit is not None))
                if hit is None:
                    misses.append(label)
                    missed.rows.append([f"{a} vs {b}", name, lat, label, ", ".join(toks), *said])
                if shown[side] < 5:
                    shown[side] += 1
                    examples.rows.append(
                        [
                            f"{a} vs {b}",
                            name,
                            lat,
                            float(r.freq_a),
                            float(r.freq_b),
                            float(r.q_value),
                            label,
                            ", ".join(toks),
                            hit or "",
                            *said,
                        ]
                    )
            pa_, pb_ = precision_at_k(scores["a"], k), precision_at_k(scores["b"], k)
            both = precision_at_k(scores["a"] + scores["b"], 2 * k)
            docs = load_docs(store, [a, b])
            summary.rows.append(
                [
                    f"{a} vs {b}",
                    f"{sum(d.dataset == a for d in docs)}/{sum(d.dataset == b for d in docs)}",
                    f"{len(up)}/{len(down)}",
                    pa_,
                    pb_,
                    both,
                    judge_cell(verdicts, k, judge_why),
                ]
            )
            plot_rows.append((f"{a}\nvs {b}", pa_, pb_))

            # token cost
            all_tokens = sum(d.n_tokens for d in docs) + COMPARE_PROMPT_TOKENS
            rng = random.Random(f"{cfg.seed}:{a}:{b}")
            sample = []
            for name in (a, b):
                side_docs = [d for d in docs if d.dataset == name]
                sample += rng.sample(side_docs, min(cfg.sample_per_side, len(side_docs)))
            sample_tokens = sum(d.n_tokens for d in sample) + COMPARE_PROMPT_TOKENS
            top = [int(x) for x in list(up.head(k).latent_id) + list(down.head(k).latent_id)]
            saedb_tokens, how = labeler_tokens(store, sid, top, labels)
            hows.add(how)
            cost.rows.append(
                [
                    f"{a} vs {b}",
                    all_tokens + COMPARE_OUTPUT_TOKENS,
                    sample_tokens + COMPARE_OUTPUT_TOKENS,
                    saedb_tokens,
                    f"{(all_tokens + COMPARE_OUTPUT_TOKENS) / max(saedb_tokens, 1):.1f}x",
                ]
            )

    p_both = [r[5] for r in summary.rows]
    ratio_all = [r[1] / max(r[3], 1) for r in cost.rows]
    ratio_sample = [r[2] / max(r[3], 1) for r in cost.rows]
    undistinctive = sum(m.startswith("no distinctive terms") for m in misses)
    findings = (
        f"precision@{2 * k} (both directions) is "
        + ", ".join(f"{r[5]:.2f} for {r[0]}" for r in summary.rows)
        + f" (mean {sum(p_both) / len(p_both):.2f}). Of the {len(misses)} misses, "
        f"{undistinctive} are latents whose offline label found no distinctive terms; the "
        "others have labels and peak tokens that match no keyword (listed in the misses "
        "table: a miss may still be a real difference that is not the property, or a "
        "synonym the lists lack, so precision@k is a lower bound). Tokens: a direct "
        "comparison costs "
        + ", ".join(f"{x:.1f}" for x in ratio_all)
        + " times the tokens of saedb's labelling when an LLM reads every document of both "
        "subsets, and "
        + ", ".join(f"{x:.2f}" for x in ratio_sample)
        + f" times when it reads a {cfg.sample_per_side}+{cfg.sample_per_side}-document "
        "sample (below 1: the direct comparison is cheaper). The direct cost grows with the "
        "corpus, saedb's with the number of latents labelled (and labels are reused by every "
        "later diff); the diff statistics themselves cost no tokens, and unlike a sample they "
        "count every document. " + _judge_findings(summary, agree, judge_errors, judge_why, k)
    )

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    xs = range(len(plot_rows))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in plot_rows], 0.4, label="latents favouring a")
    ax.bar([x + 0.2 for x in xs], [r[2] for r in plot_rows], 0.4, label="latents favouring b")
    ax.set_xticks(list(xs), [r[0] for r in plot_rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"precision@{k} (keyword check)")
    ax.set_title("Do the top diff latents name the known property?")
    ax.legend(loc="lower right", fontsize=8)
    plot = savefig(fig, cfg.img_dir / "eval_diffing.png")

    method = f"""
Pairs of subsets with a known difference, {cfg.per_subset} documents sampled per subset
(seeded; emails cut to subject + body, {cfg.email_chars} characters and {cfg.email_tokens}
tokens at most, fortunes of at most {cfg.max_fortune_chars} characters), ingested with the
default reader and SAE. For each pair,
`diff(a, b)` in SQL; the top {k} latents with q < 0.05 in each direction (largest
difference first). Each latent counts as a hit when its offline label (`saedb label`, the
log-odds labeler; {cfg.labelled} in the store labelled) or one of its 5 most frequent
peak tokens in the favoured subset's documents contains one of that subset's keywords
(listed below; prefix match for keywords of 4+ letters). precision@k = hits / k (a side with
fewer than k significant latents counts the missing ones as misses).

{_judge_doc(judge_config, judge_why, judge_calls, k)}

Token cost: "direct" is what an LLM reads to compare the sets itself: every document of both
subsets (token counts from the reader's tokenizer, `documents.n_tokens`), or a random
{cfg.sample_per_side} per subset, plus {COMPARE_PROMPT_TOKENS} tokens of instructions and
{COMPARE_OUTPUT_TOKENS} of answer. "saedb" is what an LLM labeler reads and writes to label
the {2 * k} top latents: {_saedb_cost_doc(hows)} The diff itself costs no tokens.

Keywords: {_keyword_doc()}
"""
    return StudyResult(
        "diffing",
        "1. Diffing recovers known differences",
        method,
        [summary, examples, missed, cost],
        [plot],
        findings=findings,
        seconds=time.perf_counter() - t0,
    )


def _answer_text(verdict: bool | None) -> str:
    return {True: "yes", False: "no", None: "unanswered"}[verdict]


def _judge_doc(config, why: str, calls: dict[str, int], k: int) -> str:
    if config is None:
        return (
            f"LLM judge: not asked in this run ({why}), so the keyword check above is the "
            "only judge and the LLM-judge column says so. With an OpenAI-compatible endpoint "
            "configured as for `saedb label` (the LLM config file, `$SAEDB_LLM_CONFIG` or "
            "`~/.config/saedb/llm.toml`, or `python -m eval --base-url URL --model NAME`) an "
            "LLM also judges every top latent's label."
        )
    where = config.base_url or "the OpenAI API"
    return (
        f"LLM judge: model `{config.model}` at {where}, through saedb's LLM client "
        "(`saedb.llm`; cached and accounted in each store's `llm_calls`, purpose "
        f"`{judge.PURPOSE}`). For each of the top {k} latents per direction it is given the "
        "properties of both subsets (the retrieval study's queries), the latent's offline "
        "label and description, and asked whether the label describes the property of the "
        'subset the latent favours, answering `{"answer": "yes"}` or `{"answer": "no"}` (an '
        "answer that does not parse gets one retry; one that still fails counts as a miss "
        'and is counted as "unanswered"; a latent without a label is a miss, not asked). '
        f"LLM judge = yes answers / {2 * k} over both directions; identical questions are "
        "asked once (the client's cache answers the others). "
        f"This run: {calls['calls']} calls ({calls['prompt']} prompt and "
        f"{calls['completion']} completion tokens as the endpoint counts them), "
        f"{calls['cached']} answers from the cache."
    )


def _judge_findings(summary: Table, agree: list[bool], errors: list[str], why: str, k: int) -> str:
    judged = [(r[0], r[6]) for r in summary.rows if not str(r[6]).startswith("keyword check")]
    if not judged:
        return f"No LLM judged the labels ({why}): the keyword check is the only judge."
    text = f"The LLM judge's precision@{2 * k} (both directions) is " + ", ".join(
        f"{v if isinstance(v, str) else f'{v:.2f}'} for {n}" for n, v in judged
    )
    if agree:
        text += (
            f"; it agrees with the keyword check on {sum(agree)} of the {len(agree)} latents "
            f"it answered ({sum(agree) / len(agree):.0%})"
        )
    if errors:
        text += f"; {len(errors)} latents got no usable answer (first: {errors[0]})"
    return text + "."


def labeler_tokens(store, sid: int, latents: list[int], labels: dict) -> tuple[int, str]:
    """Tokens an LLM labeler reads and writes for ``latents``, and how they were counted.

    With ``saedb.llm_labels`` (the LLM labeler): its own prompts, built from its own examples
    for each latent (the labelling prompt, then the detection prompt that scores the label on
    held-out examples; the offline label stands in for the label being scored), counted with
    the reader's tokenizer, plus estimated answers. Without it: the snippets of
    ``latent_examples`` plus a fixed allowance for instructions.
    """
    try:
        from saedb import llm_labels as ll

        total = 0
        for lat in latents:
            ex = ll.latent_examples(store, sid, lat)
            msgs = ll.label_messages(ex.shown)
            items = ll.detection_items(ex.held_out, lat)
            label = labels.get(lat, "feature")
            msgs += ll.detection_messages(label, "", items) if items else []
            total += n_tokens([m["content"] for m in msgs]) + 4 * len(msgs)
            total += LABEL_OUTPUT_TOKENS + (4 + 2 * len(items) if items else 0)
        return total, "llm_labels"
    except Exception:  # noqa: BLE001 - the labeler is optional; fall back to the estimate
        snippet_tokens = 0
        for lat in latents:
            ex = store.con.execute(
                "SELECT snippet FROM latent_examples(?, sae := ?, n_pos := ?, top := ?, "
                "n_neg := ?, context := ?)",
                [lat, sid, *EXAMPLES.values()],
            ).fetchall()
            snippet_tokens += n_tokens([s for (s,) in ex if s])
        total = snippet_tokens + len(latents) * (LABEL_PROMPT_TOKENS + LABEL_OUTPUT_TOKENS)
        return total, "estimate"


def _saedb_cost_doc(hows: set[str]) -> str:
    if hows == {"llm_labels"}:
        from saedb import llm_labels as ll

        return (
            f"the prompts of saedb's LLM labeler (`saedb.llm_labels`, prompt version "
            f"{ll.PROMPT_VERSION}) built from its own examples of each latent (up to "
            f"{ll.N_POS} positives, {ll.N_NEG} random and {ll.N_NEAR} near-miss negatives, "
            f"{ll.CONTEXT} characters of context): one labelling prompt and one detection "
            "prompt that scores the label on held-out examples, counted with the reader's "
            f"tokenizer (4 tokens per message for the chat format), plus {LABEL_OUTPUT_TOKENS} "
            "tokens of label answer and 2 per scored example; relabelling rounds not counted."
        )
    return (
        f"per latent, the snippets `latent_examples` gives ({EXAMPLES['n_pos']} positives from "
        f"its top {EXAMPLES['top']}, {EXAMPLES['n_neg']} negatives, {EXAMPLES['context']} "
        "characters of context) counted with the reader's tokenizer, plus "
        f"{LABEL_PROMPT_TOKENS} tokens of instructions and {LABEL_OUTPUT_TOKENS} of answer "
        "(an estimate: saedb's LLM labeler was not importable in this run)."
    )


def _keyword_doc() -> str:
    parts = []
    for corpus, a, b in PAIRS:
        for name in (a, b):
            parts.append(f"*{name}*: {', '.join(subset(corpus, name).keywords)}")
    return "; ".join(parts) + "."
