"""``mechir-nig demo``: attribute -> prune -> patch -> report in one folder (the main job)."""

from __future__ import annotations

import argparse
from typing import Any

from mechir_nig.cli._common import LAYOUT, Session, add_command, option, positive_int

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

HELP = "the main job: attribute, a short pruning study, TFC1 patching and the HTML report"
DESCRIPTION = (
    "Attribute the judged pairs of the selection half of the queries, run a short pruning "
    "study on the other half, a TFC1 patching pass on a few pairs, and build the HTML report; all in "
    "--out. A rerun resumes the attribution."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "demo", run, HELP, DESCRIPTION, EPILOG, out="mechir-nig-demo")
    g = p.add_argument_group("demo")
    option(g, "--n-steps")
    g.add_argument("--max-relevant", type=positive_int, default=2, help="relevant pairs per query attributed")
    g.add_argument(
        "--max-nonrelevant",
        type=positive_int,
        default=2,
        help="non-relevant pairs per query attributed (from the BM25 top --k)",
    )
    option(g, "--k", default=20, help="BM25 depth (negatives, pruning re-ranking)")
    option(g, "--fractions", help="pruned shares of the neurons")
    option(g, "--seeds", default=2)
    option(g, "--modes", help="ablation modes")
    g.add_argument("--max-pairs", type=positive_int, default=4, help="pairs patched")
    option(
        g,
        "--sites",
        default=["resid_pre", "heads"],
        help="sites patched (attn_out,mlp_out add a pass as long as resid_pre's each)",
    )


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
    if args.template is not None:
        common += ["--template", args.template]
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
    if s.main:
        from mechir_nig.cli._common import say_folder_findings

        say_folder_findings(s.say, s.out)
    s.say(f"demo finished in {sum(s.timings.values()):.0f} s")
    s.say(str(path))
    return summary
