"""``mechir-nig patch``: perturb documents (TFC1, TDC, term removal, random term) and patch activations
between the clean and perturbed runs, into ``OUT/patching.safetensors``."""

from __future__ import annotations

import argparse
import re
import warnings
from typing import TYPE_CHECKING, Any

from mechir_nig.cli._common import (
    PATCH_SITES,
    CommandError,
    Session,
    add_command,
    option,
    patching_notes,
    site_summaries,
    word,
)
from mechir_nig.cli._pairs import add_pair_options, candidate_pairs

if TYPE_CHECKING:
    from mechir_nig.models.protocol import HookedModel

EPILOG = """example:
  mechir-nig patch --out results --perturbation tfc1 --where end --max-pairs 4 \\
      --sites resid_pre,attn_out,mlp_out,heads

Perturbations: tfc1 injects a query term (--term, default the query's first term); tdc injects the query
term of highest IDF in the collection; remove deletes a query term (--term, default the first query term
the document contains); random injects a random collection term that is not a query term (a control).
Pairs the perturbation cannot change are skipped and counted."""

PERTURBATIONS = ("tfc1", "tdc", "remove", "random")
SITES = PATCH_SITES


HELP = "activation patching between clean and perturbed (TFC1, TDC, ...) documents"
DESCRIPTION = (
    "Perturb the documents of a few pairs, align clean and perturbed inputs position by "
    "position and patch activations of one run into the other per layer and position (resid_pre, "
    "attn_out, mlp_out), head or neuron. Writes OUT/patching.safetensors and its JSON sidecar."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "patch", run, HELP, DESCRIPTION, EPILOG)
    g = p.add_argument_group("pairs")
    add_pair_options(g)
    g = p.add_argument_group("perturbation")
    g.add_argument(
        "--perturbation", choices=PERTURBATIONS, default="tfc1", help="how documents are perturbed"
    )
    g.add_argument(
        "--where", choices=("start", "middle", "end"), default="end", help="where a term is injected"
    )
    g.add_argument(
        "--term",
        type=word,
        default=None,
        help="the term injected (tfc1) or removed (remove) (default: from the query, see --term-rule)",
    )
    g.add_argument(
        "--term-rule",
        choices=("first", "idf"),
        default="first",
        help="tfc1 without --term: inject the query's first non-stopword term, or its term of highest IDF "
        "in the collection (as tdc); the injected terms are recorded in patching.safetensors.json",
    )
    g = p.add_argument_group("patching")
    option(
        g,
        "--sites",
        default=["resid_pre", "attn_out", "mlp_out", "heads"],
        help="comma-separated sites patched",
    )
    g.add_argument(
        "--direction",
        choices=("denoise", "noise"),
        default="denoise",
        help="denoise: run the perturbed input, patch in clean activations; noise: the reverse",
    )
    g.add_argument(
        "--metric",
        choices=("recovery", "raw"),
        default="recovery",
        help="recovery = (patched - base) / (source - base); raw = patched - base",
    )
    option(g, "--layers", help="comma-separated layers to patch (default: all)")
    option(
        g,
        "--chunk-size",
        default=None,
        help="patched rows per forward (memory only; default: about 65k tokens per forward)",
    )
    option(g, "--max-length")


def _injected_terms(args: argparse.Namespace, col: Any, queries: list[str]) -> dict[str, Any]:
    """tfc1: the rule and the term injected into each pair (``tfc1_term``), for the results' record."""
    if args.perturbation != "tfc1":
        return {}
    from mechir_nig.interventions import perturb

    idf = perturb.term_idf(col) if args.term_rule == "idf" and args.term is None else None
    chosen = [perturb.tfc1_term(q, args.term, idf) for q in queries]
    rule = chosen[0][1] if chosen else None
    return {
        "term_rule": rule,
        "term_rule_explained": perturb.TERM_RULES.get(rule or ""),
        "injected_terms": [c[0] for c in chosen],
    }


