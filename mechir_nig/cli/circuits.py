"""``mechir-nig circuits``: how the model computes relevance (issue 17), into the results folder.

Runs the steps of :data:`STEPS` in order (``--steps`` picks some):

- ``attribution_patching``: an attribution-patching sweep (``interventions.attribution_patch``) of TFC1
  pairs over ``--sites`` with the ``--verify-top`` largest estimates re-run exactly, into
  ``OUT/attribution_patching.safetensors``;
- ``interaction``: the interaction study (``experiments.interaction.interaction_study``): each attention
  interaction blocked per layer, held-out queries re-ranked, into ``OUT/interaction.json``;
- ``attention_groups``: the attention patterns of the same pairs summarised by token group
  (``interventions.attention.attention_by_group``) with one pair's pattern per head, into
  ``OUT/attention_groups.safetensors``;
- ``path_patching``: every head's direct path into the score (``interventions.path_patching``), into
  ``OUT/path_patching.safetensors``;
- ``path_patching_heads``: every earlier head path-patched into the query, key and value inputs of the
  ``--receiver-heads`` heads of layer >= 1 with the largest direct effect (the previous step's result,
  reused; or ``--receivers``), into ``OUT/path_patching_heads.safetensors`` (a ``PathPatchingResult``).

Hook-in point for more analyses: append a :class:`Step` to :data:`STEPS` whose function takes the
:class:`Circuits` context (model, collection, arguments, the TFC1 pairs and their alignment and the
heads' direct paths, computed once) and returns its result (saved under ``CIRCUIT_FILES`` by its name,
which the report reads).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mechir_nig.cli._common import (
    CommandError,
    Session,
    UsageError,
    _number,
    add_command,
    choice_list,
    option,
    positive_int,
    word,
)
from mechir_nig.cli._pairs import add_pair_options

if TYPE_CHECKING:  # `--help` must not import torch (tests/test_cli.py)
    from mechir_nig.models.protocol import HookedModel

GROUP_NAMES = ("cls", "query", "doc", "sep")  # interventions.attention.GROUPS


def interaction_list(text: str) -> list[list[str]]:
    """``"query:doc,doc:query"`` -> ``[["query", "doc"], ["doc", "query"]]`` (groups checked)."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        pieces = part.split(":")
        if len(pieces) != 2 or not all(p in GROUP_NAMES for p in pieces):
            raise argparse.ArgumentTypeError(
                f"{part!r} is not FROM:TO with groups among {','.join(GROUP_NAMES)} (e.g. query:doc)"
            )
        out.append(pieces)
    if not out:
        raise argparse.ArgumentTypeError("give at least one FROM:TO interaction, e.g. query:doc")
    return out


RECEIVER_HEADS = 2
"""``--receiver-heads``' default: how many heads receive in the ``path_patching_heads`` step."""


def receiver_list(text: str) -> list[tuple[str, int, int]]:
    """``"q:3.1,v:3.1"`` -> ``[("q", 3, 1), ("v", 3, 1)]`` (``--receivers``; the ranges are checked
    against the model by :func:`check_receivers`)."""
    out: list[tuple[str, int, int]] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        kind, _, where = part.partition(":")
        layer, _, head = where.partition(".")
        if kind not in ("q", "k", "v") or not layer.isdigit() or not head.isdigit():
            raise argparse.ArgumentTypeError(
                f"{part!r} is not KIND:LAYER.HEAD with KIND q, k or v (a head's query, key or value input), "
                "e.g. q:3.1"
            )
        item = (kind, int(layer), int(head))
        if item in out:
            raise argparse.ArgumentTypeError(f"{part!r} is listed twice; list each receiver once")
        out.append(item)
    if not out:
        raise argparse.ArgumentTypeError("give at least one receiver KIND:LAYER.HEAD, e.g. q:3.1")
    return out


