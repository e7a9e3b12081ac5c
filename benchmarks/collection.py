"""Throughput of collection-scale attribution (pairs per second), MiniLM on CPU.

Usage: ``python benchmarks/collection.py [--collection ../shared/data/vaswani] [--pairs 48] [--steps 32]``

Attributes the first ``--pairs`` judged pairs (relevant and BM25 non-relevant, longest first as
``attribute_collection`` orders them) with the all-MiniLM-L6-v2 bi-encoder (document side) and the
MiniLM-body cross-encoder, all 6 layers, and prints pairs/s and the mean tokens per pair.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import minilm_cross_encoder_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    default = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vaswani")
    ap.add_argument("--collection", default=default if os.path.isdir(default) else "embedded")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    from mechir_nig import HookedBiEncoder, HookedCrossEncoder
    from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.testing import minilm_path

    col = load_collection(args.collection)
    pairs = judged_pairs(
        col,
        max_relevant_per_query=1,
        max_nonrelevant_per_query=1,
        candidates=bm25_candidates(col, k=20),
        sample_nonrelevant_from_candidates=True,
    )
    pairs = type(pairs)(pairs[: args.pairs], pairs.report)
    print(f"{col.name}: {len(pairs)} pairs, {args.steps} steps, batch {args.batch_size}, all layers")
    models = {
        "bi-encoder (all-MiniLM-L6-v2, doc side)": HookedBiEncoder.from_pretrained(minilm_path()),
        "cross-encoder (MiniLM body + seeded head)": HookedCrossEncoder.from_pretrained(
            minilm_cross_encoder_dir()
        ),
    }
    for name, model in models.items():
        if isinstance(model, HookedCrossEncoder):
            tokens = model.tokenize(pairs.queries(), pairs.docs()).lengths.float().mean()
        else:
            tokens = model.tokenize(pairs.docs()).lengths.float().mean()
        t0 = time.perf_counter()
        attribute_collection(model, pairs, n_steps=args.steps, batch_size=args.batch_size, progress=False)
        sec = time.perf_counter() - t0
        print(
            f"  {name:42s} {len(pairs) / sec:6.2f} pairs/s  ({sec:6.1f} s, {tokens:.0f} tokens/pair interpolated)"
        )


if __name__ == "__main__":
    main()
