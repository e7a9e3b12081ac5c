"""Pruning study on Vaswani with all-MiniLM-L6-v2 (issue 9): NIG top vs random vs bottom vs negative.

NIG statistics (``attribute_collection``) on the judged pairs of one half of the queries (at most 3
relevant + 3 BM25 non-relevant per query), BM25 top-50 candidates, evaluation (nDCG@10, RR@10) on the
other half with the document side ablated (query embeddings computed once, unablated).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pruning.py --fractions 0.01 --n-steps 16 \
        --out /tmp/pruning_vaswani.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "vaswani"))
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.001, 0.005, 0.01, 0.02, 0.05, 0.1])
    p.add_argument("--modes", nargs="+", default=["zero", "baseline"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--conditions", nargs="+", default=["nig_top", "random", "bottom", "negative"])
    p.add_argument(
        "--checkpoint", default=None, help="save each finished evaluation here and resume from it (resumable)"
    )
    p.add_argument("--scheme", default="relevant")
    p.add_argument("--n-steps", type=int, default=16)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stats", default=None, help="reuse / write the NIG statistics here")
    p.add_argument("--out", default="pruning_vaswani.json")
    p.add_argument(
        "--faithfulness",
        type=int,
        default=0,
        help="instead of the pruning study, run faithfulness() on this many judged pairs of the selection half",
    )
    args = p.parse_args(argv)
    if not Path(args.data).exists():
        print(f"SKIP: {args.data} is absent (the Vaswani collection is needed)")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.experiments.pruning import pruning_study, split_queries
    from mechir_nig.models import load_model

    t = {}
    t0 = time.perf_counter()
    model = load_model(args.model)
    col = load_collection(args.data)
    sel, ev = split_queries(col, seed=0)
    cands = bm25_candidates(col, k=args.k)
    t["load+bm25"] = time.perf_counter() - t0
    if args.faithfulness:
        return _faithfulness(model, col, cands, sel, args, t)
    t0 = time.perf_counter()
    if args.stats and Path(args.stats).exists():
        stats = CollectionAttribution.load(args.stats)
    else:
        pairs = judged_pairs(
            col,
            max_relevant_per_query=3,
            max_nonrelevant_per_query=3,
            candidates=cands,
            sample_nonrelevant_from_candidates=True,
            query_ids=sel,
        )
        print(f"attributing {len(pairs)} pairs of {len(sel)} selection queries", file=sys.stderr)
        stats = attribute_collection(model, pairs, n_steps=args.n_steps, side="doc", progress=True)
        if args.stats:
            stats.save(args.stats)
    t["nig"] = time.perf_counter() - t0
    reference = None
    if {"mean", "resample"} & set(args.modes):
        from mechir_nig.interventions import AblationReference

        t0 = time.perf_counter()
        ref_pairs = judged_pairs(col, max_relevant_per_query=3, max_nonrelevant_per_query=3, query_ids=sel)
        ref_docs = list(dict.fromkeys(p.doc for p in ref_pairs))
        reference = AblationReference.compute(model, ref_docs, batch_size=32)  # selection-half documents
        t["reference"] = time.perf_counter() - t0
        print(f"mean/resample reference: {len(ref_docs)} documents of the selection half", file=sys.stderr)
    result = pruning_study(
        model,
        col,
        cands,
        stats,
        scheme=args.scheme,
        fractions=tuple(args.fractions),
        seeds=args.seeds,
        modes=tuple(args.modes),
        conditions=tuple(args.conditions),
        select_queries=sel,
        eval_queries=ev,
        side="doc",
        reference=reference,
        checkpoint=args.checkpoint,
        resume=args.checkpoint is not None,
    )
    result.timings.update(t)
    result.settings.update(n_steps=args.n_steps, k=args.k, pairs_attributed=dict(stats.counts))
    result.save(args.out)
    print(result.to_markdown())
    print(json.dumps(result.timings, indent=1))
    return 0


def _faithfulness(model, col, cands, sel, args, t) -> int:
    from mechir_nig.data import judged_pairs
    from mechir_nig.experiments.faithfulness import faithfulness

    pairs = judged_pairs(
        col,
        max_relevant_per_query=1,
        max_nonrelevant_per_query=1,
        candidates=cands,
        sample_nonrelevant_from_candidates=True,
        query_ids=sel,
    )[: args.faithfulness]
    t0 = time.perf_counter()
    res = faithfulness(
        model,
        [p.query for p in pairs],
        [p.doc for p in pairs],
        k=10,
        curve_k=10,
        seeds=3,
        n_steps=args.n_steps,
        interventions=("baseline", "zero", "mean"),
    )
    t["faithfulness"] = time.perf_counter() - t0
    res.save(args.out, extra={"timings": t, "pairs": len(pairs)})  # FaithfulnessResult.load reads it back
    print(json.dumps({"statistics": res.statistics(), "timings": t}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
