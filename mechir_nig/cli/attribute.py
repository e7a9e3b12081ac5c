"""``mechir-nig attribute``: NIG of judged pairs per label, streamed into ``OUT/attribution.safetensors``."""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mechir_nig.cli._common import (
    CommandError,
    Session,
    UsageError,
    add_command,
    add_nig_options,
    add_pair_options,
    nig_settings,
    option,
    positive_int,
)

if TYPE_CHECKING:
    from mechir_nig.models.protocol import HookedModel

EPILOG = """example:
  mechir-nig attribute --model all-MiniLM-L6-v2 --collection embedded --out results --n-steps 16
  mechir-nig attribute --model cross-encoder/ms-marco-MiniLM-L-6-v2 --collection irds:vaswani \\
      --out vaswani --max-relevant 3 --max-nonrelevant 3 --negatives-from-bm25 --resume

By default only the selection half of the judged queries is attributed (--queries selection), so that
`mechir-nig prune --out DIR` can evaluate the selected neurons on the other, held-out half."""

HELP = "NIG of judged pairs per label (relevant / non-relevant), checkpointed and resumable"
DESCRIPTION = (
    "Neuron Integrated Gradients of judged (query, document) pairs, summed per label into "
    "OUT/attribution.safetensors (running sums: resumable with --resume, mergeable)."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "attribute", run, HELP, DESCRIPTION, EPILOG)
    g = p.add_argument_group("pairs")
    g.add_argument(
        "--queries",
        choices=("selection", "all"),
        default="selection",
        help="which judged queries: 'selection' (one half, split with --split-seed; prune evaluates on the "
        "other half) or 'all'",
    )
    add_pair_options(g)
    add_nig_options(p)
    g = p.add_argument_group("batching and checkpoints")
    option(g, "--batch-size", default=8)
    option(g, "--internal-batch-size")
    g.add_argument(
        "--checkpoint-every", type=positive_int, default=256, help="write the checkpoint every N pairs"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT/attribution.safetensors (same pairs, settings and model weights)",
    )
    g.add_argument("--overwrite", action="store_true", help="start again over an existing attribution")


def check_layers(layers: list[int] | None, model: HookedModel, option: str = "--layers") -> list[int] | None:
    """Refuse layers the model lacks, in command-line terms."""
    if layers is None:
        return None
    n = model.cfg.n_layers
    bad = [x for x in layers if x >= n]
    if bad:
        raise UsageError(f"{option} {','.join(map(str, bad))}: the model has {n} layers (0-{n - 1})")
    if len(set(layers)) != len(layers):
        raise UsageError(f"{option} repeats a layer; list each once")
    return sorted(layers)


def selection_queries(col: Any, which: str, split_seed: int) -> list[str]:
    """The queries to attribute: the selection half of ``split_queries`` or every query of the collection."""
    from mechir_nig.experiments.pruning import split_queries

    if which == "all":
        return list(col.queries)
    sel, _ = split_queries(col, seed=split_seed)
    return [q for q in sel if q in col.queries]


