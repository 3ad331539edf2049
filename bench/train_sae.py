"""Training speed and quality of the three train-sae architectures on the same activations.

    python bench/train_sae.py ACTS.npy [--rows N] [--epochs E] [--d-sae D] [--k K]
    python bench/train_sae.py --random 200000x576     # no activations file: Gaussian rows

Trains topk, batchtopk and matryoshka one after the other through the streaming path the CLI
uses (memory-mapped .npy in shuffled blocks -> shuffle buffer -> steps), with the same
settings, and prints per architecture: steps, training tokens, wall seconds, tokens/s, CPU
seconds (all threads; less affected by a busy machine than wall time), the peak resident
memory growth (the memory-mapped rows read count too), and on the held-out rows FVU, L0
(with the saved SAE: jumprelu with its threshold for batchtopk / matryoshka) and the share
of latents that never fire.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import _paths  # noqa: F401  (drops bench/ from sys.path: see _paths.py)
import numpy as np
import torch

from ingest.activations import ArraySource
from ingest.config import TrainConfig
from ingest.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("acts", nargs="?", help=".npy activations [N, d_in]")
    ap.add_argument("--random", help="ROWSxD_IN Gaussian rows instead of a file")
    ap.add_argument("--rows", type=int, default=None, help="use the first N rows")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--architectures", default="topk,batchtopk,matryoshka")
    args = ap.parse_args()
    if args.random:
        n, d = (int(v) for v in args.random.split("x"))
        acts = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
        what = f"random {n}x{d}"
    else:
        acts = np.load(args.acts, mmap_mode="r")
        what = args.acts
    if args.rows:
        acts = acts[: args.rows]
    print(
        f"{what}: {acts.shape[0]:,} rows x {acts.shape[1]}, d_sae {args.d_sae}, k {args.k}, "
        f"batch {args.batch_size}, {args.epochs} epoch(s); {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # import its modules before timing
    head = f"{'architecture':<12} {'steps':>6} {'tokens':>10} {'s':>7} {'tok/s':>8} "
    print(head + f"{'CPU s':>7} {'+RSS MB':>8} {'FVU':>7} {'L0':>6} {'dead':>6}")
    for arch in args.architectures.split(","):
        cfg = TrainConfig(
            architecture=arch,
            d_sae=args.d_sae,
            k=args.k,
            batch_size=args.batch_size,
            epochs=args.epochs,
        )
        src = ArraySource(acts, val_fraction=cfg.val_fraction, seed=cfg.seed)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0, c0 = time.perf_counter(), time.process_time()
        res = train(src, cfg, metadata={"model_name": "bench", "hook_name": "x"}, progress=False)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        tr = res.sae.metadata["training"]
        m = res.final
        print(
            f"{arch:<12} {tr['steps']:>6} {tr['tokens_trained']:>10,} {secs:>7.1f} "
            f"{tr['tokens_trained'] / secs:>8,.0f} {cpu:>7.1f} {rss:>8.0f} {m['fvu']:>7.4f} "
            f"{m['l0']:>6.1f} {m['dead_fraction']:>6.1%}"
        )
        if "fvu_prefixes" in m:
            print("  matryoshka prefix FVU: " + ", ".join(
                f"{p}: {v:.4f}" for p, v in m["fvu_prefixes"].items()
            ))  # fmt: skip


if __name__ == "__main__":
    main()
