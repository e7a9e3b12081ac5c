"""``mechir-nig prune``: ablate NIG-selected neurons and measure the re-ranking lost, into ``OUT/pruning.json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mechir_nig.cli._common import (
    ABLATION_MODES,
    CONDITIONS,
    LAYOUT,
    SCHEMES,
    CommandError,
    Session,
    UsageError,
    add_command,
    choice_list,
    option,
)

EPILOG = """example:
  mechir-nig attribute --out results            # NIG on the selection half of the judged queries
  mechir-nig prune --out results --fractions 0.01,0.05 --seeds 3 --modes zero,baseline --k 50

The neurons are selected on the queries the attribution was computed on (recorded in it) and evaluated
on the other judged queries, re-ranking their BM25 top --k. Each finished evaluation is saved in
OUT/pruning.ckpt.json as it completes: a stopped study continues with the same command and --resume
(the checkpoint is removed once pruning.json is written)."""

CHECKPOINT = "pruning.ckpt.json"
"""The per-evaluation checkpoint of a running study, in the results folder."""

MODES = ABLATION_MODES


HELP = "ablate the top NIG neurons (vs random, bottom, negative sets) and re-rank held-out queries"
DESCRIPTION = (
    "Pruning study from a saved attribution: ablate the neurons a NIG scheme ranks highest "
    "and compare the re-ranking effectiveness (nDCG@10, RR@10) of held-out queries with the unpruned "
    "model and with random sets of the same per-layer sizes. Writes OUT/pruning.json."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "prune", run, HELP, DESCRIPTION, EPILOG)
    g = p.add_argument_group("pruning")
    g.add_argument(
        "--attribution",
        default=None,
        metavar="FILE_OR_DIR",
        help=f"a saved attribution, or a folder holding {LAYOUT['attribution']} (default: OUT/{LAYOUT['attribution']})",
    )
    g.add_argument("--scheme", choices=SCHEMES, default="relevant", help="how neurons are ranked")
    option(g, "--fractions", help="comma-separated shares of the ranked neurons to ablate, in [0, 1]")
    option(g, "--seeds")
    option(
        g,
        "--modes",
        help=f"comma-separated ablation modes among {','.join(MODES)} (mean/resample use the selection "
        "queries' candidates as reference)",
    )
    g.add_argument(
        "--conditions",
        type=choice_list(CONDITIONS),
        default=list(CONDITIONS),
        help="comma-separated neuron sets compared with the unpruned model",
    )
    option(g, "--k", default=50, help="BM25 depth re-ranked per evaluation query")
    option(g, "--measures")
    g.add_argument(
        "--side",
        choices=("doc", "query", "both"),
        default="doc",
        help="bi-encoders: the side ablated (cross-encoders ablate the pair)",
    )
    option(g, "--batch-size", default=32, help="texts or pairs per forward")
    g.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="use an attribution that holds fewer pairs than its run planned (a stopped attribute); the "
        "output, pruning.json and the report say so. Without it such an attribution is refused",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the study stopped in OUT/{CHECKPOINT} (same attribution, options and model); its "
        "finished evaluations are kept as they are",
    )
    option(
        g,
        "--split-seed",
        help="seed of the query split, used only when the attribution does not record its queries",
    )


def attribution_path(s: Session, given: str | None) -> Path:
    """``--attribution`` as a file (a folder means its attribution.safetensors); refuse a missing one."""
    from mechir_nig.runtime.shards import manifest_path

    if given is None:
        path = s.out / LAYOUT["attribution"]
        if not path.is_file() and manifest_path(path).is_file():
            raise CommandError(
                f"{path} is not written yet: {manifest_path(path).name} is the manifest of a sharded attribute "
                f"run that was stopped; finish it with mechir-nig attribute --resume --out {s.out}"
            )
        if not path.is_file():
            raise UsageError(
                f"{path} does not exist: run `mechir-nig attribute --out {s.out}` first, or pass --attribution FILE"
            )
        return path
    path = Path(given).expanduser()
    if path.is_dir():
        path = path / LAYOUT["attribution"]
    if not path.is_file():
        raise UsageError(f"--attribution {given}: no such file")
    return path


def selected_sets_lines(result: Any) -> list[str]:
    """One line per selected (non-random) set: its ranking scheme, size and how many of its neurons are
    active on the NIG baseline input (``PruningResult.active_on_baseline``).

    Example:
        >>> from mechir_nig.experiments.pruning import PruningResult
        >>> from mechir_nig.sets import NeuronSet
        >>> top = NeuronSet([(0, 0), (0, 1)], n_layers=1, d_mlp=2).to_json()
        >>> r = PruningResult([], [], [], {"nig_top|0.5|0": top}, [], [], {"scheme": "relevant"},
        ...                   baseline_activity={"threshold": 0.1, "layers": [0], "baseline_mean": [[0.3, 0.0]]})
        >>> selected_sets_lines(r)
        ['nig_top at fraction 0.5 (the relevant scheme): 2 neurons, 1 of 2 active on the NIG baseline input']
    """
    from mechir_nig.sets import ComponentSet

    scheme = result.settings.get("scheme")
    how = "a score tensor passed in" if scheme in (None, "tensor") else f"the {scheme} scheme"
    lines = []
    for key, data in result.sets.items():
        cond, frac, _seed = key.split("|")
        if cond == "random":
            continue
        counted = result.active_on_baseline(data)
        active = "" if counted is None else f", {counted[0]} of {counted[1]} active on the NIG baseline input"
        n = len(ComponentSet.from_json(data))
        lines.append(f"{cond} at fraction {frac} ({how}): {n} neurons{active}")
    return lines


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig.cli._common import load_attribution
    from mechir_nig.data import bm25_candidates
    from mechir_nig.evaluation import _parse_measures
    from mechir_nig.experiments.pruning import judged_queries, pruning_study, split_queries

    path = attribution_path(s, args.attribution)
    _parse_measures(args.measures)  # unknown names fail before any work
    stats, incomplete = load_attribution(path, args.allow_incomplete, s.say)
    col = s.collection()
    model = s.model()
    if model.pairwise and args.side != "doc":
        raise UsageError("--side is for bi-encoders; a cross-encoder is ablated on the whole pair")
    made_with = stats.meta.get("model")
    if made_with and made_with != s.fingerprint(model):
        raise CommandError(
            f"{path} was computed with another model ({stats.meta.get('model_name') or 'its weights differ'}); "
            f"pass the same --model (--model {args.model} has other weights)"
        )
    if stats.meta.get("collection") not in (None, col.name):
        s.say(
            f"note: {path} was computed on collection {stats.meta['collection']!r}, evaluating on {col.name!r}"
        )
    judged = judged_queries(col)  # the library's one definition (experiments.pruning.JUDGED)
    recorded = stats.meta.get("query_ids")
    if recorded:
        sel = list(recorded)
        chosen = set(sel)
        ev = [q for q in judged if q not in chosen]
        if not ev:
            raise CommandError(
                f"{path} was computed on every judged query of {col.name!r}, so none is left to evaluate on: "
                "attribute with --queries selection (the default) and prune again"
            )
    else:
        sel, ev = split_queries(col, seed=args.split_seed)
        ev = [q for q in ev if q in col.queries]
        s.say(
            f"note: {path} does not record its queries; assuming the selection half of the split with "
            f"--split-seed {args.split_seed} and evaluating on the other {len(ev)} queries"
        )
    with s.stage("bm25"):
        cands = bm25_candidates(col, k=args.k, query_ids=ev)
    reference = None
    if {"mean", "resample"} & set(args.modes):
        from mechir_nig.interventions.ablation import AblationReference

        with s.stage("reference"):
            ref_q = [q for q in sel if q in col.queries]
            ref_c = bm25_candidates(col, k=min(args.k, 10), query_ids=ref_q)
            pairs = [(q, d) for q in ref_q for d in ref_c[q]]
            docs = col.get_docs(d for _, d in pairs)
            qs, ds = [col.queries[q] for q, _ in pairs], [docs[d] for _, d in pairs]
            if not pairs:
                raise CommandError(
                    "the selection queries have no BM25 candidates for the mean/resample reference"
                )
            reference = AblationReference.compute(model, qs, ds)  # a bi-encoder: the docs
    n_evals = 1 + len(args.fractions) * len(args.modes) * sum(
        args.seeds if c == "random" else 1 for c in args.conditions
    )
    s.say(
        f"pruning study: {len(ev)} evaluation queries x BM25 top-{args.k}, fractions {args.fractions}, "
        f"modes {args.modes}, {args.seeds} random seeds: {n_evals} re-rankings"
    )
    from mechir_nig.runtime.distributed import launch_info

    ckpt = s.out / CHECKPOINT
    if launch_info() is not None:  # the evaluations are sharded over the ranks: no per-evaluation checkpoint
        if args.resume:
            raise UsageError("--resume continues a single-process prune; run it without torchrun")
        ckpt_arg = None
    else:
        ckpt_arg = ckpt
    if ckpt_arg is not None and ckpt.exists() and not args.resume:
        raise UsageError(
            f"{ckpt} holds a stopped pruning study: pass --resume to continue it (same options), or remove it"
        )
    if ckpt_arg is not None and args.resume and not ckpt.exists():
        s.say(f"note: --resume: {ckpt} does not exist, starting the study")
    with s.stage("pruning"):
        result = pruning_study(
            model,
            col,
            cands,
            stats,
            scheme=args.scheme,
            fractions=args.fractions,
            seeds=args.seeds,
            modes=args.modes,
            conditions=args.conditions,
            select_queries=sel,
            eval_queries=ev,
            measures=args.measures,
            side=args.side if not model.pairwise else "doc",
            reference=reference,
            batch_size=args.batch_size,
            progress=s.progress,
            checkpoint=ckpt_arg,
            resume=args.resume and ckpt.exists(),
        )
    resumed = int(result.timings.get("resumed_evaluations", 0))
    if resumed:
        s.say(f"resumed {resumed} of {len(result.runs)} evaluations from {ckpt}")
    result.settings["attribution"] = str(path.resolve())
    result.settings["k"] = args.k
    if incomplete is not None:
        result.settings["attribution_incomplete"] = incomplete
    out = s.save("pruning", result.save)  # pruning_study gathers every run on each rank
    if ckpt_arg is not None and s.main:
        ckpt.unlink(missing_ok=True)  # the study is in pruning.json now
    s.say(result.to_markdown())
    for line in selected_sets_lines(result):
        s.say(line)
    from mechir_nig.cli._common import say_findings
    from mechir_nig.findings import pruning_findings

    say_findings(s.say, pruning_findings(result))
    s.say(f"wrote {out}")
    unpruned = next(r for r in result.runs if r["condition"] == "unpruned")
    summary = {"unpruned": {m: unpruned[m] for m in result.measures}, "evaluations": len(result.runs)}
    if incomplete is not None:
        summary["attribution_incomplete"] = incomplete
    s.record({"attribution": str(path.resolve()), "select_queries": sel, "eval_queries": ev}, summary)
    return summary
