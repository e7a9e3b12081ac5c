"""``mechir-nig compare``: the cross-collection study (shared and OOD neurons, transfer pruning) into
``OUT/compare.json``."""

from __future__ import annotations

import argparse
import re
from typing import Any

from mechir_nig.cli._common import (
    ABLATION_MODES,
    CommandError,
    Session,
    UsageError,
    add_command,
    add_nig_options,
    add_pair_options,
    check_collection_spec,
    choice_list,
    nig_settings,
    option,
    positive_int,
    say_findings,
    str_list,
)

EPILOG = """example:
  mechir-nig compare --model cross-encoder/ms-marco-MiniLM-L-6-v2 --out compare \\
      --collections vaswani=irds:vaswani cisi=../shared/data/cisi --in-domain vaswani \\
      --max-relevant 2 --max-nonrelevant 2 --negatives-from-bm25 --max-queries 20 --n-steps 8

Each collection's attribution is kept in OUT/NAME/attribution.safetensors: reused when complete, resumed
when a run was stopped (run the same command again). The transfer pruning studies are kept in
OUT/TARGET/pruning-from-SOURCE.json and reused by a command with the same settings."""

HELP = "compare collections: neurons shared by all, out-of-domain neurons, transfer pruning"
DESCRIPTION = (
    "The cross-collection study of Vast et al. (ICTIR 2024): NIG neuron sets per collection and scheme "
    "(named scheme@collection), their overlaps against chance (exact hypergeometric p-values), the core "
    "neurons (in every collection's set) and OOD neurons (in the out-of-domain collections' sets, not the "
    "in-domain one), and transfer pruning: the set selected on one collection ablated on another's "
    "held-out queries, against that collection's own set and random sets."
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def collection_arg(text: str) -> tuple[str, str]:
    """argparse type: ``NAME=SPEC`` (a collection name and a ``--collection`` spec)."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=SPEC; e.g. vaswani=irds:vaswani or cisi=path/to/cisi"
        )
    if not _NAME.match(name):
        raise argparse.ArgumentTypeError(
            f"collection name {name!r}: use letters, digits, '_', '.' and '-' (it names sets and a folder)"
        )
    return name, spec


def add_parser(sub: Any) -> None:
    p = add_command(sub, "compare", run, HELP, DESCRIPTION, EPILOG, collection=False)
    g = p.add_argument_group("collections")
    g.add_argument(
        "--collections",
        type=collection_arg,
        nargs="+",
        required=True,
        metavar="NAME=SPEC",
        help="two or more collections, each NAME=SPEC with SPEC as attribute's --collection "
        "('irds:<id>', a folder, 'embedded')",
    )
    g.add_argument(
        "--in-domain",
        default=None,
        metavar="NAME",
        help="the collection the model was trained on; the others are out-of-domain (OOD rows need it)",
    )
    g = p.add_argument_group("pairs")
    g.add_argument(
        "--max-queries",
        type=positive_int,
        default=None,
        help="attribute at most this many selection queries per collection (default: the whole half)",
    )
    add_pair_options(g)
    add_nig_options(p)
    g = p.add_argument_group("sets")
    g.add_argument(
        "--schemes",
        type=str_list,
        default=["relevant", "difference"],
        help="comma-separated selection schemes (relevant, nonrelevant, difference, abs_mean, mean_abs) or "
        "fusions such as 'rrf(relevant;nonrelevant)' (';' between the fused schemes)",
    )
    option(g, "--fractions", default=[0.01], help="top shares of the attributed neurons")
    g = p.add_argument_group("transfer pruning")
    g.add_argument("--no-transfer", action="store_true", help="compare the sets only, prune nothing")
    g.add_argument(
        "--transfer-scheme", default=None, help="the scheme of the pruned sets (default: the first scheme)"
    )
    g.add_argument(
        "--transfer-fraction",
        type=float,
        default=None,
        help="the share of the pruned sets (default: the first fraction)",
    )
    option(
        g,
        "--modes",
        type=choice_list(ABLATION_MODES[:1] + ABLATION_MODES[2:3]),
        default=["baseline"],
        help="ablation modes of the pruned sets (zero, baseline)",
    )
    option(g, "--seeds", help="random sets per evaluated collection")
    g.add_argument(
        "--depth", type=positive_int, default=50, help="BM25 candidates re-ranked per held-out query"
    )
    g.add_argument(
        "--max-eval-queries",
        type=positive_int,
        default=None,
        help="evaluate at most this many held-out queries per collection (default: the whole half)",
    )
    option(g, "--measures", default=["nDCG@10"], help="ir_measures names (the first gets the statistics)")
    g.add_argument(
        "--resamples",
        type=positive_int,
        default=10000,
        help="bootstrap resamples and Monte Carlo sign vectors of the statistics",
    )
    g = p.add_argument_group("batching")
    option(g, "--batch-size", default=8)
    option(g, "--internal-batch-size")


def _schemes(text: list[str]) -> list[str]:
    """The schemes with ``;`` inside a fusion turned into the library's ``,``."""
    return [s.replace(";", ",") for s in text]


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig.cli.attribute import check_layers
    from mechir_nig.data import load_collection
    from mechir_nig.errors import InputError
    from mechir_nig.experiments.compare import COMPARE_NAME, _check_scheme, compare_collections

    names = [n for n, _ in args.collections]
    if len(names) < 2:
        raise UsageError("--collections needs at least two NAME=SPEC collections to compare")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"--collections names {dup} more than once; give each collection its own name")
    if args.in_domain is not None and args.in_domain not in names:
        raise UsageError(f"--in-domain {args.in_domain}: not one of the --collections names {names}")
    for _, spec in args.collections:
        check_collection_spec(spec)
    schemes = _schemes(args.schemes)
    try:
        for sch in [*schemes, *([args.transfer_scheme] if args.transfer_scheme else [])]:
            _check_scheme(sch.replace(";", ","))
    except InputError as exc:
        raise UsageError(f"--schemes: {exc}") from exc
    if args.transfer_fraction is not None and not 0 < args.transfer_fraction <= 1:
        raise UsageError(f"--transfer-fraction must be in (0, 1], got {args.transfer_fraction}")
    collections = {}
    with s.stage("load_collection"):
        for name, spec in args.collections:
            collections[name] = load_collection(spec)
    model = s.model()
    layers = check_layers(args.layers, model)
    settings = nig_settings(args, layers)
    s.say(
        f"comparing {', '.join(f'{n} ({len(c.queries)} queries)' for n, c in collections.items())} with "
        f"{args.model}, schemes {', '.join(schemes)}, fractions {', '.join(f'{f:g}' for f in args.fractions)}"
    )
    s.out.mkdir(parents=True, exist_ok=True)
    with s.stage("compare"):
        try:
            result = compare_collections(
                model,
                collections,
                in_domain=args.in_domain,
                schemes=schemes,
                fractions=args.fractions,
                settings=settings,
                out_dir=s.out,
                max_relevant_per_query=args.max_relevant,
                max_nonrelevant_per_query=args.max_nonrelevant,
                negatives_from_bm25=args.negatives_from_bm25,
                k=args.k,
                seed=args.seed,
                split_seed=args.split_seed,
                max_queries=args.max_queries,
                batch_size=args.batch_size,
                transfer=not args.no_transfer,
                transfer_scheme=args.transfer_scheme.replace(";", ",") if args.transfer_scheme else None,
                transfer_fraction=args.transfer_fraction,
                modes=args.modes,
                seeds=args.seeds,
                depth=args.depth,
                max_eval_queries=args.max_eval_queries,
                measures=args.measures,
                n_resamples=args.resamples,
                progress=s.progress,
            )
        except InputError as exc:
            raise CommandError(str(exc)) from exc
    path = s.out / COMPARE_NAME
    result.settings["collections"] = dict(args.collections)
    result.save(path)
    s.wrote(path)
    md = path.with_suffix(".md")
    md.write_text(result.to_markdown() + "\n", encoding="utf-8")
    s.wrote(md)
    for name, info in result.attributions.items():
        s.say(f"{name}: attribution {info['source']} ({info['pairs']} pairs)")
    s.say(f"wrote {path} and {md}")
    summary = {
        "sets": len(result.sets),
        "overlaps": len(result.overlaps),
        "transfer_rows": len(result.transfer),
    }
    s.record({"collections": dict(args.collections)}, summary)
    say_findings(s.say, result.findings())
    return summary
