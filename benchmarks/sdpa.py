"""Attention paths side by side: SDPA (``set_attention_impl("auto")``, the default) vs the explicit pattern.

Usage: ``python benchmarks/sdpa.py [--pairs 32] [--tokens 128,256] [--nig-pairs 2] [--steps 16] [--repeats 7]
[--dtype float32] [--device cpu]``

On the MiniLM-L6 cross-encoder (real all-MiniLM-L6-v2 body), for each length: scoring ``--pairs`` pairs
(``inference_mode``) and NIG of ``--nig-pairs`` pairs at ``--steps`` steps, each run with both attention
paths alternately (A B A B ...) ``--repeats`` times; prints the minimum time of each (the machine may be
shared: the minimum is the least disturbed run) and the ratio explicit / auto (> 1: SDPA is faster).
Figures in docs/benchmarks.md ("Attention: SDPA vs explicit").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import minilm_cross_encoder_dir, synthetic_pairs  # noqa: E402

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.attribution import NeuronIntegratedGradients  # noqa: E402


def min_times(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Minimum seconds of each function over ``repeats`` alternating runs (after one warm-up each)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--tokens", default="128,256", help="comma-separated pair lengths")
    ap.add_argument("--nig-pairs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = HookedCrossEncoder.from_pretrained(minilm_cross_encoder_dir(), dtype=args.dtype, device=device)
    print(
        f"MiniLM-L6 cross-encoder, {model.cfg.dtype}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; min of {args.repeats} alternating runs"
    )
    print(f"{'what':<34} {'auto (SDPA)':>12} {'explicit':>12} {'explicit/auto':>14}")
    for n_tok in (int(t) for t in args.tokens.split(",")):
        q, d = synthetic_pairs(args.pairs, n_tok)
        batch = model.tokenize(q, d, max_length=n_tok)
        nig_batch = batch.select(list(range(args.nig_pairs)))

        def with_impl(impl: str, fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                model.set_attention_impl(impl)
                return fn()

            return run

        def score(batch: object = batch) -> object:
            with torch.inference_mode():
                return model(batch)

        def nig(batch: object = nig_batch) -> object:
            return NeuronIntegratedGradients(model).attribute(batch, n_steps=args.steps, reduce="neuron")

        for what, fn in (
            (f"score {args.pairs} pairs x {n_tok} tok", score),
            (f"NIG {args.nig_pairs} pairs x {n_tok} tok x {args.steps} st", nig),
        ):
            t = min_times({impl: with_impl(impl, fn) for impl in ("auto", "explicit")}, args.repeats, device)
            print(
                f"{what:<34} {t['auto'] * 1e3:9.1f} ms {t['explicit'] * 1e3:9.1f} ms "
                f"{t['explicit'] / t['auto']:14.3f}"
            )
    model.set_attention_impl("auto")


if __name__ == "__main__":
    main()
