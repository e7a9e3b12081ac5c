"""bf16 against fp32: scores and NIG on the real all-MiniLM-L6-v2 body (under a seeded head).

Usage: ``python benchmarks/precision.py [--steps 16,50]``

Prints relative L2 errors ``‖bf16 − fp32‖ / ‖fp32‖`` of the scores and of per-neuron / per-token NIG,
and splits the NIG error into the part due to rounding the weights to bf16 (a float32 model with
bf16-rounded weights) and the part due to bf16 computation. Figures in docs/nig.md ("Low precision").
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import minilm_cross_encoder_dir  # noqa: E402

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.attribution import NeuronIntegratedGradients  # noqa: E402

QUERIES = [
    "what is a neuron",
    "how do black holes form",
    "best way to cook rice",
    "python list comprehension",
]
DOCS = [
    "A neuron is an electrically excitable cell that communicates with other cells via synapses.",
    "Black holes form when massive stars collapse at the end of their life cycle.",
    "Rinse the rice, add water in a 1:2 ratio and simmer covered for about twenty minutes.",
    "List comprehensions give a concise way to build lists: [x * x for x in range(10)].",
]


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="16,50", help="comma-separated n_steps values (default 16,50)")
    args = ap.parse_args()
    folder = minilm_cross_encoder_dir()
    f32 = HookedCrossEncoder.from_pretrained(folder)
    b16 = HookedCrossEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    rounded = HookedCrossEncoder.from_pretrained(folder)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    s32 = f32.score(QUERIES, DOCS)
    print(
        f"scores: bf16 {rel_l2(b16.score(QUERIES, DOCS), s32):.4f}, rounded weights (fp32 compute) "
        f"{rel_l2(rounded.score(QUERIES, DOCS), s32):.4f}"
    )
    batch = f32.tokenize(QUERIES, DOCS)
    for n in (int(s) for s in args.steps.split(",")):
        a32, a16, ar = (NeuronIntegratedGradients(m).attribute(batch, n_steps=n) for m in (f32, b16, rounded))
        layers = ", ".join(
            f"{rel_l2(a16.per_neuron()[:, l], a32.per_neuron()[:, l]):.4f}" for l in a32.layers
        )
        print(
            f"n_steps={n}: per-neuron NIG bf16 {rel_l2(a16.per_neuron(), a32.per_neuron()):.4f} "
            f"(weights rounded only {rel_l2(ar.per_neuron(), a32.per_neuron()):.4f}, bf16 compute on "
            f"rounded weights {rel_l2(a16.per_neuron(), ar.per_neuron()):.4f}); per-token "
            f"{rel_l2(a16.values, a32.values):.4f}; per layer [{layers}]"
        )


if __name__ == "__main__":
    main()
