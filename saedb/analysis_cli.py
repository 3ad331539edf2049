"""The analysis commands of the ``saedb`` CLI: ``diff``, ``correlations``, ``cluster``, ``search``.

Each one runs a SQL macro of the store (or ``saedb.cluster``), prints the result in the shared
``--format`` and, with ``--plot FILE.png``, draws it. ``saedb.cli`` registers the parsers (see
:func:`add_parsers`) and turns errors into one line; matplotlib (Agg, no display) is imported
only when a plot is asked for.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from saedb.errors import ConfigError, StoreError
from saedb.output import render
from saedb.query import AXIS_LATENTS, SEARCH_LATENTS
from saedb.query_cli import add_rerank_options, add_selection_options

_PLOT_HELP = "also draw the result into this PNG file"


def add_parsers(sub: Any, format_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the analysis subcommands to the ``saedb`` subparsers ``sub``."""
    p = sub.add_parser(
        "diff",
        help="latents that fire more often in one set of documents than another",
        description="Compare two datasets (diff), one dataset with the rest (--rest) or two "
        "values of a metadata key (--metadata KEY --values A B): one row per latent, sorted "
        "by difference in frequency, with a two-proportion z-test and BH q-values.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument(
        "a", nargs="?", help="first dataset; with --metadata, a dataset to stay inside (optional)"
    )
    p.add_argument("b", nargs="?", help="second dataset")
    p.add_argument(
        "--rest",
        nargs="?",
        const="",
        metavar="NAMES",
        help="compare A with all other datasets (or with NAMES, comma-separated)",
    )
    p.add_argument("--metadata", metavar="KEY", help="compare two values of this metadata key")
    p.add_argument("--values", nargs=2, metavar=("A", "B"), help="the two values of --metadata")
    p.add_argument("--min-freq", type=float, default=0.0, help="coverage filter (default: 0)")
    p.add_argument("--max-freq", type=float, default=1.0, help="coverage filter (default: 1)")
    _threshold_option(p)
    _limit_option(p)
    _sae_option(p)
    format_option(p)
    p.add_argument("--plot", metavar="FILE.png", help=_PLOT_HELP)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "correlations",
        help="latents that fire together (NPMI)",
        description="Normalised pointwise mutual information of latents over documents: the "
        "latents that co-occur most with --targets, or the top pairs of all latents.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument("--targets", metavar="IDS", help="target latent ids, e.g. 1,2,3")
    _datasets_option(p)
    p.add_argument(
        "--min-count", type=int, default=5, help="pairs must fire together in this many docs"
    )
    _threshold_option(p)
    p.add_argument(
        "--refresh",
        action="store_true",
        help="recompute and store the pairs (latent_cooccurrence) for these datasets first",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar for --refresh")
    p.add_argument(
        "--max-label-similarity",
        type=float,
        metavar="X",
        help="drop pairs whose labels are near-synonyms: label_similarity above X (pairs "
        "without two embedded labels are kept)",
    )
    _limit_option(p)
    _sae_option(p)
    format_option(p)
    p.add_argument("--plot", metavar="FILE.png", help=_PLOT_HELP)
    p.set_defaults(func=cmd_correlations)

    p = sub.add_parser(
        "cluster",
        help="cluster documents on which of chosen latents fired",
        description="Spectral clustering of the documents on the chosen latents (binary: "
        "fired or not), given as ids (--latents) or chosen by label similarity to an axis "
        "(--axis 'tone'; needs labels: saedb label). The run and every document's cluster "
        "are stored (cluster_runs, cluster_assignments); cluster -1 holds the documents "
        "where none of them fired.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--latents", metavar="IDS", help="latent ids, e.g. 1,2,3")
    which.add_argument(
        "--axis",
        metavar="TEXT",
        help="cluster along this theme: on the latents whose labels are most similar to it",
    )
    add_selection_options(p, default_k=AXIS_LATENTS, what="--axis")
    p.add_argument("--k", type=int, default=5, help="number of clusters (default: 5)")
    _datasets_option(p)
    _threshold_option(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--top", type=int, default=3, help="latents shown per cluster (default: 3)")
    _sae_option(p)
    format_option(p)
    p.add_argument("--plot", metavar="FILE.png", help=_PLOT_HELP)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser(
        "search",
        help="documents that score highest on weighted latents, or on a text query",
        description="Rank documents by sum(weight * max_act) over the latents of QUERY, "
        "written as latent ids with optional weights (12,40:2.0,77), or as text "
        "('computers'): then the latents whose labels are most similar to it are used, each "
        "weighted by its similarity relative to the best (shown on stderr); this needs "
        "labels (saedb label) and caches the query's embedding for SQL (latents_for_query).",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument(
        "query", help="latent weights (ID or ID:WEIGHT, comma-separated), or a text query"
    )
    p.add_argument("--k", type=int, default=10, help="documents to return (default: 10)")
    _datasets_option(p)
    add_selection_options(p, default_k=SEARCH_LATENTS, what="a text query")
    add_rerank_options(p)
    _sae_option(p)
    format_option(p)
    p.add_argument("--plot", metavar="FILE.png", help=_PLOT_HELP)
    p.set_defaults(func=cmd_search)


def _threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold", type=float, default=0.0, help="a latent fired when max_act > this"
    )


def _limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=20, help="rows to print, 0 for all (default: 20)")


def _sae_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae", default=None, help="SAE name or id (default: the store's default)")


def _datasets_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", metavar="NAMES", help="only these datasets, e.g. a,b")


# -- argument parsing ----------------------------------------------------------------------


def parse_ids(text: str, option: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; anything else is a :class:`ConfigError` naming ``option``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"{option} expects latent ids separated by commas (1,2,3), got '{text}'")
    return [int(p) for p in parts]


def parse_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ConfigError(f"expected dataset names separated by commas, got '{text}'")
    return names


_WEIGHT = re.compile(r"^\s*(\d+)\s*(?::\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$")


def is_text_query(query: str) -> bool:
    """True when ``query`` is text ('computers') rather than latent weights: no part of it
    reads as ``ID`` or ``ID:WEIGHT`` and it has a letter."""
    parts = query.split(",")
    return not any(_WEIGHT.match(p) for p in parts) and re.search(r"[^\W\d_]", query) is not None


def parse_weights(query: str) -> list[dict[str, Any]]:
    """``"12,40:2.0,77"`` -> ``[{latent_id: 12, weight: 1.0}, {40, 2.0}, {77, 1.0}]``."""
    if not query.strip():
        raise ConfigError("empty query: give latent weights, e.g. 12,40:2.0,77")
    weights = []
    matches = [_WEIGHT.match(part) for part in query.split(",")]
    for part, m in zip(query.split(","), matches, strict=True):
        if m is None:
            if is_text_query(query):
                raise ConfigError(
                    f"'{query}' is a text query, not latent weights: search it with "
                    "saedb search STORE 'text' or Store.search('text') (by label similarity)"
                )
            raise ConfigError(
                f"cannot read '{part.strip()}' in '{query}': write latent ids with optional "
                "weights, ID or ID:WEIGHT, separated by commas (12,40:2.0,77)"
            )
        weights.append({"latent_id": int(m[1]), "weight": float(m[2]) if m[2] else 1.0})
    return weights


def _positive(value: int, option: str, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{option} must be {'0 or more' if zero_ok else 'at least 1'}")


def _sae_id(store: Any, value: str | None) -> int | None:
    """--sae as an id: a number is taken as it is, a name is looked up."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    sae_id = store.get_sae(value).sae_id
    return int(sae_id) if sae_id is not None else None


def _limited(sql: str, limit: int) -> str:
    _positive(limit, "--limit", zero_ok=True)
    return sql + (f" LIMIT {int(limit)}" if limit else "")


def _emit(table: pa.Table, args: argparse.Namespace, draw: Callable[[Any], None] | None) -> int:
    if args.plot and draw is not None:
        save_plot(args.plot, draw)
    sys.stdout.write(render(table, args.format))
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


# -- commands ------------------------------------------------------------------------------

_FILTERS = (
    "sae := $sae::INTEGER, min_freq := $min_freq::DOUBLE, max_freq := $max_freq::DOUBLE, "
    "threshold := $threshold::DOUBLE"
)


def cmd_diff(args: argparse.Namespace) -> int:
    from saedb.cli import _open

    if args.rest is not None and args.metadata:
        raise ConfigError("--rest and --metadata cannot be combined")
    if (args.metadata is None) != (args.values is None):
        raise ConfigError("--metadata KEY and --values A B go together")
    params: dict[str, Any] = {
        "min_freq": args.min_freq,
        "max_freq": args.max_freq,
        "threshold": args.threshold,
    }
    if args.metadata:
        if args.b is not None:
            raise ConfigError("with --metadata give at most one dataset (to stay inside)")
        sql = f"SELECT * FROM diff_metadata($key, $va, $vb, dataset := $a, {_FILTERS})"
        params |= {"key": args.metadata, "va": args.values[0], "vb": args.values[1], "a": args.a}
        labels = (f"{args.metadata}={args.values[0]}", f"{args.metadata}={args.values[1]}")
    elif args.rest is not None:
        if args.a is None or args.b is not None:
            raise ConfigError("--rest compares one dataset A with the rest: give A only")
        sql = f"SELECT * FROM diff_one_vs_rest($a, datasets := $rest::VARCHAR[], {_FILTERS})"
        params |= {"a": args.a, "rest": parse_names(args.rest) if args.rest else None}
        labels = (args.a, "rest")
    else:
        if args.a is None or args.b is None:
            raise ConfigError("diff needs two datasets A B (or --rest, or --metadata)")
        sql = f"SELECT * FROM diff($a, $b, {_FILTERS})"
        params |= {"a": args.a, "b": args.b}
        labels = (args.a, args.b)
    with _open(args.store, read_only=True) as store:
        params["sae"] = _sae_id(store, args.sae)
        table = store.arrow(_limited(sql, args.limit), params)
    return _emit(table, args, lambda fig: draw_diff(fig, table, labels))


def cmd_correlations(args: argparse.Namespace) -> int:
    from saedb.cli import _open, _require_store

    _positive(args.min_count, "--min-count")
    datasets = parse_names(args.datasets)
    params: dict[str, Any] = {
        "datasets": datasets,
        "min_count": args.min_count,
        "threshold": args.threshold,
    }
    common = (
        "datasets := $datasets::VARCHAR[], sae := $sae::INTEGER, "
        "min_count := $min_count::INTEGER, threshold := $threshold::DOUBLE"
    )
    if args.targets is not None and args.refresh:
        raise ConfigError(
            "--refresh stores the pairs of all latents; it does not go with --targets"
        )
    _require_store(args.store)
    with _open(args.store, read_only=not args.refresh) as store:
        params["sae"] = _sae_id(store, args.sae)
        if args.targets is not None:
            params["targets"] = parse_ids(args.targets, "--targets")
            sql = f"SELECT * FROM npmi_targets($targets::INTEGER[], {common})"
            order = "target_latent, npmi DESC, latent_id"
        else:
            order = "npmi DESC, latent_i, latent_j"
            stored = _stored_pairs(store, args, params)
            sql, params = stored or (f"SELECT * FROM npmi({common})", params)
        if args.max_label_similarity is not None:
            sql = (
                f"SELECT * FROM ({sql}) WHERE label_similarity IS NULL "
                f"OR label_similarity <= $max_label_similarity::DOUBLE ORDER BY {order}"
            )
            params = params | {"max_label_similarity": args.max_label_similarity}
        table = store.arrow(_limited(sql, args.limit), params)
    return _emit(table, args, lambda fig: draw_npmi(fig, table))


def _stored_pairs(
    store: Any, args: argparse.Namespace, params: dict[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """The query reading the pairs from ``latent_cooccurrence`` when it holds them for this
    SAE and set of datasets (computed with the same threshold and at most this min_count),
    after recomputing them with --refresh; None when they must be computed on the fly."""
    from saedb.cooccurrence import refresh_cooccurrence, scope_name
    from saedb.labels import EMBEDDING_MODEL

    scope = scope_name(params["datasets"])
    sae = params["sae"]
    if args.refresh:
        done = refresh_cooccurrence(
            store,
            datasets=params["datasets"],
            sae=params["sae"],
            min_count=args.min_count,
            threshold=args.threshold,
            progress=not args.quiet,
        )
        sae, scope = done["sae_id"], done["scope"]
    key = {"sae": sae, "scope": scope, "min_count": args.min_count}
    stored = store.arrow(
        "SELECT count(*) AS n FROM latent_cooccurrence_scopes WHERE sae_id = resolve_sae("
        "$sae::INTEGER) AND scope = $scope AND threshold = $threshold::DOUBLE "
        "AND min_count <= $min_count::INTEGER",
        key | {"threshold": args.threshold},
    )
    if not stored.column("n")[0].as_py():
        return None
    # the columns of npmi, labels included (as latent_npmi shows them)
    sql = (
        "SELECT p.latent_i, p.latent_j, p.n_i, p.n_j, p.n_both, p.n_docs, p.npmi, "
        "li.label AS label_i, lj.label AS label_j, CAST(list_cosine_similarity(ei.embedding, "
        "ej.embedding) AS DOUBLE) AS label_similarity FROM latent_cooccurrence AS p "
        "LEFT JOIN current_labels AS li ON li.sae_id = p.sae_id AND li.latent_id = p.latent_i "
        "LEFT JOIN current_labels AS lj ON lj.sae_id = p.sae_id AND lj.latent_id = p.latent_j "
        "LEFT JOIN label_embeddings AS ei ON ei.label_id = li.label_id AND ei.model = $model "
        "LEFT JOIN label_embeddings AS ej ON ej.label_id = lj.label_id AND ej.model = $model "
        "WHERE p.sae_id = resolve_sae($sae::INTEGER) AND p.scope = $scope "
        "AND p.n_both >= greatest($min_count::INTEGER, 1) "
        "ORDER BY p.npmi DESC, p.latent_i, p.latent_j"
    )
    return sql, key | {"model": EMBEDDING_MODEL}


def cmd_cluster(args: argparse.Namespace) -> int:
    from saedb.cli import _open, _require_store
    from saedb.cluster import NO_LATENT, cluster

    _positive(args.top, "--top")
    _positive(args.latents_k, "--latents-k")
    if args.axis is None and (args.latents_k != AXIS_LATENTS or args.min_similarity is not None):
        raise ConfigError("--latents-k and --min-similarity choose latents for --axis; add --axis")
    latents = parse_ids(args.latents, "--latents") if args.latents is not None else None
    _require_store(args.store)
    with _open(args.store, read_only=False) as store:
        if args.axis is not None:
            from saedb.query import choose_latents
            from saedb.query_cli import show_latents

            chosen = choose_latents(
                store,
                args.axis,
                latents_k=args.latents_k,
                sae=_sae_id(store, args.sae),
                min_similarity=args.min_similarity,
            )
            show_latents(chosen, args.axis, weights=False)
            latents = chosen.column("latent_id").to_pylist()
        result = cluster(
            store,
            latents,
            k=args.k,
            datasets=parse_names(args.datasets),
            sae=_sae_id(store, args.sae),
            threshold=args.threshold,
            seed=args.seed,
        )
    table = result.summary(top=args.top)
    n_none = sum(1 for c in result.assignments.column("cluster").to_pylist() if c == NO_LATENT)
    print(
        f"cluster run {result.cluster_run_id}: {result.assignments.num_rows} documents in "
        f"{result.n_clusters} clusters, {n_none} with none of the latents (cluster -1); "
        f"stored in cluster_assignments",
        file=sys.stderr,
    )
    return _emit(table, args, lambda fig: draw_clusters(fig, table))


def cmd_search(args: argparse.Namespace) -> int:
    from saedb.cli import _open

    _positive(args.k, "--k")
    _positive(args.latents_k, "--latents-k")
    if is_text_query(args.query):
        return _search_text(args)
    if args.rerank or args.min_similarity is not None or args.latents_k != SEARCH_LATENTS:
        raise ConfigError(
            "--rerank, --min-similarity and --latents-k are for text queries; "
            f"'{args.query}' is latent weights"
        )
    weights = parse_weights(args.query)
    sql = (
        "SELECT * FROM retrieve($weights::STRUCT(latent_id INTEGER, weight DOUBLE)[], "
        "sae := $sae::INTEGER, k := $k::INTEGER, datasets := $datasets::VARCHAR[])"
    )
    with _open(args.store, read_only=True) as store:
        params = {
            "weights": weights,
            "sae": _sae_id(store, args.sae),
            "k": args.k,
            "datasets": parse_names(args.datasets),
        }
        table = store.arrow(sql, params)
    return _emit(table, args, lambda fig: draw_scores(fig, table, args.query))


def _search_text(args: argparse.Namespace) -> int:
    from saedb.query import search_text
    from saedb.query_cli import open_for_query, rerank_config, show_latents

    config = rerank_config(args)
    with open_for_query(args.store) as store:
        chosen, table = search_text(
            store,
            args.query,
            k=args.k,
            datasets=parse_names(args.datasets),
            sae=_sae_id(store, args.sae),
            latents_k=args.latents_k,
            min_similarity=args.min_similarity,
            rerank_config=config,
        )
    show_latents(chosen, args.query)
    return _emit(table, args, lambda fig: draw_scores(fig, table, args.query))


# -- plots -----------------------------------------------------------------------------------


def save_plot(path: str, draw: Callable[[Any], None]) -> None:
    """Draw with ``draw(figure)`` and save a PNG (matplotlib's Agg canvas, no display)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency of the CLI
        from saedb.errors import MissingDependencyError

        raise MissingDependencyError(f"--plot needs matplotlib ({exc})") from exc
    fig = Figure(figsize=(8, 5), layout="constrained")
    draw(fig)
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise StoreError(f"cannot write the plot to {path}: {exc.strerror or exc}") from exc


def wilson(n: int, size: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion n / size."""
    if size <= 0:
        return (0.0, 1.0)
    p = n / size
    denom = 1 + z * z / size
    centre = (p + z * z / (2 * size)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / size + z * z / (4 * size * size))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def draw_diff(fig: Any, table: pa.Table, labels: Sequence[str], top: int = 20) -> None:
    ax = fig.subplots()
    rows = table.slice(0, top).to_pylist()[::-1]  # largest difference on top
    if not rows:
        return _empty(ax, "latents")
    ys = range(len(rows))
    h = 0.4
    for offset, side, label in ((h / 2, "a", labels[0]), (-h / 2, "b", labels[1])):
        freqs = [r[f"freq_{side}"] for r in rows]
        cis = [wilson(r[f"n_{side}"], r[f"size_{side}"]) for r in rows]
        err = [
            [f - lo for f, (lo, _) in zip(freqs, cis, strict=True)],
            [hi - f for f, (_, hi) in zip(freqs, cis, strict=True)],
        ]
        ax.barh([y + offset for y in ys], freqs, height=h, xerr=err, capsize=2, label=label)
    ax.set_yticks(list(ys), [f"latent {r['latent_id']}" for r in rows])
    ax.set_xlabel("share of documents where the latent fired (95% Wilson interval)")
    ax.set_title(f"{labels[0]} vs {labels[1]}")
    ax.legend(loc="lower right")


def draw_npmi(fig: Any, table: pa.Table, max_latents: int = 25) -> None:
    import numpy as np

    ax = fig.subplots()
    rows = table.to_pylist()
    if not rows:
        return _empty(ax, "pairs")
    if "target_latent" in table.column_names:
        pairs = [(r["target_latent"], r["latent_id"], r["npmi"]) for r in rows]
        ylat = list(dict.fromkeys(p[0] for p in pairs))
        xlat = list(dict.fromkeys(p[1] for p in pairs))[:max_latents]
    else:
        pairs = [(r["latent_i"], r["latent_j"], r["npmi"]) for r in rows]
        ylat = list(dict.fromkeys(x for p in pairs for x in p[:2]))[:max_latents]
        xlat = ylat
    grid = np.full((len(ylat), len(xlat)), np.nan)
    for i, j, v in pairs:
        for a, b in ((i, j), (j, i)):
            if a in ylat and b in xlat:
                grid[ylat.index(a), xlat.index(b)] = v
    image = ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(xlat)), [str(x) for x in xlat], rotation=90)
    ax.set_yticks(range(len(ylat)), [str(y) for y in ylat])
    ax.set_xlabel("latent")
    ax.set_ylabel("target latent" if xlat is not ylat else "latent")
    ax.set_title("NPMI of the top pairs (blank: pair not among them)")
    fig.colorbar(image, ax=ax, label="NPMI")


def draw_clusters(fig: Any, table: pa.Table) -> None:
    ax = fig.subplots()
    rows = table.to_pylist()
    if not rows:
        return _empty(ax, "clusters")
    xs = range(len(rows))
    sizes = [r["n_docs"] for r in rows]
    ax.bar(xs, sizes, color=["0.6" if r["cluster"] < 0 else "C0" for r in rows])
    for x, r in zip(xs, rows, strict=True):
        top = ", ".join(str(t) for t in r["top_latents"]) or "-"
        ax.annotate(top, (x, r["n_docs"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [str(r["cluster"]) for r in rows])
    ax.set_xlabel("cluster (-1: none of the latents fired); labels: top latents")
    ax.set_ylabel("documents")
    ax.margins(y=0.15)


def draw_scores(fig: Any, table: pa.Table, query: str) -> None:
    ax = fig.subplots()
    rows = table.to_pylist()[::-1]
    if not rows:
        return _empty(ax, "documents")
    names = [f"{r['dataset']}:{r['external_id']}"[:40] for r in rows]
    ax.barh(range(len(rows)), [r["score"] for r in rows])
    ax.set_yticks(range(len(rows)), names)
    ax.set_xlabel("score: sum of weight x max_act")
    ax.set_title(f"search {query}")
