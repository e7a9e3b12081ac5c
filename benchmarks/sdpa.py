"""Attention paths side by side: SDPA (``set_attention_impl("auto")``, the default) vs the explicit pattern.

Usage: ``python benchmarks/sdpa.py [--pairs 32] [--tokens 128,256] [--nig-pairs 2] [--steps 16] [--repeats 7]
[--dtype float32] [--device cpu]``

On the MiniLM-L6 cross-encoder (real all-MiniLM-L6-v2 body), for each length: scoring ``--pairs`` pairs
(``inference_mode``) and NIG of ``--nig-pairs`` pairs at ``--steps`` steps, each run with both attention
paths alternately (A B A B ...) ``--repeats`` times after two warm-up rounds; prints each path's median
[min - max] (``_common.print_times``), the ratio of the medians explicit / auto (> 1: SDPA is faster) with
the range of the per-round ratios, and the largest difference between the two paths' outputs (scores,
attributions). Figures in docs/benchmarks.md ("Attention: SDPA vs explicit").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import (
    alternate,
    header,
    minilm_cross_encoder_dir,
    print_diff,
    print_times,
    repeats,
    synthetic_pairs,
)  # noqa: E402

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.attribution import NeuronIntegratedGradients  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--tokens", default="128,256", help="comma-separated pair lengths")
    ap.add_argument("--nig-pairs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=repeats, default=7)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = HookedCrossEncoder.from_pretrained(minilm_cross_encoder_dir(), dtype=args.dtype, device=device)
    header(
        f"MiniLM-L6 cross-encoder, {model.cfg.dtype}, {device}; {args.repeats} alternated rounds after 2 warm-up rounds"
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for n_tok in (int(t) for t in args.tokens.split(",")):
        q, d = synthetic_pairs(args.pairs, n_tok)
        batch = model.tokenize(q, d, max_length=n_tok)
        nig_batch = batch.select(list(range(args.nig_pairs)))

        def score(batch: object = batch) -> torch.Tensor:
            with torch.inference_mode():
                return model(batch)

        def nig(batch: object = nig_batch) -> torch.Tensor:
            return (
                NeuronIntegratedGradients(model).attribute(batch, n_steps=args.steps, reduce="neuron").values
            )

        for what, fn in (
            (f"score {args.pairs} pairs x {n_tok} tok", score),
            (f"NIG {args.nig_pairs} pairs x {n_tok} tok x {args.steps} st", nig),
        ):
            out: dict[str, torch.Tensor] = {}

            def with_impl(
                impl: str, fn: Callable[[], torch.Tensor] = fn, out: dict = out
            ) -> Callable[[], None]:
                def run() -> None:
                    model.set_attention_impl(impl)
                    sync()
                    out[impl] = fn()
                    sync()

                return run

            print(f"{what}:")
            times = alternate(
                {impl: with_impl(impl) for impl in ("auto", "explicit")}, repeats=args.repeats, warmup=2
            )
            print_times(times, "auto")
            print_diff("explicit - auto", out["explicit"], out["auto"])
    model.set_attention_impl("auto")


if __name__ == "__main__":
    main()
