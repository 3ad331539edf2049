"""The ``saedb`` command line.

Every command takes the store path first. Errors from the library become one line on stderr
(``error: ...``) and a non-zero exit, here and nowhere else. Commands that only read the store
open it read-only and never load torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb

from saedb import __version__
from saedb.errors import ConfigError, SaedbError
from saedb.output import FORMATS, render

EPILOG = """\
examples:
  saedb init corpus.duckdb
  saedb ingest corpus.duckdb reviews.jsonl --dataset reviews
  saedb sql corpus.duckdb "SELECT * FROM diff('spam', 'ham') LIMIT 10"
  echo "SELECT count(*) FROM documents" | saedb sql corpus.duckdb -
  saedb info corpus.duckdb
  saedb diff corpus.duckdb spam ham --plot diff.png
  saedb search corpus.duckdb 12,40:2.0,77
  saedb label corpus.duckdb --top-diff spam ham
"""


def _format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        default="table",
        help="output format (default: table; csv/json/nl never shorten values)",
    )


def build_parser() -> argparse.ArgumentParser:
    from ingest.config import IngestConfig, TrainConfig, TrainSaeConfig  # torch-free
    from saedb.options import add_options

    ap = argparse.ArgumentParser(
        prog="saedb",
        description="SAE embeddings of text corpora, stored and analysed in DuckDB.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"saedb {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "init",
        help="create a store with a reader model and an SAE",
        description="Create a store (or add an SAE to an existing one). Without "
        "options it uses the embedded default: SmolLM2-135M-Instruct and the "
        "TopK SAE that ships with saedb.",
    )
    p.add_argument("store", help="path of the DuckDB file")
    p.add_argument(
        "--reader",
        default=None,
        help="reader model: a local Hugging Face model directory "
        "(default: builtin:smollm2-135m-instruct)",
    )
    p.add_argument(
        "--sae",
        default=None,
        help="directory of an SAE in SAELens format (default: the builtin SAE)",
    )
    p.add_argument("--sae-name", default=None, help="name to record the SAE under")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "ingest",
        help="encode a JSONL/CSV/Parquet file into a dataset",
        description="Read documents, run them through the reader and SAE, and "
        "store their pooled latents. Running it again adds nothing; after a "
        "crash it resumes where it stopped. Bad rows are skipped, counted and "
        "kept in the bad_rows table (--strict stops at the first).",
    )
    p.add_argument("store", help="path of the DuckDB file (create it with saedb init)")
    p.add_argument("source", help="JSONL, CSV/TSV or Parquet file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_options(p, IngestConfig, skip=("source", "progress"))
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "sql",
        help="run SQL against the store",
        description="Run one SQL statement (read-only). Pass - to read it from "
        "stdin. Named parameters: --param name=value, used as $name.",
    )
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument("query", help="SQL text, or - for stdin")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind a named parameter $NAME (repeatable)",
    )
    p.add_argument("--write", action="store_true", help="open the store read-write")
    _format_option(p)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("info", help="datasets, SAEs and ingest runs in a store")
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    _format_option(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bad-rows", help="input rows that could not be ingested")
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.add_argument("--run", type=int, default=None, help="only this ingest run")
    _format_option(p)
    p.set_defaults(func=cmd_bad_rows)

    p = sub.add_parser("optimize", help="re-cluster doc_latents by latent for fast analyses")
    p.add_argument("store", help="path of the store (a DuckDB file made by saedb init)")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser(
        "train-sae",
        help="train a TopK, BatchTopK or Matryoshka SAE on a reader's activations",
        description="Stream the reader's residual-stream activations at a layer over "
        "corpus files or a store's documents through a shuffle buffer, train a TopK, "
        "BatchTopK or Matryoshka SAE with the AuxK loss against dead latents, report "
        "FVU / L0 / dead latents per epoch, checkpoint (--resume continues) and save it "
        "in SAELens format.",
    )
    p.add_argument(
        "corpus",
        nargs="*",
        help="JSONL/CSV/Parquet files with a text field "
        "(not needed when --activations names an existing file)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_options(p, TrainSaeConfig, skip=("corpus", "progress"))
    add_options(p, TrainConfig)
    p.set_defaults(func=cmd_train_sae)

    from saedb import analysis_cli, demo, label_cli

    analysis_cli.add_parsers(sub, _format_option)
    __import__("saedb.query_cli").query_cli.add_parsers(sub, _format_option)
    __import__("saedb.export_cli").export_cli.add_parsers(sub)
    __import__("saedb.serve_cli").serve_cli.add_parser(sub)
    label_cli.add_parser(sub)
    __import__("saedb.sae_cli").sae_cli.add_parser(sub, _format_option)
    demo.add_parser(sub)
    return ap


def _params(pairs: Sequence[str]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param expects NAME=VALUE, got '{pair}'")
        out[name] = value
    return out or None


def _require_store(path: str) -> None:
    """Commands other than init never create a store by accident."""
    from saedb.errors import StoreError

    if not Path(path).exists():
        raise StoreError(f"no store at {path}; create it with: saedb init {path}")


def cmd_init(args: argparse.Namespace) -> int:
    from saedb.errors import require_ingest_extra

    require_ingest_extra("saedb init")
    from ingest.pipeline import init_store

    rec = init_store(args.store, reader=args.reader, sae=args.sae, sae_name=args.sae_name)
    print(
        f"{args.store}: SAE '{rec.name}' (id {rec.sae_id}) on {rec.reader_model} "
        f"{rec.hook_name}, {rec.architecture} {rec.d_in}->{rec.d_sae}"
    )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from saedb.errors import require_ingest_extra

    require_ingest_extra("saedb ingest")
    from ingest.config import IngestConfig
    from ingest.pipeline import run_ingest, summarize
    from saedb.options import build
    from saedb.server.ingest_channel import open_for_ingest  # through saedb serve if one runs

    _require_store(args.store)
    cfg = build(IngestConfig, args, source=args.source, progress=not args.quiet)
    with open_for_ingest(args.store) as store:
        result = run_ingest(store, cfg)
    summary = summarize(result)
    print(
        json.dumps(summary)
        if args.quiet
        else f"ingested {result.n_docs} documents ({result.n_tokens:,} tokens) into "
        f"'{cfg.dataset}' in {result.seconds:.1f}s ({result.tokens_per_second:,.0f} tok/s); "
        f"{result.n_skipped} already there, {result.n_bad} bad rows"
    )
    for line in result.bad_examples:
        print(f"  bad row: {line}", file=sys.stderr)
    if result.n_bad > len(result.bad_examples):
        print(
            f"  ... see all with: saedb bad-rows {args.store} --run {result.run_id}",
            file=sys.stderr,
        )
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    from saedb.errors import require_ingest_extra

    require_ingest_extra("saedb train-sae")
    from ingest.config import TrainConfig, TrainSaeConfig
    from ingest.train_sae import train_sae
    from saedb.options import build

    cfg = build(TrainSaeConfig, args, corpus=list(args.corpus), progress=not args.quiet)
    history = train_sae(cfg, build(TrainConfig, args))
    last = history[-1]
    print(
        f"saved {cfg.out}: FVU {last['fvu']:.3f}, L0 {last['l0']:.1f}, "
        f"dead {last['dead_fraction']:.1%}"
    )
    return 0


def _open(path: str, *, read_only: bool):
    """The store, for a command whose results go to stdout."""
    from saedb.store import Store

    store = Store(path, read_only=read_only)
    # DuckDB draws its progress bar on stdout (after 2 s), where it would mix into the results.
    store.con.execute("SET enable_progress_bar = false")
    return store


def cmd_sql(args: argparse.Namespace) -> int:
    query = sys.stdin.read() if args.query == "-" else args.query
    if not query.strip():
        raise ConfigError("no SQL given (empty query)")
    with _open(args.store, read_only=not args.write) as store:
        table = store.arrow(query, _params(args.param))
    sys.stdout.write(render(table, args.format))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args.store, read_only=True) as store:
        sections = {
            "datasets": """
                SELECT d.dataset_id, d.name, count(doc.doc_id) AS documents,
                       coalesce(sum(doc.n_tokens), 0) AS tokens, d.description
                FROM datasets d LEFT JOIN documents doc USING (dataset_id)
                GROUP BY ALL ORDER BY d.dataset_id""",
            "saes": """
                SELECT sae_id, name, reader_model, hook_name, architecture, d_in, d_sae,
                       left(weights_sha256, 12) AS sha256
                FROM saes ORDER BY sae_id""",
            "ingest runs": """
                SELECT run_id, status, n_docs, n_tokens, n_bad_rows, n_skipped,
                       config->>'$.ingest.source' AS source,
                       config->>'$.ingest.dataset' AS dataset, started_at, finished_at, error
                FROM ingest_runs ORDER BY run_id""",
        }
        tables = {title: store.arrow(q) for title, q in sections.items()}
    if args.format == "json":  # one JSON document: {"datasets": [...], "saes": [...], ...}
        parts = [f'"{title}": {render(t, "json").strip()}' for title, t in tables.items()]
        sys.stdout.write("{\n" + ",\n".join(parts) + "\n}\n")
        return 0
    for title, t in tables.items():
        if args.format == "table":
            print(f"# {title}")
        elif args.format == "csv":
            print(f"# {title}")
        sys.stdout.write(render(t, args.format))
    return 0


def cmd_bad_rows(args: argparse.Namespace) -> int:
    with _open(args.store, read_only=True) as store:
        q = "SELECT run_id, source, line, error, raw FROM bad_rows"
        params = None
        if args.run is not None:
            q += " WHERE run_id = ?"
            params = [args.run]
        sys.stdout.write(
            render(store.arrow(q + " ORDER BY run_id, source, line", params), args.format)
        )
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from saedb.store import Store

    _require_store(args.store)
    with Store(args.store) as store:
        store.optimize()
    print(f"{args.store}: doc_latents re-clustered by (sae_id, latent_id, doc_id)")
    return 0


def _one_line(message: str) -> str:
    """DuckDB's multi-line messages on one line: the caret lines under ``LINE 1: ...`` only
    make sense in a monospaced block, so they go; every other line is kept."""
    out = ""
    for line in (ln.strip() for ln in message.splitlines()):
        if line and set(line) != {"^"}:
            out += (" " if out.endswith((".", ":", "!")) else "; " if out else "") + line
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SaedbError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except duckdb.Error as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # DuckDB 2.0 reports Ctrl-C during a query this way
        if str(exc) != "Query interrupted":
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `saedb sql ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
