"""Study 4: property retrieval.

For each subset, a short text query naming its property (:mod:`eval.truth`) ranks all the
documents of its corpus; the subset's documents are the relevant ones. Three rankers over the
same documents in the same run: saedb search (query -> latents by label similarity ->
``retrieve``), MiniLM dense cosine (query vs document embeddings) and BM25 (``bm25s``).
"""

from __future__ import annotations

import time

import numpy as np

from eval import search
from eval.common import doc_embeddings, load_docs, minilm, pyplot, sae_id, savefig
from eval.config import EvalConfig
from eval.corpora import corpus_store
from eval.metrics import average_precision, full_ranking
from eval.report import StudyResult, Table
from eval.truth import CORPORA


def bm25_rank(texts: list[str], query: str) -> list[int]:
    """Indices of ``texts`` by BM25 score (bm25s defaults, English stop words), best first;
    ties (documents sharing no query term score 0) keep index order."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    q = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
    scores = retriever.get_scores(q)
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]


def run(cfg: EvalConfig) -> StudyResult:
    t0 = time.perf_counter()
    import saedb

    table = Table(
        "Average precision per query (relevant: the subset's documents; ranked: all documents "
        "of the corpus)",
        [
            "corpus",
            "subset",
            "query",
            "relevant/all",
            "saedb search",
            "MiniLM cosine",
            "BM25",
            "saedb query latents (label)",
            "candidates: recall / precision",
        ],
    )
    per_method: dict[str, list[float]] = {"saedb search": [], "MiniLM cosine": [], "BM25": []}
    prior: list[float] = []
    recall: list[float] = []
    precision: list[float] = []
    enc = minilm()
    for corpus, subsets in CORPORA.items():
        names = [s.name for s in subsets]
        path = corpus_store(corpus, cfg)
        with saedb.open(path, read_only=True) as store:
            sid = sae_id(store)
            docs = load_docs(store, names)
            universe = [d.doc_id for d in docs]
            emb = doc_embeddings(docs, cfg.cache)
            index = search.LabelIndex(store, sid) if search.backend() != "saedb.query" else None
            texts = [d.text for d in docs]
            for s in subsets:
                relevant = {d.doc_id for d in docs if d.dataset == s.name}
                weights = search.query_weights(
                    store, sid, s.query, cfg.query_latents, encoder=enc, index=index
                )
                ranked = search.search(store, sid, weights, names)
                cand_hits = len(relevant.intersection(ranked))
                recall.append(cand_hits / len(relevant))
                precision.append(cand_hits / len(ranked) if ranked else 0.0)
                ap_saedb = average_precision(full_ranking(ranked, universe, cfg.seed), relevant)
                qv = enc.encode([s.query])[0]
                dense = [universe[i] for i in np.argsort(-(emb @ qv), kind="stable")]
                ap_dense = average_precision(dense, relevant)
                ap_bm25 = average_precision(
                    [universe[i] for i in bm25_rank(texts, s.query)], relevant
                )
                per_method["saedb search"].append(ap_saedb)
                per_method["MiniLM cosine"].append(ap_dense)
                per_method["BM25"].append(ap_bm25)
                prior.append(len(relevant) / len(universe))
                shown = "; ".join(
                    f"{lat} {lab}" if lab else str(lat) for lat, _w, lab in weights[:3]
                )
                table.rows.append(
                    [
                        corpus,
                        s.name,
                        s.query,
                        f"{len(relevant)}/{len(universe)}",
                        ap_saedb,
                        ap_dense,
                        ap_bm25,
                        shown,
                        f"{recall[-1]:.2f} / {precision[-1]:.2f}",
                    ]
                )
    summary = Table(
        "Mean average precision over all queries",
        ["method", "MAP", "queries won (ties count for each)"],
    )
    n = len(prior)
    for m, aps in per_method.items():
        wins = sum(aps[i] >= max(v[i] for v in per_method.values()) - 1e-12 for i in range(n))
        summary.rows.append([m, float(np.mean(aps)), f"{wins}/{n}"])
    summary.rows.append(["random ranking (expected, = share relevant)", float(np.mean(prior)), ""])

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    labels = [f"{r[1]}" for r in table.rows]
    xs = np.arange(len(labels))
    for i, (m, aps) in enumerate(per_method.items()):
        ax.bar(xs + (i - 1) * 0.27, aps, 0.27, label=f"{m} (MAP {np.mean(aps):.2f})")
    ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1.05)
    ax.set_title("Property retrieval: query naming a subset's property")
    ax.legend(fontsize=7)
    plot = savefig(fig, cfg.img_dir / "eval_retrieval.png")

    maps = {m: float(np.mean(v)) for m, v in per_method.items()}
    best_base = max(("MiniLM cosine", "BM25"), key=lambda m: maps[m])
    ours = maps["saedb search"]
    verdict = (
        f"saedb search (MAP {ours:.3f}) beats both baselines (MiniLM cosine "
        f"{maps['MiniLM cosine']:.3f}, BM25 {maps['BM25']:.3f})."
        if ours > max(maps["MiniLM cosine"], maps["BM25"])
        else f"saedb search loses: MAP {ours:.3f} against {maps[best_base]:.3f} for "
        f"{best_base} (MiniLM cosine {maps['MiniLM cosine']:.3f}, BM25 {maps['BM25']:.3f}; "
        f"a random ranking expects {np.mean(prior):.3f})."
    )
    diag = (
        f" Diagnostic: the {cfg.query_latents} latents a query picks fire in "
        f"{np.mean(recall):.0%} of the relevant documents on average (the rest are ranked at "
        f"random after the candidates), and {np.mean(precision):.0%} of the documents they "
        "fire in are relevant."
    )
    why = (
        " Why it loses: a query reaches latents only through their labels, and the offline "
        "labels are the few words most specific to a latent's top contexts, so the latents "
        "a query finds are mostly latents for the query's own words as tokens (see the "
        "labels column: 'people', 'love', 'food', 'spam'). They fire wherever the word "
        "occurs, in every subset (low candidate precision), miss the subset's documents "
        "that never use the word (candidate recall below 1), and the score ranks documents "
        "by how strongly the word's latent fired, not by how much the document is about the "
        "topic. MiniLM embeds the whole document and BM25 scores all of its words, which "
        "fits whole-topic queries better. The levers: LLM labels that name concepts rather "
        "than words, more latents per query, and matching queries against descriptions as "
        "well as labels. Where saedb search wins or ties, the per-query table shows it."
        if ours <= max(maps["MiniLM cosine"], maps["BM25"])
        else ""
    )
    findings = verdict + diag + why

    backend = " and ".join(sorted(search.USED)) or search.backend()
    weighting = (
        "weighted by similarity / best similarity (`saedb.query.query_weights`)"
        if search.USED == {"saedb.query"}
        else "weighted by their cosine"
    )
    method = f"""
Each query names one subset's property in a few words (the `query` column). It ranks every
document of its corpus (all subsets, {cfg.per_subset} sampled per subset); the documents of
that subset are the relevant ones; average precision over the whole ranking, MAP = mean over
the {n} queries.

- *saedb search* (query -> latents via `{backend}`): the query is embedded with MiniLM
  (all-MiniLM-L6-v2), compared by cosine with the MiniLM embeddings of every latent's
  current label (offline log-odds labels of {cfg.labelled} in the store), and the
  {cfg.query_latents} most similar latents, {weighting}, go to the SQL macro
  `retrieve`. It returns only documents where at least one of those latents fired; the other
  documents follow in a seeded random order, so every method ranks the same documents.
- *MiniLM cosine*: the query's and each document's MiniLM embedding (mean pooling, first 256
  word pieces), by cosine.
- *BM25*: `bm25s` with its defaults (k1 1.5, b 0.75, Lucene variant, English stop words, no
  stemming).
"""
    return StudyResult(
        "retrieval",
        "4. Property retrieval",
        method,
        [summary, table],
        [plot],
        findings=findings,
        seconds=time.perf_counter() - t0,
    )
