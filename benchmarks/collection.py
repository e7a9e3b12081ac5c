"""Throughput of collection-scale attribution (pairs per second), MiniLM on CPU.

Usage: ``python benchmarks/collection.py [--collection ../shared/data/vaswani] [--pairs 48] [--steps 32]
[--repeats 3]``

Attributes the first ``--pairs`` judged pairs (relevant and BM25 non-relevant, longest first as
``attribute_collection`` orders them) with the all-MiniLM-L6-v2 bi-encoder (document side) and the
MiniLM-body cross-encoder, all 6 layers. The two models alternate (bi, cross, bi, cross, ...) for
``--repeats`` rounds after one warm-up round; prints each one's seconds as median [min - max] and the
pairs/s of the median and of the fastest and slowest round, with the mean tokens per pair. Every round
must give the same statistics as the warm-up (checked and printed: a timing of a different answer is
no timing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import SHARED, alternate, header, judged_sample, minilm_cross_encoder_dir, repeats, spread  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    default = SHARED / "data" / "vaswani"
    ap.add_argument("--collection", default=str(default) if default.is_dir() else "embedded")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=repeats, default=3)
    args = ap.parse_args()

    from mechir_nig import HookedBiEncoder, HookedCrossEncoder
    from mechir_nig.data import load_collection
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.testing import minilm_path

    col = load_collection(args.collection)
    pairs = judged_sample(col, args.pairs)
    header(f"{col.name}: {len(pairs)} pairs, {args.steps} steps, batch {args.batch_size}, all layers")
    models = {
        "bi-encoder (all-MiniLM-L6-v2, doc side)": HookedBiEncoder.from_pretrained(minilm_path()),
        "cross-encoder (MiniLM body + seeded head)": HookedCrossEncoder.from_pretrained(
            minilm_cross_encoder_dir()
        ),
    }
    results: dict[str, list[torch.Tensor]] = {name: [] for name in models}

    def attribute(name: str) -> None:
        res = attribute_collection(
            models[name], pairs, n_steps=args.steps, batch_size=args.batch_size, progress=False
        )
        results[name].append(torch.stack([res.mean(label) for label in ("relevant", "nonrelevant")]))

    times = alternate({name: lambda name=name: attribute(name) for name in models}, repeats=args.repeats)
    for name, model in models.items():
        if isinstance(model, HookedCrossEncoder):
            tokens = model.tokenize(pairs.queries(), pairs.docs()).lengths.float().mean()
        else:
            tokens = model.tokenize(pairs.docs()).lengths.float().mean()
        first, *rest = results[name]
        diff = max((r - first).abs().max().item() for r in rest)
        sec = times[name]
        print(
            f"  {name:42s} {spread(sec)}  {len(pairs) / statistics.median(sec):.2f} pairs/s "
            f"[{len(pairs) / max(sec):.2f} - {len(pairs) / min(sec):.2f}], {tokens:.0f} tokens/pair "
            f"interpolated; max |round - warm-up| of the mean NIG {diff:.1e}"
        )


if __name__ == "__main__":
    main()