def check_receivers(args: argparse.Namespace, model: HookedModel, layers: list[int]) -> None:
    """``--receivers`` / ``--receiver-heads`` against the model and ``--layers`` (a ``UsageError`` naming
    the fix), before any work."""
    if "path_patching_heads" not in args.steps:
        for name in ("receivers", "receiver_heads"):
            if getattr(args, name) is not None:
                raise UsageError(
                    f"--{name.replace('_', '-')} is for the path_patching_heads step, which --steps leaves out; "
                    "add it to --steps or drop the option"
                )
        return
    cfg = model.cfg
    if args.receivers is None:
        if not any(lyr >= 1 for lyr in layers):
            raise UsageError(
                f"--layers {','.join(map(str, layers))}: the path_patching_heads step chooses its receiver heads "
                "in layer 1 or later (a head of layer 0 has no earlier head); add a later layer, give "
                "--receivers, or leave path_patching_heads out of --steps"
            )
        later = [lyr for lyr in layers if lyr >= 1]
        if args.receiver_heads is not None and args.receiver_heads > len(later) * cfg.n_heads:
            raise UsageError(
                f"--receiver-heads {args.receiver_heads}: there are {len(later) * cfg.n_heads} heads of layer >= 1 "
                f"to choose from (layers {','.join(map(str, later))}, {cfg.n_heads} heads each); give at most "
                f"{len(later) * cfg.n_heads}"
            )
        return
    if args.receiver_heads is not None:
        raise UsageError("give --receivers or --receiver-heads, not both (--receivers names the receivers)")
    from mechir_nig.interventions.path_patching import head_receiver_problem

    for kind, layer, head in args.receivers:
        problem = head_receiver_problem(cfg, kind, layer, head)
        if problem:
            raise UsageError(f"--receivers {kind}:{layer}.{head}: {problem}")


def attention_weight(text: str) -> float:
    """argparse type of ``--interaction-weight``: a finite number >= 0 (0 blocks)."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(
            f"must be a finite number >= 0 (0 blocks, 0.5 halves the attention, 1 changes nothing), got {text}"
        )
    return value + 0.0  # -0 -> 0 (recorded and printed as 0)


@dataclass
class Circuits:
    """What every step reads: the session, arguments, model, collection and layers, and the TFC1 pairs
    (:meth:`pairs`) and their alignment (:meth:`alignment`), computed once."""

    s: Session
    args: argparse.Namespace
    model: HookedModel
    col: Any
    layers: list[int]
    _cache: dict[str, Any] = field(default_factory=dict)

    def pairs(self) -> tuple[list[Any], list[str]]:
        """The first ``--max-pairs`` candidate pairs TFC1 changes, and their perturbed documents."""
        if "pairs" not in self._cache:
            from mechir_nig.cli.patch import perturbed_pairs

            with self.s.stage("pairs"):
                pairs, perturbed, skipped = perturbed_pairs(self.s, self.model, self.col, self.args)
            if skipped:
                self.s.say(f"skipped {sum(skipped.values())} pairs TFC1 cannot change: {skipped}")
            if not pairs:
                raise CommandError(
                    f"TFC1 changes none of the candidate pairs of {self.col.name!r}; try --term or --pairs"
                )
            self._cache["pairs"] = (pairs, perturbed)
        return self._cache["pairs"]

    def alignment(self) -> Any:
        """``perturb.align`` of the pairs' clean and TFC1 documents."""
        if "alignment" not in self._cache:
            from mechir_nig.interventions import perturb

            pairs, perturbed = self.pairs()
            with self.s.stage("align"):
                self._cache["alignment"] = perturb.align(
                    self.model,
                    [p.query for p in pairs],
                    [p.doc for p in pairs],
                    perturbed,
                    max_length=self.args.max_length,
                )
        return self._cache["alignment"]

    def score_direct(self) -> Any:
        """Every head's direct path into the score (``path_patch``'s ``"score_direct"`` receiver) of the
        pairs, computed once: the ``path_patching`` step's result, and the ``path_patching_heads`` step's
        choice of receivers."""
        if "score_direct" not in self._cache:
            from mechir_nig.interventions.path_patching import path_patch

            self.s.say(
                f"path patching every head of {len(self.pairs()[0])} TFC1 pairs into the score (direct path)"
            )
            res = path_patch(
                self.model,
                self.alignment(),
                senders="heads",
                receivers="score_direct",
                direction=self.args.direction,
                metric=self.args.metric,
            )
            self._cache["score_direct"] = res["score_direct"]
        return self._cache["score_direct"]

    def pair_meta(self) -> dict[str, Any]:
        pairs, perturbed = self.pairs()
        return {
            "perturbation": "tfc1",
            "where": self.args.where,
            "term": self.args.term,
            "pairs": [{"query_id": p.query_id, "doc_id": p.doc_id} for p in pairs],
            "queries": [p.query for p in pairs],
            "perturbed_docs": perturbed,
            "model": str(self.model.cfg.model_name or self.args.model),
            "collection": self.col.name,
        }