def injected_terms_line(meta: dict[str, Any]) -> str | None:
    """The sentence naming the terms TFC1 injected and why (``None`` for another perturbation).

    Example:
        >>> injected_terms_line({"term_rule": "given", "injected_terms": ["rice", "rice"]})
        "tfc1 injected 'rice' into pairs 0-1 (given: the term the caller gave (term= / --term))"
    """
    from mechir_nig.interventions.perturb import TERM_RULES

    terms, rule = meta.get("injected_terms"), meta.get("term_rule")
    if not terms or rule is None:
        return None
    if len(set(terms)) == 1:
        what = (
            f"{terms[0]!r} into pairs 0-{len(terms) - 1}" if len(terms) > 1 else f"{terms[0]!r} into pair 0"
        )
    else:
        shown = ", ".join(f"{t!r} (pair {i})" for i, t in enumerate(terms[:6]))
        what = shown + (f" and {len(terms) - 6} more" if len(terms) > 6 else "")
    return f"tfc1 injected {what} ({rule}: {TERM_RULES.get(rule, rule)})"


def perturbation(args: argparse.Namespace, col: Any) -> Any:
    """The ``(query, doc) -> doc`` function of ``--perturbation``."""
    from mechir_nig.interventions import perturb

    where = args.where
    if args.perturbation == "tfc1":
        idf = perturb.term_idf(col) if args.term_rule == "idf" and args.term is None else None
        return lambda q, d: perturb.tfc1(q, d, term=args.term, where=where, idf=idf)
    if args.perturbation == "tdc":
        idf = perturb.term_idf(col)
        return lambda q, d: perturb.tdc(q, d, idf, where=where)
    if args.perturbation == "random":
        vocab = sorted(perturb.term_idf(col))
        return lambda q, d: perturb.random_term(q, d, vocab, seed=args.seed, where=where)

    def remove(q: str, d: str) -> str:
        term = args.term
        if term is None:
            words = set(re.findall(r"\w+", d.lower()))
            found = [t for t in perturb.query_terms(q) if t in words]
            if not found:
                from mechir_nig.errors import InputError

                raise InputError("the document contains no query term")
            term = found[0]
        return perturb.remove_term(q, d, term)

    return remove


def perturbed_pairs(
    s: Session, model: HookedModel, col: Any, args: argparse.Namespace
) -> tuple[list, list[str], dict]:
    """The first ``--max-pairs`` candidate pairs the perturbation changes (as the model sees them)."""
    from mechir_nig.errors import InputError
    from mechir_nig.interventions import perturb

    fn = perturbation(args, col)
    chosen: list = []
    perturbed: list[str] = []
    skipped: dict[str, int] = {}
    for pair in candidate_pairs(col, args):
        if len(chosen) == args.max_pairs:
            break
        try:
            new = fn(pair.query, pair.doc)
            perturb.align(model, [pair.query], [pair.doc], [new], max_length=args.max_length)
        except InputError as exc:
            why = _reason(str(exc))
            skipped[why] = skipped.get(why, 0) + 1
            continue
        chosen.append(pair)
        perturbed.append(new)
    return chosen, perturbed, skipped


