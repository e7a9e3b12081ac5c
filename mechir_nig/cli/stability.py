"""``mechir-nig stability``: split-half stability of the relevant-neuron ranking, into ``OUT/stability.json``."""

from __future__ import annotations

import argparse
from typing import Any

from mechir_nig.cli._common import Session, add_command, fraction, option, positive_int, write_json

EPILOG = """example:
  mechir-nig stability --collection irds:vaswani --fraction 0.01 --max-relevant 3 --n-steps 16 --out vaswani

The judged queries are split into two halves (--seed); the relevant pairs of each half are attributed
(checkpointed in OUT/stability-checkpoints/, so an interrupted run continues) and the two top --fraction
neuron sets are compared (Jaccard) with the overlap of random sets of the same sizes."""

HELP = "split-half stability of the top relevant neurons (Jaccard vs chance)"
DESCRIPTION = (
    "Are the relevance neurons a property of the model or of the queries? Attribute the "
    "relevant pairs of two disjoint query halves and compare their top neuron sets. Writes "
    "OUT/stability.json."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "stability", run, HELP, DESCRIPTION, EPILOG)
    g = p.add_argument_group("stability")
    g.add_argument(
        "--fraction", type=fraction, default=0.01, help="share of the neurons in each top set, in (0, 1]"
    )
    g.add_argument("--max-relevant", type=positive_int, default=3, help="relevant pairs per query")
    option(g, "--n-steps")
    option(g, "--batch-size", default=8)
    option(g, "--seed", help="seed of the split and of the pair sampling")


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig.attribution.settings import NIGSettings
    from mechir_nig.experiments import split_half_stability

    col = s.collection()
    model = s.model()
    with s.stage("stability"):
        result = split_half_stability(
            model,
            col,
            fraction=args.fraction,
            max_relevant_per_query=args.max_relevant,
            settings=NIGSettings(n_steps=args.n_steps),
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_dir=s.out / "stability-checkpoints",
            progress=s.progress,
        )
    # attribute_collection shards each half's pairs; every rank returns the whole study
    out = s.save("stability", lambda path: write_json(path, result))
    rep = result["overlap"]
    s.say(
        f"top-{args.fraction:g} relevant neurons of two query halves: Jaccard {rep['jaccard']:.3f} "
        f"(chance {rep['expected_jaccard']:.4f}, lift {rep['lift']:.1f}x)"
    )
    s.say(f"wrote {out}")
    s.record(summary={"overlap": rep})
    return result
