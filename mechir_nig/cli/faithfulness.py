"""``mechir-nig faithfulness``: does ablating a pair's top-NIG neurons change its score? ``OUT/faithfulness.json``."""

from __future__ import annotations

import argparse
from typing import Any

from mechir_nig.cli._common import (
    CommandError,
    Session,
    add_command,
    choice_list,
    nonneg_int,
    option,
    positive_int,
)
from mechir_nig.cli._pairs import add_pair_options, candidate_pairs

EPILOG = """example:
  mechir-nig faithfulness --out results --max-pairs 4 --neurons 10 --curve-k 10 --interventions baseline,zero,mean

For each pair the --neurons neurons of largest |NIG| are ablated one at a time; the score drops are rank-correlated
(Spearman) with NIG, activation x gradient and activation magnitude. The curve ablates the top-k neurons
by NIG together (k = 1..--curve-k) against k random neurons (--seeds draws). Each intervention runs as its
own step (its random draws seeded with --seed)."""

INTERVENTIONS = ("baseline", "zero", "mean")


HELP = "single-neuron ablations of each pair's top-NIG neurons vs NIG's predictions"
DESCRIPTION = (
    "Faithfulness of NIG on a few pairs: ablate each pair's top-|NIG| neurons one at a time "
    "and correlate the score drops with the attributions; plus the top-k vs random curve. Writes "
    "OUT/faithfulness.json."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "faithfulness", run, HELP, DESCRIPTION, EPILOG)
    g = p.add_argument_group("pairs")
    add_pair_options(g)
    g = p.add_argument_group("faithfulness")
    g.add_argument(
        "--neurons", type=positive_int, default=10, help="neurons per pair for the correlations (at least 2)"
    )
    g.add_argument(
        "--curve-k", type=nonneg_int, default=10, help="largest k of the cumulative curve (0: none)"
    )
    option(g, "--seeds", help="random sets per k in the curve")
    g.add_argument(
        "--interventions",
        type=choice_list(INTERVENTIONS),
        default=list(INTERVENTIONS),
        help="comma-separated ablation modes (mean: the token-mean activation over these pairs)",
    )
    option(g, "--n-steps")
    option(g, "--chunk-size", default=64, help="ablated rows per forward (memory only)")


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:

    from mechir_nig.cli._common import UsageError
    from mechir_nig.experiments.faithfulness import FaithfulnessResult, _per_neuron_nig, faithfulness
    from mechir_nig.interventions.ablation import AblationReference

    if args.neurons < 2:
        raise UsageError("--neurons must be at least 2 (a rank correlation needs two neurons)")
    col = s.collection()
    model = s.model()
    n_all = model.cfg.n_layers * model.cfg.d_mlp
    if args.neurons > n_all or args.curve_k > n_all:
        raise UsageError(f"--neurons and --curve-k must be at most the model's {n_all} neurons")
    pairs = candidate_pairs(col, args)[: args.max_pairs]
    if not pairs:
        raise CommandError(f"collection {col.name!r} has no pair to study; try --pairs bm25")
    qs, ds = [p.query for p in pairs], [p.doc for p in pairs]
    s.say(
        f"faithfulness on {len(pairs)} pairs: top-{args.neurons} neurons each, curve to k={args.curve_k}, "
        f"interventions {args.interventions}"
    )
    with s.stage("nig"):  # under torchrun: the pairs sharded over the ranks, gathered on each
        attr = _per_neuron_nig(model, qs, ds, n_steps=args.n_steps, reduce="neuron", progress=s.progress)
    reference = None
    if "mean" in args.interventions:
        with s.stage("reference"):
            reference = AblationReference.compute(model, qs, ds)  # a bi-encoder: the docs
    parts: list[FaithfulnessResult] = []
    with s.stage("ablations"):
        for mode in args.interventions:  # each call's bar counts its forward batches
            parts.append(
                faithfulness(
                    model,
                    qs,
                    ds,
                    attr,
                    k=args.neurons,
                    curve_k=args.curve_k,
                    seeds=args.seeds,
                    interventions=(mode,),
                    reference=reference,
                    n_steps=args.n_steps,
                    chunk_size=args.chunk_size,
                    seed=args.seed,
                    progress=s.progress and s.main,
                )
            )
    first = parts[0]
    result = FaithfulnessResult(
        k=first.k,
        spearman={m: v for r in parts for m, v in r.spearman.items()},
        per_pair={m: v for r in parts for m, v in r.per_pair.items()},
        neurons=first.neurons,
        drops={m: v for r in parts for m, v in r.drops.items()},
        curve={m: v for r in parts for m, v in r.curve.items()},
        settings={**first.settings, "interventions": list(args.interventions), "seed": args.seed},
    )
    used = [{"query_id": p.query_id, "doc_id": p.doc_id} for p in pairs]
    # faithfulness() shards the pairs and gathers the result on every rank; checksummed, the pairs beside it
    out = s.save("faithfulness", lambda path: result.save(path, extra={"pairs": used}))
    for mode, rho in result.spearman.items():
        cells = ", ".join(f"{name} {value:+.3f}" for name, value in rho.items())
        s.say(f"{mode:8s} Spearman with the single-neuron drops: {cells}")
    from mechir_nig.cli._common import say_findings
    from mechir_nig.findings import faithfulness_findings

    say_findings(s.say, faithfulness_findings(result))
    s.say(f"wrote {out}")
    summary = {"pairs": len(pairs), "spearman": result.spearman}
    s.record({"pairs_used": used}, summary)
    return summary