@dataclass
class Step:
    """One analysis of the command: ``name`` (its ``--steps`` name and its ``CIRCUIT_FILES`` key) and
    ``run(circuits) -> (result, summary)``; the result is saved as ``OUT/CIRCUIT_FILES[name]``."""

    name: str
    run: Callable[[Circuits], tuple[Any, dict[str, Any]]]
    help: str


def _attribution_patching(c: Circuits) -> tuple[Any, dict[str, Any]]:
    from mechir_nig.interventions.attribution_patching import attribution_patch

    al = c.alignment()
    c.s.say(
        f"attribution patching {len(c.pairs()[0])} TFC1 pairs: sites {c.args.sites}, {len(c.layers)} layers, "
        f"verifying the top {c.args.verify_top}"
    )
    est = attribution_patch(
        c.model,
        al,
        sites=tuple(c.args.sites),
        direction=c.args.direction,
        metric=c.args.metric,
        layers=c.layers,
        verify_top=c.args.verify_top,
    )
    est.meta.update(c.pair_meta())
    v = est.meta["attribution"].get("verify") or {}
    return est, {"shapes": {k: list(t.shape) for k, t in est.values.items()}, "verify": v}


def _interaction(c: Circuits) -> tuple[Any, dict[str, Any]]:
    from mechir_nig.experiments.interaction import interaction_study

    res = interaction_study(
        c.model,
        c.col,
        interactions=None if c.args.interactions is None else [tuple(i) for i in c.args.interactions],
        layers=c.layers,
        k=c.args.depth,
        measures=c.args.measures,
        split_seed=c.args.split_seed,
        batch_size=c.args.batch_size,
        weight=c.args.interaction_weight,
        progress=c.s.progress,
    )
    c.s.say(res.to_markdown())
    return res, {"interactions": res.labels, "layers": res.layers, "eval_queries": len(res.eval_queries)}


def _attention_groups(c: Circuits) -> tuple[Any, dict[str, Any]]:
    from mechir_nig.interventions.attention import attention_by_group

    pairs, _ = c.pairs()
    view = c.args.view_pair
    if view >= len(pairs):
        raise UsageError(f"--view-pair {view}: only {len(pairs)} pairs are studied (0..{len(pairs) - 1})")
    res = attention_by_group(
        c.model,
        pairs,
        layers=c.layers,
        batch_size=c.args.batch_size,
        view_pair=view,
        max_length=c.args.max_length,
    )
    res.meta.update({k: v for k, v in c.pair_meta().items() if k in ("pairs", "model", "collection")})
    return res, {"pairs": len(res), "shape": list(res.values.shape)}


def _path_patching(c: Circuits) -> tuple[Any, dict[str, Any]]:
    direct = c.score_direct()  # the heads' paths straight into the score, reused by path_patching_heads
    direct.meta.update(c.pair_meta())
    return direct, {"receiver": "score_direct", "shape": list(direct.values["heads"].shape)}