def _reason(message: str) -> str:
    """A skip reason without the pair's texts, so that equal reasons are counted together."""
    message = re.sub(r"^pair \d+ \(query .*?\): ", "", message.split("; ")[0])
    return re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", "...", message)


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from mechir_nig.cli.attribute import check_layers
    from mechir_nig.experiments.patching import patch_study
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import PatchingResult

    col = s.collection()
    model = s.model()
    layers = check_layers(args.layers, model) or list(range(model.cfg.n_layers))
    with s.stage("pairs"):
        pairs, perturbed, skipped = perturbed_pairs(s, model, col, args)
    if skipped:
        s.say(f"skipped {sum(skipped.values())} pairs the perturbation cannot change: {skipped}")
    if not pairs:
        raise CommandError(
            f"--perturbation {args.perturbation} changes none of the candidate pairs of {col.name!r}; try another "
            "--perturbation, --term or --pairs"
        )
    qs, ds = [p.query for p in pairs], [p.doc for p in pairs]
    with s.stage("align"):
        al = perturb.align(model, qs, ds, perturbed, max_length=args.max_length)
    s.say(
        f"patching {len(pairs)} pairs ({args.perturbation}, {args.where}, {args.direction}): sites {args.sites}, "
        f"{len(layers)} layers, {al.clean.input_ids.shape[1]} aligned positions"
    )
    parts: dict[str, list[PatchingResult]] = {site: [] for site in args.sites}
    bar = tqdm(  # under torchrun every call below is sharded over the ranks; rank 0 draws the bar
        total=len(args.sites) * len(layers),
        desc="patching",
        unit="layer",
        disable=not (s.progress and s.main),
    )
    with s.stage("patch"), bar, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for site in args.sites:
            # sites patched per position or neuron: one call per layer, for the progress bar (the same
            # numbers as one call); heads are cheap next to the two cached runs a call starts with
            groups = [layers] if site == "heads" else [[layer] for layer in layers]
            for group in groups:
                bar.set_postfix_str(f"{site} L{group[0]}" if len(group) == 1 else site)
                parts[site].append(
                    patch_study(
                        model,
                        al,
                        sites=(site,),
                        direction=args.direction,
                        metric=args.metric,
                        layers=group,
                        chunk_size=args.chunk_size,
                    )
                )
                bar.update(len(group))
    for message in dict.fromkeys(str(w.message) for w in caught) if s.main else ():  # each distinct one once
        warnings.warn(message, stacklevel=1)
    first = parts[args.sites[0]][0]
    result = PatchingResult(
        values={site: torch.cat([r.values[site] for r in rs], dim=1) for site, rs in parts.items()},
        patched={site: torch.cat([r.patched[site] for r in rs], dim=1) for site, rs in parts.items()},
        clean_scores=first.clean_scores,
        corrupted_scores=first.corrupted_scores,
        layers=layers,
        direction=first.direction,
        metric=first.metric,
        eps=first.eps,
        base_mask=first.base_mask,
        groups=first.groups,
        changed=first.changed,
        clean_tokens=first.clean_tokens,
        corrupted_tokens=first.corrupted_tokens,
        meta={
            "perturbation": args.perturbation,
            "where": args.where,
            "term": args.term,
            **_injected_terms(args, col, qs),
            "pairs": [{"query_id": p.query_id, "doc_id": p.doc_id} for p in pairs],
            "queries": qs,
            "perturbed_docs": perturbed,
            "model": str(model.cfg.model_name or args.model),
            "collection": col.name,
        },
    )
    out = s.save("patching", result.save)
    line = injected_terms_line(result.meta)
    if line is not None:
        s.say(line)
    delta = result.corrupted_scores - result.clean_scores
    s.say(
        f"score change perturbed - clean: mean {float(delta.mean()):+.4f} "
        f"(min {float(delta.min()):+.4f}, max {float(delta.max()):+.4f})"
    )
    for site, what, cells in site_summaries(result):
        s.say(f"{site}: {result.metric} {what}: {cells}")
    for note in patching_notes(result):
        s.say(f"note: {note}")
    from mechir_nig.cli._common import say_findings
    from mechir_nig.findings import patching_findings

    say_findings(s.say, patching_findings(result))
    s.say(f"wrote {out} (+ {out.name}.json)")
    summary = {
        "pairs": len(pairs),
        "skipped": skipped,
        "mean_score_change": float(delta.mean()),
        "shapes": {site: list(v.shape) for site, v in result.values.items()},
    }
    s.record({"layers": layers, "pairs_used": result.meta["pairs"]}, summary)
    return summary
