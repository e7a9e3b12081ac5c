"""Command line: ``mechir-nig demo | rerank | attribute | stability``.

Examples::

    mechir-nig demo                                  # the main job on the embedded collection
    mechir-nig rerank --collection ../shared/data/vaswani --model all-MiniLM-L6-v2 --k 100
    mechir-nig attribute --collection embedded --model all-MiniLM-L6-v2 --out nig.safetensors --resume
    mechir-nig stability --collection ../shared/data/vaswani --model all-MiniLM-L6-v2 --fraction 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _model(args: argparse.Namespace):
    from mechir_nig.models import load_model

    return load_model(args.model)


def _collection(args: argparse.Namespace):
    from mechir_nig.data import load_collection

    return load_collection(args.collection)


def cmd_rerank(args: argparse.Namespace) -> dict[str, Any]:
    from mechir_nig.experiments import rerank_study

    return rerank_study(_model(args), _collection(args), k=args.k, progress=True)


def cmd_attribute(args: argparse.Namespace) -> dict[str, Any]:
    from mechir_nig.data import bm25_candidates, judged_pairs
    from mechir_nig.experiments.attribute import attribute_collection

    col = _collection(args)
    cands = bm25_candidates(col, k=args.k) if args.negatives_from_bm25 else None
    pairs = judged_pairs(
        col,
        max_relevant_per_query=args.max_relevant,
        max_nonrelevant_per_query=args.max_nonrelevant,
        candidates=cands,
        sample_nonrelevant_from_candidates=cands is not None,
        seed=args.seed,
    )
    stats = attribute_collection(
        _model(args),
        pairs,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        checkpoint=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        collection=col.name,
    )
    return {"out": args.out, "counts": stats.counts, "n_done": stats.n_done}


def cmd_stability(args: argparse.Namespace) -> dict[str, Any]:
    from mechir_nig.experiments import split_half_stability

    return split_half_stability(
        _model(args),
        _collection(args),
        fraction=args.fraction,
        max_relevant_per_query=args.max_relevant,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_dir=args.checkpoint_dir,
    )


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Embedded collection: BM25 vs MiniLM re-ranking, NIG per label, top neurons and their overlap."""
    from mechir_nig.attribution.neurons import overlap_report, select_top
    from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
    from mechir_nig.experiments import rerank_study
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.models import load_model

    model = load_model(args.model)
    col = load_collection("embedded")
    print(f"model: {model}\ncollection: {col}")
    study = rerank_study(model, col, k=20)
    print(f"BM25 top-20 : {study['bm25']}\nre-ranked   : {study['reranked']}")
    pairs = judged_pairs(
        col,
        max_relevant_per_query=2,
        max_nonrelevant_per_query=2,
        candidates=bm25_candidates(col, k=20),
        sample_nonrelevant_from_candidates=True,
        seed=0,
    )
    stats = attribute_collection(model, pairs, n_steps=args.n_steps, batch_size=8, collection=col.name)
    print(f"attributed {stats.counts} pairs at {args.n_steps} steps")
    sets = {}
    for scheme in ("relevant", "nonrelevant", "difference"):
        sets[scheme] = select_top(
            stats.scheme_scores(scheme), fraction=0.01, layers=stats.layers, name=scheme
        )
        top = sorted((sets[scheme].scores or {}).items(), key=lambda kv: -kv[1])[:5]
        cells = ", ".join(f"L{layer}N{n} {v:+.4f}" for (layer, n), v in top)
        print(
            f"top-1% by {scheme:11s} ({len(sets[scheme])} neurons, per layer {sets[scheme].layer_profile()}): {cells}"
        )
    rep = overlap_report(sets["relevant"], sets["nonrelevant"])
    print(
        f"relevant vs non-relevant top-1%: Jaccard {rep['jaccard']:.3f} "
        f"(chance {rep['expected_jaccard']:.4f}, lift {rep['lift']:.1f}x)"
    )
    return {"rerank": study, "counts": stats.counts, "overlap_relevant_nonrelevant": rep}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mechir-nig", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, collection: bool = True) -> None:
        p.add_argument("--model", default="all-MiniLM-L6-v2", help="hub id, folder, or all-MiniLM-L6-v2")
        if collection:
            p.add_argument("--collection", default="embedded", help="irds:<id>, a folder, or 'embedded'")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("demo", help="the main job on the embedded collection")
    common(p, collection=False)
    p.add_argument("--n-steps", type=int, default=16)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("rerank", help="BM25 top-k and the model re-ranking it (nDCG@10, RR@10)")
    common(p)
    p.add_argument("--k", type=int, default=100)
    p.set_defaults(fn=cmd_rerank)

    p = sub.add_parser("attribute", help="collection-scale NIG per label (checkpointed, resumable)")
    common(p)
    p.add_argument("--out", required=True, help="checkpoint / result file (.safetensors)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=256)
    p.add_argument("--max-relevant", type=int, default=None)
    p.add_argument("--max-nonrelevant", type=int, default=None)
    p.add_argument("--negatives-from-bm25", action="store_true", help="sample non-relevant from BM25 top-k")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_attribute)

    p = sub.add_parser("stability", help="split-half stability of the relevant-neuron ranking")
    common(p)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--max-relevant", type=int, default=3)
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None)
    p.set_defaults(fn=cmd_stability)

    args = ap.parse_args(argv)
    result = args.fn(args)
    if args.json or args.command in ("rerank", "stability"):
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