def _path_patching_heads(c: Circuits) -> tuple[Any, dict[str, Any]]:
    from mechir_nig.interventions.path_patching import path_patch_into_heads

    given = c.args.receivers
    direct = None if given is not None else c.score_direct()
    res = path_patch_into_heads(
        c.model,
        c.alignment(),
        receivers=given,
        receiver_heads=c.args.receiver_heads or RECEIVER_HEADS,
        direct=direct,
        layers=c.layers,
        direction=c.args.direction,
        metric=c.args.metric,
    )
    if given is None:
        heads = ", ".join(f"L{lyr}H{h}" for lyr, h in res.meta["receivers_chosen"]["heads"])
        c.s.say(f"path patched every earlier head into the queries, keys and values of {heads}")
    else:  # only the inputs named
        c.s.say(
            f"path patched every earlier head into {', '.join(res.receivers)} (q, k, v: a head's query, key, "
            "value input)"
        )
    res.meta.update(c.pair_meta())
    return res, {"receivers": res.receivers, "chosen": res.meta["receivers_chosen"]}


STEPS: list[Step] = [
    Step("attribution_patching", _attribution_patching, "attribution patching of TFC1 pairs, verified"),
    Step("interaction", _interaction, "blocking each attention interaction per layer, re-ranking"),
    Step("attention_groups", _attention_groups, "attention patterns summarised by token group"),
    Step("path_patching", _path_patching, "every head's direct path into the score (path patching)"),
    Step(
        "path_patching_heads",
        _path_patching_heads,
        "every earlier head path-patched into the queries, keys and values of the --receiver-heads heads with "
        "the largest direct effect (or --receivers)",
    ),
]
"""The command's analyses, in order: the hook-in point for more (e.g. path patching)."""

EPILOG = """example:
  mechir-nig circuits --out results --max-pairs 8 --sites resid_pre,heads --verify-top 20 \\
      --interactions query:doc,doc:query,cls:doc --depth 20

  mechir-nig circuits --out results --steps path_patching,path_patching_heads --receivers q:3.1,v:3.1

Writes OUT/attribution_patching.safetensors, OUT/interaction.json, OUT/attention_groups.safetensors,
OUT/path_patching.safetensors and OUT/path_patching_heads.safetensors (see docs/circuits.md); `mechir-nig
report OUT` gets a section for each. Bi-encoders have no attention between query and document: their
interactions are within one text (cls, doc, sep)."""

