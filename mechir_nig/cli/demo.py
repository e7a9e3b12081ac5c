"""``mechir-nig demo``: attribute -> prune -> patch -> report in one folder (the main job)."""

from __future__ import annotations

import argparse
from typing import Any

from mechir_nig.cli._common import LAYOUT, Session, add_common, choice_list, fraction_list, positive_int

EPILOG = """example:
  mechir-nig demo                                               # embedded collection, offline MiniLM
  mechir-nig demo --model cross-encoder/ms-marco-MiniLM-L-6-v2 --collection irds:vaswani --out vaswani-demo

The stages are the commands below, run into the same --out folder (each is recorded in OUT/run.json
with its own argv, so any stage can be rerun or refined on its own):
  mechir-nig attribute --n-steps N --max-relevant R --max-nonrelevant R --negatives-from-bm25 --k K --resume
  mechir-nig prune --fractions F --seeds S --modes M --k K
  mechir-nig patch --perturbation tfc1 --max-pairs P --sites SITES
  mechir-nig report
The last line printed is the path of the report."""


def add_parser(sub: Any) -> None:
    from mechir_nig.cli.patch import SITES
    from mechir_nig.cli.prune import MODES

    p = sub.add_parser(
        "demo",
        help="the main job: attribute, a short pruning study, TFC1 patching and the HTML report",
        description="Attribute the judged pairs of the selection half of the queries, run a short pruning "
        "study on the other half, a TFC1 patching pass on a few pairs, and build the HTML report; all in "
        "--out. A rerun resumes the attribution.",
        epilog=EPILOG,
    )
    add_common(p, out="mechir-nig-demo")
    g = p.add_argument_group("demo")
    g.add_argument("--n-steps", type=positive_int, default=16, help="NIG integration steps")
    g.add_argument("--max-relevant", type=positive_int, default=2, help="relevant pairs per query attributed")
    g.add_argument(
        "--max-nonrelevant",
        type=positive_int,
        default=2,
        help="non-relevant pairs per query attributed (from the BM25 top --k)",
    )
    g.add_argument("--k", type=positive_int, default=20, help="BM25 depth (negatives, pruning re-ranking)")
    g.add_argument(
        "--fractions", type=fraction_list, default=[0.01, 0.05], help="pruned shares of the neurons"
    )
    g.add_argument("--seeds", type=positive_int, default=2, help="random sets per fraction")
    g.add_argument("--modes", type=choice_list(MODES), default=["zero", "baseline"], help="ablation modes")
    g.add_argument("--max-pairs", type=positive_int, default=4, help="pairs patched")
    g.add_argument(
        "--sites",
        type=choice_list(SITES),
        default=["resid_pre", "heads"],
        help="sites patched (attn_out,mlp_out add a pass as long as resid_pre's each)",
    )
    p.set_defaults(func=run)


def _join(values: list[Any]) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig.cli import build_parser
    from mechir_nig.cli.report import build
    from mechir_nig.runtime.distributed import context

    common = [
        "--model",
        args.model,
        "--collection",
        args.collection,
        "--out",
        str(s.out),
        "--device",
        args.device,
    ]
    if args.no_progress:
        common.append("--no-progress")
    stages = [
        [
            "attribute",
            *common,
            "--n-steps",
            str(args.n_steps),
            "--max-relevant",
            str(args.max_relevant),
            "--max-nonrelevant",
            str(args.max_nonrelevant),
            "--negatives-from-bm25",
            "--k",
            str(args.k),
            "--resume",
        ],
        [
            "prune",
            *common,
            "--fractions",
            _join(args.fractions),
            "--seeds",
            str(args.seeds),
            "--modes",
            _join(args.modes),
            "--k",
            str(args.k),
        ],
        [
            "patch",
            *common,
            "--perturbation",
            "tfc1",
            "--max-pairs",
            str(args.max_pairs),
            "--sites",
            _join(args.sites),
        ],
    ]
    parser = build_parser()
    summary: dict[str, Any] = {}
    for argv in stages:
        name = argv[0]
        s.say(f"\n== {name}: mechir-nig {' '.join(argv)}")
        sub_args = parser.parse_args(argv)
        with s.stage(name):
            summary[name] = sub_args.func(sub_args, Session(sub_args, argv, cache=s.cache))
        # under torchrun rank 0 has just written this stage's files (and run.json), which the next stage
        # reads on every rank: no rank goes on before they are complete
        context("auto").barrier()
    s.record(summary=summary)
    s.say("\n== report")
    path = s.out / LAYOUT["report"]
    with s.stage("report"):
        if s.main:  # under torchrun the stages above are sharded; rank 0 writes the report
            build(s.out, path)
    s.say(f"demo finished in {sum(s.timings.values()):.0f} s")
    s.say(str(path))
    return summary
