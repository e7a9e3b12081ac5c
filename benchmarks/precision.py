"""Low precision against fp32: scores, NIG, ablation and patching on the real all-MiniLM-L6-v2 body.

Usage: ``python benchmarks/precision.py [--steps 16,50] [--dtypes bf16,fp16,autocast-bf16,autocast-fp16]``

For each precision (a model loaded with ``dtype=``, or the float32 model under ``torch.autocast``)
prints relative L2 errors ``‖low − fp32‖ / ‖fp32‖`` (under a seeded head, 4 pairs) of:

- the scores;
- NIG per neuron (``per_neuron()``) and per token (``values``) at each ``--steps``;
- the scores under a baseline ablation of 1 % of the neurons, and the ablation effect
  (ablated − clean);
- patched scores of a TFC1 perturbation (``resid_pre`` and ``heads``, denoising) and the patching
  effect (patched − base, ``metric="raw"``), also as its largest absolute error over the largest score
  (an effect below it is rounding noise).

For bf16 it also splits the NIG error into the part due to rounding the weights to bf16 (a float32
model with bf16-rounded weights) and the part due to bf16 computation. Figures in docs/nig.md
("Low precision"); the bounds tested in tests/test_gpu_path.py are about twice these.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import minilm_cross_encoder_dir  # noqa: E402

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.attribution import NeuronIntegratedGradients  # noqa: E402
from mechir_nig.interventions import ablate, perturb  # noqa: E402
from mechir_nig.interventions.patching import patch  # noqa: E402
from mechir_nig.sets import NeuronSet  # noqa: E402

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
PRECISIONS = {
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "autocast-bf16": (torch.bfloat16, True),
    "autocast-fp16": (torch.float16, True),
}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def ablation_set(model: HookedCrossEncoder, fraction: float = 0.01, seed: int = 0) -> NeuronSet:
    """``fraction`` of all MLP neurons, drawn with a seed."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(cfg.n_layers * cfg.d_mlp, generator=g)[: int(fraction * cfg.n_layers * cfg.d_mlp)]
    pairs = [(int(i) // cfg.d_mlp, int(i) % cfg.d_mlp) for i in flat]
    return NeuronSet(pairs, n_layers=cfg.n_layers, d_mlp=cfg.d_mlp)


def measure(model: HookedCrossEncoder, autocast: torch.dtype | None, steps: list[int]) -> dict:
    """Scores, NIG, ablation and patching of ``model`` (under ``autocast`` when given)."""
    ctx = torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext()
    out: dict = {}
    with ctx:
        out["scores"] = model.score(QUERIES, DOCS)
        batch = model.tokenize(QUERIES, DOCS)
        for n in steps:
            out["nig", n] = NeuronIntegratedGradients(model).attribute(batch, n_steps=n)
        with ablate(model, ablation_set(model), mode="baseline") as ab:
            out["ablated"] = ab.score(QUERIES, DOCS)
        aligned = perturb.align(model, QUERIES, DOCS, lambda q, d: perturb.tfc1(q, d, where="start"))
        out["patch"] = patch(model, aligned, sites=["resid_pre", "heads"], metric="raw")
    return out


def report(name: str, low: dict, ref: dict, steps: list[int], rounded: dict | None) -> None:
    print(f"\n== {name} ==")
    print(f"scores                     {rel_l2(low['scores'], ref['scores']):.4f}")
    for n in steps:
        a, r = low["nig", n], ref["nig", n]
        line = (
            f"NIG n_steps={n:<3}  per-neuron {rel_l2(a.per_neuron(), r.per_neuron()):.4f}  "
            f"per-token {rel_l2(a.values, r.values):.4f}"
        )
        if rounded is not None:
            ar = rounded["nig", n]
            line += (
                f"  (weights rounded only {rel_l2(ar.per_neuron(), r.per_neuron()):.4f}, "
                f"low-precision compute {rel_l2(a.per_neuron(), ar.per_neuron()):.4f})"
            )
        layers = ", ".join(
            f"{rel_l2(a.per_neuron()[:, i], r.per_neuron()[:, i]):.3f}" for i in range(len(a.layers))
        )
        print(line + f"; per layer [{layers}]")
    print(f"ablated scores (1 % baseline) {rel_l2(low['ablated'], ref['ablated']):.4f}")
    print(
        f"ablation effect            {rel_l2(low['ablated'] - low['scores'], ref['ablated'] - ref['scores']):.4f}"
    )
    scale = ref["scores"].abs().max().item()
    for site in ("resid_pre", "heads"):
        lo, r = low["patch"], ref["patch"]
        abs_err = (lo.values[site] - r.values[site]).abs().max().item()
        print(
            f"patching {site:<10} patched scores {rel_l2(lo.patched[site], r.patched[site]):.4f}"
            f"  effect (raw) {rel_l2(lo.values[site], r.values[site]):.4f}; max |effect error| / max |score| "
            f"{abs_err / scale:.4f} (max |effect| / max |score| {r.values[site].abs().max().item() / scale:.3f})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="16,50", help="comma-separated n_steps values (default 16,50)")
    ap.add_argument("--dtypes", default="bf16,fp16,autocast-bf16", help=f"any of {', '.join(PRECISIONS)}")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    folder = minilm_cross_encoder_dir()
    f32 = HookedCrossEncoder.from_pretrained(folder)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, 4 pairs, all-MiniLM-L6-v2 body")
    ref = measure(f32, None, steps)
    for name in args.dtypes.split(","):
        dtype, use_autocast = PRECISIONS[name]
        rounded = None
        if use_autocast:
            low = measure(f32, dtype, steps)
        else:
            model = HookedCrossEncoder.from_pretrained(folder, dtype=dtype)
            low = measure(model, None, steps)
            if dtype == torch.bfloat16:  # split weight rounding from computation
                rm = HookedCrossEncoder.from_pretrained(folder)
                with torch.no_grad():
                    for p in rm.parameters():
                        p.copy_(p.to(dtype).float())
                rounded = {
                    ("nig", n): NeuronIntegratedGradients(rm).attribute(rm.tokenize(QUERIES, DOCS), n_steps=n)
                    for n in steps
                }
        report(name, low, ref, steps, rounded)


if __name__ == "__main__":
    main()