HELP = (
    "circuits: attribution patching (verified), attention-interaction blocking, attention by group, "
    "path patching into the score and into later heads"
)
DESCRIPTION = (
    "How the model computes relevance: an attribution-patching sweep of TFC1 pairs with its largest "
    "estimates verified exactly, the re-ranking effect of blocking (or re-weighting) each attention "
    "interaction (e.g. query->doc) per layer on held-out queries, the attention patterns summarised by "
    "token group, every head's direct path into the score, and the earlier heads' paths into the "
    "queries, keys and values of the heads with the largest direct effect."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "circuits", run, HELP, DESCRIPTION, EPILOG)
    p.set_defaults(perturbation="tfc1")
    g = p.add_argument_group("steps")
    names = tuple(step.name for step in STEPS)
    g.add_argument(
        "--steps",
        type=choice_list(names),
        default=list(names),
        help="comma-separated analyses run: " + "; ".join(f"{s.name}: {s.help}" for s in STEPS),
    )
    g = p.add_argument_group("pairs (TFC1: a query term injected into the document)")
    add_pair_options(g, max_pairs=8)
    g.add_argument(
        "--where", choices=("start", "middle", "end"), default="end", help="where the term is injected"
    )
    g.add_argument(
        "--term", type=word, default=None, help="the term injected (default: from the query, see --term-rule)"
    )
    g.add_argument(
        "--term-rule",
        choices=("first", "idf"),
        default="first",
        help="without --term: the query's first non-stopword term, or its term of highest IDF",
    )
    option(g, "--max-length")
    g = p.add_argument_group("attribution patching")
    option(g, "--sites", default=["resid_pre", "heads"], help="comma-separated sites estimated")
    g.add_argument(
        "--verify-top", type=positive_int, default=10, help="the largest |estimates| re-run exactly"
    )
    g.add_argument(
        "--direction",
        choices=("denoise", "noise"),
        default="denoise",
        help="denoise: clean activations into the perturbed run; noise: the reverse",
    )
    g.add_argument(
        "--metric",
        choices=("recovery", "raw"),
        default="recovery",
        help="recovery = (patched - base) / (source - base); raw = patched - base",
    )
    option(g, "--layers", help="comma-separated layers studied by every step (default: all)")
    g = p.add_argument_group("interaction study")
    g.add_argument(
        "--interactions",
        type=interaction_list,
        default=None,
        help="comma-separated FROM:TO token groups blocked (default: query:doc,doc:query,cls:query,cls:doc "
        "for a cross-encoder; cls:doc,doc:cls,doc:sep for a bi-encoder)",
    )
    g.add_argument(
        "--interaction-weight",
        type=attention_weight,
        default=0.0,
        help="0 (default) blocks each interaction; w > 0 re-weights it instead: the attention weights "
        "multiplied by w, rows renormalised (1 changes nothing)",
    )
    g.add_argument(
        "--depth", type=positive_int, default=20, help="BM25 candidates re-ranked per held-out query"
    )
    option(g, "--measures")
    option(g, "--split-seed", help="seed of the query split (the held-out half is evaluated, as prune)")
    option(g, "--batch-size", default=16, help="texts or pairs per forward")
    g = p.add_argument_group("path patching into heads")
    g.add_argument(
        "--receiver-heads",
        type=positive_int,
        default=None,
        help=f"how many heads of layer >= 1 (among --layers) receive: those with the largest mean direct-path "
        f"effect on the score (default {RECEIVER_HEADS})",
    )
    g.add_argument(
        "--receivers",
        type=receiver_list,
        default=None,
        help="comma-separated receivers KIND:LAYER.HEAD (KIND q, k or v: the head's query, key or value input; "
        "for k and v, HEAD numbers the key/value heads under grouped-query attention), e.g. q:3.1,v:3.1, "
        "instead of the top --receiver-heads heads",
    )
    g = p.add_argument_group("attention by group")
    g.add_argument(
        "--view-pair", type=int, default=0, help="the pair whose attention pattern per head the report shows"
    )


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig.cli._common import say_findings
    from mechir_nig.cli.attribute import check_layers
    from mechir_nig.evaluation import _parse_measures
    from mechir_nig.findings import results_findings

    _parse_measures(args.measures)  # unknown names fail before any work
    if args.view_pair < 0:
        raise UsageError(f"--view-pair {args.view_pair}: give a pair index >= 0")
    if args.interaction_weight != 0 and "interaction" not in args.steps:
        raise UsageError(
            f"--interaction-weight {args.interaction_weight:g} is for the interaction step, which --steps leaves "
            "out; add it to --steps or drop the option"
        )
    col = s.collection()
    model = s.model()
    layers = check_layers(args.layers, model) or list(range(model.cfg.n_layers))
    check_receivers(args, model, layers)
    c = Circuits(s, args, model, col, layers)
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for step in STEPS:
        if step.name not in args.steps:
            continue
        with s.stage(step.name):
            result, summary[step.name] = step.run(c)
        out = s.save(step.name, result.save)
        results[step.name] = result
        s.say(f"wrote {out}")
    pairs_used = c.pair_meta()["pairs"] if "pairs" in c._cache else []
    say_findings(s.say, [sentence for _, sentence in results_findings(results)])
    s.record({"layers": layers, "pairs_used": pairs_used}, summary)
    return summary
