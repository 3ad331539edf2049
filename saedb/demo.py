"""saedb demo: the main job end to end on the embedded default.

Creates demo.duckdb with the default reader and SAE, ingests the bundled fortunes corpus
(one dataset per fortune category), then prints the latents whose frequency differs most
between two categories, each with its label (from the offline labeler, run on just those
latents), the tokens where it peaks most often and its strongest example with the peak token
marked ``<<like this>>``. Re-running it reuses what is stored.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from saedb.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "fortunes"

PEAK_TOKENS_SQL = """
SELECT lower(trim(substring(d.text, l.max_char_start + 1, l.max_char_end - l.max_char_start)))
         AS token, count(*) AS n
FROM doc_latents l JOIN documents d USING (doc_id)
WHERE l.sae_id = ? AND l.latent_id = ? AND d.dataset_id = ?
GROUP BY ALL ORDER BY n DESC, token LIMIT 5
"""

EXAMPLE_SQL = """
SELECT mark_span(d.text, l.max_char_start, l.max_char_end, 90) AS snippet
FROM doc_latents l JOIN documents d USING (doc_id)
WHERE l.sae_id = ? AND l.latent_id = ? AND d.dataset_id = ?
ORDER BY l.max_act DESC, l.doc_id LIMIT 1
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="ingest the bundled corpus and show what differs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", default="demo.duckdb", help="store to create (default: demo.duckdb)")
    p.add_argument(
        "--data",
        type=Path,
        default=DATA_DIR,
        help="directory of <dataset>.jsonl files (default: the bundled fortunes)",
    )
    p.add_argument("--a", default="computers", help="first dataset to compare (default: computers)")
    p.add_argument("--b", default="people", help="second dataset to compare (default: people)")
    p.add_argument("--top", type=int, default=8, help="latents to show each way (default: 8)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saedb.errors import require_ingest_extra

    require_ingest_extra("saedb demo")
    from ingest.config import IngestConfig
    from ingest.pipeline import init_store, run_ingest

    files = sorted(args.data.glob("*.jsonl"))
    if not files:
        raise ConfigError(f"no .jsonl files in {args.data}; pass --data DIR")
    names = {f.stem for f in files}
    for name in (args.a, args.b):
        if name not in names:
            raise ConfigError(
                f"--a/--b: no dataset '{name}' in {args.data} "
                f"(there are: {', '.join(sorted(names))})"
            )
    t0 = time.perf_counter()
    rec = init_store(args.store)
    from saedb.store import Store

    with Store(args.store) as store:
        for f in files:
            res = run_ingest(
                store, IngestConfig(source=str(f), dataset=f.stem, progress=not args.quiet)
            )
            print(
                f"  {f.stem:<10} {res.n_docs:>5} new documents, {res.n_skipped:>5} already "
                f"stored, {res.n_tokens:>7,} tokens, {res.n_bad} bad rows",
                file=sys.stderr,
            )
        print(f"ingested in {time.perf_counter() - t0:.0f}s -> {args.store}\n", file=sys.stderr)
        _report(store, rec.sae_id, args.a, args.b, args.top)
        _report(store, rec.sae_id, args.b, args.a, args.top)
    print(
        f"Explore further: saedb sql {args.store} \"SELECT * FROM diff('{args.a}', "
        f"'{args.b}') LIMIT 20\""
    )
    return 0


def _report(store, sae_id: int, a: str, b: str, top: int) -> None:
    rows = store.sql(
        "SELECT latent_id, freq_a, freq_b, q_value FROM diff(?, ?, sae := ?) "
        "WHERE q_value < 0.05 ORDER BY difference DESC LIMIT ?",
        [a, b, sae_id, top],
    )
    ds = store.dataset_id(a)
    print(f"== Latents more frequent in '{a}' than in '{b}' ==")
    if rows.empty:
        print("  (none significant at q < 0.05)\n")
        return
    from saedb.labels import label_offline

    ids = [int(i) for i in rows.latent_id]
    label_offline(store, ids, sae=sae_id, progress=False)  # skips latents already labelled
    labels = store.sql(
        "SELECT latent_id, label FROM current_labels WHERE sae_id = ? AND list_contains(?, "
        "latent_id)",
        [sae_id, ids],
    )
    label_of = dict(zip(labels.latent_id, labels.label, strict=True))
    for r in rows.itertuples():
        tokens = store.sql(PEAK_TOKENS_SQL, [sae_id, int(r.latent_id), ds])
        peak = ", ".join(f"{t!r}x{n}" for t, n in zip(tokens.token, tokens.n, strict=True))
        ex = store.sql(EXAMPLE_SQL, [sae_id, int(r.latent_id), ds])
        snippet = " ".join(str(ex.snippet[0]).split()) if not ex.empty else ""
        print(
            f"latent {int(r.latent_id):>5}  {a} {r.freq_a:6.1%} vs {b} {r.freq_b:6.1%}  "
            f"q={r.q_value:.1e}  label: {label_of.get(int(r.latent_id))}"
        )
        print(f"      peaks on: {peak}")
        print(textwrap.indent(textwrap.fill(snippet, 96), "      "))
    print()
