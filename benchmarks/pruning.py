"""Pruning study on Vaswani with all-MiniLM-L6-v2 (issue 9): NIG top vs random vs bottom vs negative.

NIG statistics (``attribute_collection``) on the judged pairs of one half of the queries (at most 3
relevant + 3 BM25 non-relevant per query), BM25 top-50 candidates, evaluation (nDCG@10, RR@10) on the
other half with the document side ablated (query embeddings computed once, unablated).

Usage:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/pruning.py --fractions 0.01 --n-steps 16 \
        --out /tmp/pruning_vaswani.json

Timing: after the study's table, the script prints the time of one evaluation per ablation mode as
median [min - max, n] over every evaluation the process computed (each scores the same evaluation-half
candidate pairs under another ablated set: repeats of an operation of the same cost; an evaluation's time
is the interval between the ends of two consecutive evaluations, so it includes writing ``--checkpoint``
when given). Left out of those figures: the first evaluation (the unpruned clean pass, which also carries
the study's setup; printed on its own) and any evaluation with no neuron ablated (cached clean scores).
The NIG statistics and the mean/resample reference are printed as single timings (one run each, labelled
so). The output JSON keeps every evaluation's seconds (``evaluation_seconds``: condition, mode, fraction,
seed, n_neurons, seconds, with_setup) and the summary (``timing_summary``) beside the result (``extra``
keys: ``PruningResult.load`` ignores them).
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import header

    header(f"Pruning study on {args.data} with {args.model}")
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
    stats_loaded = bool(args.stats and Path(args.stats).exists())
    if stats_loaded:
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
    marks: list[tuple[float, dict]] = []  # (the clock when an evaluation finished, its runs record)
    t_study = time.perf_counter()
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
        on_evaluation=lambda run: marks.append((time.perf_counter(), run)),
    )
    result.timings.update(t)
    result.settings.update(n_steps=args.n_steps, k=args.k, pairs_attributed=dict(stats.counts))
    evaluations = evaluation_seconds(t_study, marks)
    summary = timing_summary(evaluations, {k: v for k, v in t.items() if k != "load+bm25"})
    result.save(args.out, extra={"evaluation_seconds": evaluations, "timing_summary": summary})
    print(result.to_markdown())
    print(json.dumps(result.timings, indent=1))
    print_timing_summary(summary, stats_reused=stats_loaded)
    return 0


def evaluation_seconds(t_study: float, marks: list[tuple[float, dict]]) -> list[dict]:
    """Each evaluation computed in this process with its seconds: the time between the ends of two
    consecutive evaluations (``on_evaluation`` runs as each ends), the first one's from the call of
    ``pruning_study`` (so it includes the study's setup; flagged ``with_setup``). Evaluations resumed from
    a checkpoint are not computed here and not listed."""
    out, last = [], t_study
    for i, (at, run) in enumerate(marks):
        keys = ("condition", "mode", "fraction", "seed", "n_neurons")
        out.append({k: run.get(k) for k in keys} | {"seconds": at - last, "with_setup": i == 0})
        last = at
    return out


def timing_summary(evaluations: list[dict], phases: dict[str, float]) -> dict:
    """Per ablation mode, the seconds of its evaluations as median, min, max and n (each scores the same
    candidate pairs under another ablation: repeats of an operation of the same cost). Left out: the first
    evaluation (it includes the study's setup) and those with no neuron ablated (the cached clean scores),
    counted under ``left_out``. ``phases``: the single timings of the other phases (one run each)."""
    by_mode: dict[str, list[float]] = {}
    left_out = 0
    for e in evaluations:
        if e["with_setup"] or not e["n_neurons"]:
            left_out += 1
            continue
        by_mode.setdefault(str(e["mode"]), []).append(e["seconds"])
    modes = {
        m: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
        for m, v in by_mode.items()
    }
    first = next((e["seconds"] for e in evaluations if e["with_setup"]), None)
    return {
        "per_evaluation": modes,
        "left_out": left_out,
        "first_with_setup": first,
        "single_timings": phases,
    }


def print_timing_summary(summary: dict, stats_reused: bool = False) -> None:
    """Print :func:`timing_summary`'s figures: per mode median [min - max, n] seconds per evaluation."""
    print(
        "\ntime per evaluation (the same candidate pairs scored under one ablation), median [min - max, n]:"
    )
    for mode, v in summary["per_evaluation"].items():
        print(f"  {mode:9s} {v['median']:.2f} s [{v['min']:.2f} - {v['max']:.2f}, n={v['n']}]")
    if not summary["per_evaluation"]:
        print("  (no evaluation with an ablation was computed in this process)")
    if summary["left_out"]:
        print(
            f"  left out: {summary['left_out']} evaluation(s): the first (it includes the study's setup"
            + (f", {summary['first_with_setup']:.2f} s" if summary["first_with_setup"] is not None else "")
            + ") and any with no neuron ablated (cached clean scores)"
        )
    labels = {
        "nig": "NIG statistics" + (" (loaded from --stats)" if stats_reused else ""),
        "reference": "mean/resample reference",
    }
    for name, seconds in summary["single_timings"].items():
        print(f"  {labels.get(name, name)}: {seconds:.2f} s (a single timing, one run; not a median)")


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
