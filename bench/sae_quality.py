"""Quality of an SAE on held-out text: FVU, L0 and dead latents, the standard SAE metrics.

    python bench/sae_quality.py CORPUS.jsonl [CORPUS2.jsonl ...] [--sae DIR] [--max-tokens N]

Runs the SAE's reader over the corpora exactly as ingestion does (same windows, same content
tokens), encodes every token and reports, per corpus:
- FVU: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, in the
  space the SAE encodes (after its input normalisation, e.g. constant_norm_rescale);
- L0: mean number of active latents per token;
- dead: share of latents that never fire on the corpus; and the share of latents that fire
  in at least one document (what document-level analyses can use).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _paths  # noqa: F401  (drops bench/ from sys.path: see _paths.py)
import torch

from ingest.activations import corpus_texts
from ingest.config import ReaderConfig
from ingest.hooks import parse_hook
from ingest.pipeline import default_sae_dir
from ingest.reader import Reader, resolve_reader
from ingest.sae import load_sae


def evaluate(reader: Reader, sae, texts: list[str], max_tokens: int) -> dict[str, float]:
    sse = 0.0
    s1 = torch.zeros(sae.d_in, dtype=torch.float64)
    s2 = 0.0
    n = 0
    active = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    toks = reader.tokenize(texts, [None] * len(texts))
    with torch.inference_mode():
        for batch in reader.batches(reader.windows(toks)):
            x = reader.forward(batch).hidden
            xp = sae.preprocess(x)  # normalised, minus b_dec when the SAE subtracts it
            if sae.apply_b_dec_to_input:
                xp = xp + sae.b_dec
            f = sae.encode(x)
            recon = sae.decode(f)
            sse += float((xp - recon).double().pow(2).sum())
            s1 += xp.double().sum(0)
            s2 += float(xp.double().pow(2).sum())
            active += int((f > 0).sum())
            fired |= (f > 0).any(0)
            n += len(x)
            if n >= max_tokens:
                break
    var = s2 - float(s1.pow(2).sum()) / n
    return {
        "tokens": n,
        "fvu": sse / var,
        "l0": active / n,
        "dead": 1 - float(fired.float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("corpora", nargs="+", type=Path)
    ap.add_argument("--sae", type=Path, default=default_sae_dir())
    ap.add_argument("--max-tokens", type=int, default=50_000)
    args = ap.parse_args()
    sae = load_sae(args.sae)
    reader_spec = sae.metadata.get("reader") or "builtin:smollm2-135m-instruct"
    reader = Reader(
        resolve_reader(reader_spec), parse_hook(sae.metadata["hook_name"]), ReaderConfig()
    )
    recipe = sae.metadata.get("training", {})
    print(
        f"SAE {args.sae} ({sae.architecture}, {sae.d_in}->{sae.d_sae}, k={sae.k}, "
        f"{sae.normalize_activations}); trained on {recipe.get('n_tokens', '?')} tokens\n"
    )
    print("| corpus | tokens | FVU | L0 | dead latents |")
    print("|---|---:|---:|---:|---:|")
    for path in args.corpora:
        texts = list(corpus_texts([path]))
        m = evaluate(reader, sae, texts, args.max_tokens)
        print(
            f"| {path.name} | {m['tokens']:,} | {m['fvu']:.3f} | {m['l0']:.1f} | {m['dead']:.1%} |",
            flush=True,
        )
    if recipe.get("final_metrics"):
        print(
            "\nheld-out split of the training corpus (from the recipe): "
            + json.dumps({k: round(v, 4) for k, v in recipe["final_metrics"].items()})
        )


if __name__ == "__main__":
    main()