@contextlib.contextmanager
def _resume_advice(args: argparse.Namespace, s: Session) -> Iterator[None]:
    """A ``--resume`` with other options than the stopped run's: name the command that started it (from
    run.json) instead of advising another folder, which would lose the checkpoint."""
    from mechir_nig.errors import InputError

    try:
        yield
    except InputError as exc:
        history = s.previous.get("history")
        runs = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
        started = next((h.get("argv") for h in reversed(runs) if h.get("command") == "attribute"), None)
        if not (args.resume and "was made with" in str(exc) and started):
            raise
        why = str(exc).split("; use another file")[0]
        raise CommandError(
            f"{why}. It was started as: mechir-nig {shlex.join(str(a) for a in started)}; run that again "
            "with --resume to continue it (or pass --overwrite to start again)"
        ) from exc


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig._io import OutputLock
    from mechir_nig.data import bm25_candidates, judged_pairs
    from mechir_nig.experiments.attribute import attribute_collection

    if args.max_relevant == 0 and args.max_nonrelevant == 0:
        raise UsageError(
            "--max-relevant 0 --max-nonrelevant 0 selects no pair: raise one of them, or leave it out for "
            "every pair of that label"
        )
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the attribution and --overwrite starts again: pass one of them")
    from mechir_nig.runtime.distributed import context
    from mechir_nig.runtime.shards import manifest_path, remove_run

    path = s.path("attribution")
    started = path.exists() or manifest_path(path).exists()
    if started and not args.resume and not args.overwrite:
        raise UsageError(
            f"{path} exists: pass --resume to continue it (same pairs, settings and model), --overwrite "
            "to start again, or another --out"
        )
    col = s.collection()
    model = s.model()
    ctx = context("auto", device=model.device)  # under torchrun: joins the process group
    if started and args.overwrite and not args.resume:
        if ctx.is_main:  # the result, its sidecar, and a sharded run's manifest and per-rank parts
            remove_run(path)
        ctx.barrier()
    layers = check_layers(args.layers, model)
    if args.side is not None and model.pairwise:
        raise UsageError(
            "--side is for bi-encoders; a cross-encoder interpolates query and document together"
        )
    with s.stage("pairs"):
        qids = selection_queries(col, args.queries, args.split_seed)
        if not qids:
            raise CommandError(f"collection {col.name!r} has no judged query to attribute")
        cands = bm25_candidates(col, k=args.k, query_ids=qids) if args.negatives_from_bm25 else None
        pairs = judged_pairs(
            col,
            max_relevant_per_query=args.max_relevant,
            max_nonrelevant_per_query=args.max_nonrelevant,
            candidates=cands,
            sample_nonrelevant_from_candidates=cands is not None,
            query_ids=qids,
            seed=args.seed,
        )
    if not pairs:
        raise CommandError(
            f"no judged pair was selected from collection {col.name!r} ({len(qids)} queries, "
            f"{pairs.report.get('relevant', 0)} relevant, {pairs.report.get('nonrelevant', 0)} non-relevant): "
            "check its qrels, use --queries all, or add --negatives-from-bm25"
        )
    s.say(
        f"attributing {len(pairs)} pairs ({pairs.report['relevant']} relevant, {pairs.report['nonrelevant']} "
        f"non-relevant) of {len(qids)} queries of {col.name!r} with {args.model} "
        f"({model.cfg.n_layers} layers x {model.cfg.d_mlp} neurons), {args.n_steps} steps"
    )
    settings = nig_settings(args, layers)
    plan = {"query_ids": qids, "queries": args.queries, "split_seed": args.split_seed}
    with s.stage("attribute"), _resume_advice(args, s):
        stats = attribute_collection(
            model,
            pairs,
            settings=settings,
            batch_size=args.batch_size,
            checkpoint=path,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=s.progress,
            collection=col.name,
            # the queries the ranking is computed on, for `prune` (select on these, evaluate on the
            # others): in the checkpoint from its first write, so a stopped run's says it too
            meta=plan,
        )
    stats.meta.update(plan)  # a checkpoint resumed from an older version may lack them
    if ctx.is_main:  # every rank holds the merged statistics; rank 0 writes them
        with OutputLock(path):
            stats.save(path)
    s.wrote(path)
    summary: dict[str, Any] = {"counts": dict(stats.counts), "n_pairs": len(pairs), "queries": len(qids)}
    top = top_neurons_line(stats)
    if top:
        s.say(top)
    if args.n_steps == "auto":
        used = stats.n_steps_used()
        used = used[used >= 0].float()
        st = {"min": int(used.min()), "median": float(used.median()), "max": int(used.max())}
        summary["n_steps_used"] = st
        s.say(f"steps per pair (auto): min {st['min']}, median {st['median']:g}, max {st['max']}")
    s.say(f"wrote {path} (+ {path.name}.json)")
    s.record({"query_ids": qids, "pairs_report": pairs.report}, summary)
    return summary


def top_neurons_line(stats: Any, n: int = 5) -> str:
    """The ``n`` neurons of largest relevant-minus-non-relevant mean NIG (or of the one label present)."""
    counts = stats.counts
    if counts.get("relevant") and counts.get("nonrelevant"):
        scheme = "difference"
    elif counts.get("relevant"):
        scheme = "relevant"
    elif counts.get("nonrelevant"):
        scheme = "nonrelevant"
    else:
        return ""
    scores = stats.scheme_scores(scheme)
    top = scores.flatten().topk(min(n, scores.numel())).indices.tolist()
    d = scores.shape[1]
    cells = ", ".join(f"L{i // d}N{i % d} {float(scores.flatten()[i]):+.4f}" for i in top)
    return f"top neurons by {scheme} mean NIG: {cells}"
