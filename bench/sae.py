"""SAE encode throughput per architecture, saedb side by side with sae-lens on the same weights.

    python bench/sae.py [--d-in 576,2048,4096] [--d-sae 4096,16384,65536]
                        [--arch standard,topk,abstopk,jumprelu,gated] [--reps 3] [--min-seconds 2]
                        [--threads N] [--tokens N] [--device cpu|cuda] [--dense]

For every (d_in, d_sae) it draws one set of random float32 weights, builds each architecture
in sae-lens (``SAE.from_dict``) and in saedb on the *same* tensors (no copy), and times, in
the same process and interleaved rep by rep:

- ``saedb sparse``: ``SAE.encode_sparse`` (the COO that ingestion pools; what we optimise),
- ``saedb dense``: ``SAE.encode`` (the dense ``[n, d_sae]`` result; with ``--dense``),
- ``sae-lens``: ``sae.encode`` under ``torch.inference_mode`` (dense).

Tokens per call: ``--tokens``, default 512 (256 when d_in x d_sae > 2^24, to keep the run
short). The random weights leave ~2% of the latents positive per token (ReLU, jumprelu, gated),
the order of a trained SAE's L0. Each figure is the best of at least ``--reps`` calls (more, up
to 15, until each variant ran ``--min-seconds``) after one warm-up, the variants interleaved in
alternating order (the machine is shared, so the best is the least disturbed). The speed ratio
is given on wall time and on CPU time of this process (best of each): on a machine that other
work shares, CPU time is the steadier measure of which code does less work. ``same`` says
whether saedb's nonzero (token, latent) pairs equal sae-lens's on that input. batchtopk /
matryoshka SAEs encode as jumprelu at inference, so the jumprelu row stands for them.
Combinations whose weights would not fit in half the available memory are skipped, and the table
says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import _paths  # noqa: F401  (drops bench/ from sys.path: see _paths.py)
import torch

from ingest.sae import SAE

ARCHS = ("standard", "topk", "abstopk", "jumprelu", "gated")
K = 64


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 34


def weights(d_in: int, d_sae: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    # h = x' W_enc is ~N(0, 1) per latent for x ~ N(0, 1); a bias of -2 leaves ~2% of the
    # latents positive, the order of a trained SAE's L0 (e.g. 32-100 of 4096)
    return {
        "W_enc": randn(d_in, d_sae).div_(d_in**0.5),
        "W_dec": randn(d_sae, d_in).div_(d_in**0.5),
        "b_dec": randn(d_in).mul_(0.1),
        "b_enc": randn(d_sae).mul_(0.1).sub_(2.0),
        "threshold": randn(d_sae).abs_().mul_(0.1),
        "b_gate": randn(d_sae).mul_(0.1).sub_(2.0),
        "r_mag": randn(d_sae).mul_(0.1),
        "b_mag": randn(d_sae).mul_(0.1),
    }


NEEDS = {
    "standard": ("b_enc",),
    "topk": ("b_enc",),
    "abstopk": ("b_enc",),
    "jumprelu": ("b_enc", "threshold"),
    "gated": ("b_gate", "r_mag", "b_mag"),
}


def build_pair(arch: str, w: dict[str, torch.Tensor], device: str):
    """(saedb SAE, sae-lens SAE) of ``arch`` sharing the tensors of ``w``."""
    import sae_lens

    d_in, d_sae = w["W_enc"].shape
    cfg = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": device,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.0.hook_resid_post"},
    }
    k = {"k": K} if arch in ("topk", "abstopk") else {}
    with torch.device("meta"):  # no time spent initialising weights we replace
        ref = sae_lens.SAE.from_dict({**cfg, **k})
    names = ("W_enc", "W_dec", "b_dec", *NEEDS[arch])
    for name in names:
        setattr(ref, name, torch.nn.Parameter(w[name], requires_grad=False))
    ref.device = torch.device(device)
    ref.eval()
    ours = SAE(architecture=arch, **{n: w[n] for n in names}, **k)
    return ours, ref


def time_call(fn, x: torch.Tensor, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        fn(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c


def same_nonzeros(ours: SAE, ref, x: torch.Tensor) -> str:
    """``yes`` when saedb's nonzero (token, latent) pairs equal sae-lens's, else how many
    differ and the largest activation among them (BLAS may round an ``h`` within an ulp of a
    threshold differently from call to call, under a varying number of threads)."""
    with torch.inference_mode():
        dense = ref.encode(x)
        tok, lat, _ = ours.encode_sparse(x)
        mine = torch.zeros_like(dense)
        mine[tok, lat] = 1
        diff = (mine != 0) != (dense != 0)
    if not bool(diff.any()):
        return "yes"
    worst = float(dense[diff].abs().max()) if bool((dense[diff] != 0).any()) else 0.0
    with torch.inference_mode():
        own = ours.encode(x)[diff].abs().max()
    return f"{int(diff.sum())} differ, max |f| {max(worst, float(own)):.1e}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--d-in", default="576,2048,4096")
    ap.add_argument("--d-sae", default="4096,16384,65536")
    ap.add_argument("--arch", default=",".join(ARCHS))
    ap.add_argument("--reps", type=int, default=3, help="calls per figure, at least")
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="...and more (up to 15) until each variant has run this long",
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dense", action="store_true", help="also time saedb's dense encode")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    import sae_lens

    print(
        f"# SAE encode, float32, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"sae-lens {sae_lens.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")
    )
    print(
        f"# best of >= {args.reps} calls (and >= {args.min_seconds:g} s) per variant after a "
        f"warm-up, variants interleaved; tok/s = tokens per second; k = {K}"
    )
    head = (
        "| d_in | d_sae | arch | tokens | saedb sparse tok/s | saedb dense tok/s | "
        "sae-lens tok/s | saedb / sae-lens (wall) | saedb / sae-lens (CPU time) | same |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for d_in in map(int, args.d_in.split(",")):
        for d_sae in map(int, args.d_sae.split(",")):
            need = 2 * d_in * d_sae * 4 * 2  # W_enc + W_dec, plus room for a copy
            if device == "cpu" and need > available_bytes() // 2:
                print(
                    f"| {d_in} | {d_sae} | all | - | skipped: weights need "
                    f"{need / 2**30:.1f} GiB, over half the available memory | | | | | |"
                )
                continue
            n = args.tokens or (256 if d_in * d_sae > 1 << 24 else 512)
            w = weights(d_in, d_sae, device)
            x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1)).to(device)
            for arch in args.arch.split(","):
                ours, ref = build_pair(arch, w, device)
                fns = {"sparse": ours.encode_sparse, "ref": ref.encode}
                if args.dense:
                    fns["dense"] = ours.encode
                best = dict.fromkeys(fns, float("inf"))
                best_cpu = dict.fromkeys(fns, float("inf"))
                spent = dict.fromkeys(fns, 0.0)
                for fn in fns.values():  # warm-up
                    time_call(fn, x, device)
                rep = 0
                while rep < args.reps or (min(spent.values()) < args.min_seconds and rep < 15):
                    order = list(fns.items())
                    for name, fn in order if rep % 2 == 0 else order[::-1]:
                        took, cpu = time_call(fn, x, device)
                        best[name] = min(best[name], took)
                        best_cpu[name] = min(best_cpu[name], cpu)
                        spent[name] += took
                    rep += 1
                same = same_nonzeros(ours, ref, x)
                tps = {name: n / s for name, s in best.items()}
                dense = f"{tps['dense']:,.0f}" if args.dense else "-"
                print(
                    f"| {d_in} | {d_sae} | {arch} | {n} | {tps['sparse']:,.0f} | "
                    f"{dense} | {tps['ref']:,.0f} | "
                    f"{tps['sparse'] / tps['ref']:.2f} | "
                    f"{best_cpu['ref'] / best_cpu['sparse']:.2f} | {same} |",
                    flush=True,
                )
                del ours, ref
            del w


if __name__ == "__main__":
    main()
