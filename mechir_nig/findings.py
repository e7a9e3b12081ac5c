"""Findings: one sentence per result, generated from the numbers and their statistics.

The sentences the HTML report puts at its top (a "Findings" section, each linking to its result's
section) and every command prints at its end. Pruning sentences use :meth:`PruningResult.statistics`
(the drop from the unpruned model with its bootstrap interval, the comparison with random sets of the
same size; p-values Holm-adjusted across the study's fractions and modes), faithfulness sentences
:meth:`FaithfulnessResult.statistics` (mean Spearman over pairs with its interval), patching sentences
the largest summarised effect with its raw score change, leaving out tiny perturbations
(``interventions.patching.SMALL_CHANGE``). Caveats (a measure at its ceiling, tiny score changes) are
sentences of their own.

Example:
    >>> import os, tempfile
    >>> from mechir_nig.findings import folder_findings
    >>> from mechir_nig.interventions.patching import patch
    >>> from mechir_nig.interventions.perturb import align, tfc1
    >>> out = tempfile.mkdtemp()  # a results folder, as a command writes it
    >>> res = patch(ce, align(ce, queries, docs, tfc1), sites="heads", layers=[5])
    >>> _ = res.save(os.path.join(out, "patching.safetensors"))
    >>> for section, sentence in folder_findings(out):
    ...     print(section, "|", sentence[:30])
    patching | The perturbation changes the s
    patching | heads: restoring the clean act
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ALPHA",
    "attention_group_findings",
    "attribution_patching_findings",
    "faithfulness_findings",
    "folder_findings",
    "format_p",
    "interaction_findings",
    "patching_findings",
    "patching_notes",
    "path_patching_findings",
    "path_patching_heads_findings",
    "pruning_findings",
    "results_findings",
]

ALPHA = 0.05
"""A (Holm-adjusted) p-value below this is reported as a difference; at or above, as indistinguishable."""

_ACTION = {
    "baseline": "Returning the top {pct} NIG neurons ({n}) to their baseline values",
    "zero": "Zeroing the top {pct} NIG neurons ({n})",
    "mean": "Setting the top {pct} NIG neurons ({n}) to their mean values",
    "resample": "Resampling the top {pct} NIG neurons ({n})",
}


def format_p(p: float) -> str:
    """``"p < 0.001"`` or ``"p = 0.03"`` (two significant digits).

    Example:
        >>> format_p(0.0004), format_p(0.61234), format_p(0.0123)
        ('p < 0.001', 'p = 0.61', 'p = 0.012')
    """
    if math.isnan(p):
        return "p undefined"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {float(f'{p:.2g}'):g}"


def _ci(bounds: Any, digits: int = 3, confidence: float = 0.95) -> str:
    low, high = bounds
    sep = "-" if low >= 0 and high >= 0 else " to "
    return f"[{confidence:.0%} CI {low:.{digits}f}{sep}{high:.{digits}f}]".replace("%", " %")


def _pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def pruning_findings(result: Any, measure: str | None = None, *, n_resamples: int = 10000) -> list[str]:
    """One sentence per (mode, fraction) of the ``nig_top`` condition of a ``PruningResult`` (the first
    measure by default), and the ceiling caveat.

    Example:
        >>> from mechir_nig.experiments.pruning import pruning_study, split_queries
        >>> sel, held_out = split_queries(col, seed=0)
        >>> ranking = torch.rand(6, 1536, generator=torch.Generator().manual_seed(0))  # e.g. NIG over sel
        >>> study = pruning_study(
        ...     ce, col, bm25_candidates(col, k=5), ranking, scheme="random", fractions=(0.01,), seeds=1,
        ...     modes="zero", select_queries=sel, eval_queries=held_out[:3], measures=("nDCG@10",), progress=False,
        ... )
        >>> for line in pruning_findings(study, n_resamples=200):
        ...     print(" ".join(line.split()[:7]), "...")
        Zeroing the top 1 % NIG neurons ...
        63 of the 92 top 1 % ...
        p-values are Holm-adjusted across the study's fractions ...
    """
    m = measure or result.measures[0]
    rows = [
        r
        for r in result.statistics(m, n_resamples=n_resamples)
        if r["condition"] == "nig_top" and r["n_neurons"]
    ]
    out = []
    for r in rows:
        action = _ACTION.get(r["mode"], f"Ablating ({r['mode']}) the top {{pct}} NIG neurons ({{n}})").format(
            pct=_pct(r["fraction"]), n=r["n_neurons"]
        )
        lo, hi = r["drop_ci"]
        nq = f"{r['n_queries']} held-out queries"
        change = (  # the interval of the amount the sentence names: of the rise when the measure rises
            f"lowers {m} by {r['drop']:.3f} {_ci((lo, hi))}"
            if r["drop"] > 0
            else f"raises {m} by {-r['drop']:.3f} {_ci((-hi, -lo))}"
        )
        if r["drop"] == 0:
            change = f"leaves {m} unchanged"
        vs = r["vs_random"]
        if vs is None:
            if r["p_holm"] < ALPHA:
                out.append(f"{action} {change} ({format_p(r['p_holm'])} against unpruned, {nq}).")
            else:
                out.append(
                    f"{action} {change}: indistinguishable from the unpruned model ({format_p(r['p_holm'])}, {nq})."
                )
            continue
        if vs["p_holm"] < ALPHA:
            if vs["ratio"] is not None and vs["ratio"] > 0:
                against = f"{vs['ratio']:.0f}x the random sets"
            else:
                against = f"against {vs['random_drop']:+.4f} for the random sets"
            out.append(f"{action} {change}, {against} ({format_p(vs['p_holm'])}, {nq}).")
        else:
            out.append(
                f"{action} {change}; at {_pct(r['fraction'])} ({r['mode']}) the NIG set is indistinguishable "
                f"from random ({format_p(vs['p_holm'])}, {nq})."
            )
    out.extend(_baseline_active(result, sorted({r["fraction"] for r in rows})))
    ceiling = result.ceiling(m)["warning"]
    if ceiling:
        out.append(f"Caveat: {ceiling}.")
    if rows:
        out.append(
            f"p-values are Holm-adjusted across the study's fractions and modes; intervals are percentile "
            f"bootstraps over the held-out queries ({rows[0]['n_queries']})."
        )
    return out


def _baseline_active(result: Any, fractions: list[float]) -> list[str]:
    """Per fraction: how many of the NIG set's neurons are active on the NIG baseline input, next to the
    random sets' counts (none when the study did not measure it)."""
    out = []
    for f in fractions:
        top = result.sets.get(f"nig_top|{f:g}|0")
        counted = None if top is None else result.active_on_baseline(top)
        if counted is None:
            continue
        random = [
            c
            for key, members in result.sets.items()
            if key.startswith(f"random|{f:g}|") and (c := result.active_on_baseline(members)) is not None
        ]
        others = ""
        if random:
            ks = sorted(k for k, _ in random)
            others = f" (random sets: {ks[0]}-{ks[-1]} of {random[0][1]})"
        out.append(
            f"{counted[0]} of the {counted[1]} top {_pct(f)} NIG neurons are active on the NIG baseline input"
            f"{others}: returning them to their baseline values does not silence them."
        )
    return out


def faithfulness_findings(result: Any, *, n_resamples: int = 10000) -> list[str]:
    """One sentence per ablation mode of a ``FaithfulnessResult``: the mean Spearman of NIG with the
    single-neuron score drops (and the other predictors'), with intervals over pairs; and the top-K NIG
    vs random curve where kept per pair.

    Example:
        >>> from mechir_nig.experiments.faithfulness import faithfulness
        >>> faith = faithfulness(ce, queries, docs, k=3, curve_k=3, seeds=1, interventions=("zero",), n_steps=4)
        >>> faithfulness_findings(faith, n_resamples=200)[0]  # doctest: +ELLIPSIS
        "Under zero ablation, NIG ranks each pair's 3 neurons by their score drop with a mean Spearman ρ of ... over 2 pairs ..."
    """
    out = []
    names = {"nig": "NIG", "act_x_grad": "activation x gradient", "activation": "activation magnitude"}
    for mode, st in result.statistics(n_resamples=n_resamples).items():
        cor = st["correlations"]
        if "nig" not in cor or cor["nig"]["n"] == 0:
            continue
        c = cor["nig"]
        others = "; ".join(
            f"{names.get(p, p)} {v['mean']:+.2f} {_ci(v['ci'], 2)}"
            for p, v in cor.items()
            if p != "nig" and v["n"]
        )
        sentence = (
            f"Under {mode} ablation, NIG ranks each pair's {result.k} neurons by their score drop with a mean "
            f"Spearman ρ of {c['mean']:+.2f} {_ci(c['ci'], 2)} over {_pairs(c['n'])} "
            f"({format_p(c['p'])} against 0)"
        )
        out.append(sentence + (f"; {others}." if others else "."))
        cur = st.get("curve")
        if cur and cur["n"]:
            verdict = "" if cur["p"] < ALPHA else ": not distinguishable from random"
            out.append(
                f"Ablating each pair's top {cur['k']} NIG neurons together ({mode}) changes the score by "
                f"{-cur['mean']:+.4f} relative to {cur['k']} random neurons {_ci((-cur['ci'][1], -cur['ci'][0]), 4)} "
                f"({format_p(cur['p'])}, {_pairs(cur['n'])}){verdict}."
            )
        if c["n"] < 10:
            out.append(f"Caveat: only {_pairs(c['n'])}: the intervals are wide.")
    return out


def patching_findings(result: Any) -> list[str]:
    """Sentences of a ``PatchingResult``: the perturbation's score change, the largest mean effect per
    site (with its raw score change), and the caveats (tiny perturbations left out, layer-0 zeros).

    Example:
        >>> from mechir_nig.interventions.patching import patch
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> res = patch(ce, align(ce, queries, docs, tfc1), sites="heads", layers=[4, 5])
        >>> patching_findings(res)[0]  # doctest: +ELLIPSIS
        'The perturbation changes the score by +0.02... on average (perturbed - clean, 2 pairs).'
    """
    import torch

    from mechir_nig.interventions.patching import SITES

    n = len(result)
    delta = (result.corrupted_scores - result.clean_scores).double()
    out = [
        f"The perturbation changes the score by {float(delta.mean()):+.4f} on average (perturbed - clean, {n} pairs)."
    ]
    keep = result.summary_pairs()
    used = int(keep.sum())
    direction = "restoring the clean" if result.direction == "denoise" else "patching in the perturbed"
    for site in result.sites:
        v = torch.nan_to_num(result[site].double())[keep]
        raw = result.raw(site).double()[keep]
        kind = SITES.get(site, ("", ""))[1]
        if kind in ("pos", "head_pos") and result.changed is not None:
            ch = result.changed[keep].to(v.dtype)
            shape = ch[:, None, :] if kind == "pos" else ch[:, None, None, :]
            v, raw = (v * shape).sum(-1), (raw * shape).sum(-1)
            where = "at the changed positions"
        else:
            where = ""
        mean, raw_mean = v.mean(0), raw.mean(0)
        if mean.numel() == 0:
            continue
        j = int(mean.abs().flatten().argmax())
        val, rv = float(mean.flatten()[j]), float(raw_mean.flatten()[j])
        if site.endswith("_set"):
            label = (
                f"member L{result.members[j][0]}/{result.members[j][1]}"
                if j < len(result.members)
                else f"member {j}"
            )
        elif mean.dim() == 1:  # [layer]: a position site summed over the changed positions
            label = f"layer {result.layers[j]}"
        else:
            width = mean.shape[-1]
            layer = result.layers[j // width] if mean.dim() == 2 else result.layers[j]
            label = f"layer {layer} {'neuron' if kind == 'neuron' else 'head'} {j % width}"
        metric = "recovery" if result.metric == "recovery" else "score change"
        out.append(
            f"{site}: {direction} activations {where + ' ' if where else ''}has its largest mean {metric} "
            f"{val:+.2f} at {label} (raw score change {rv:+.4f}; {used} of {n} pairs)."
        )
    out += [f"Caveat: {note}" for note in patching_notes(result)]
    return out


def patching_notes(result: Any, *, include_small: bool = False) -> list[str]:
    """What a reader of the patching summaries must know: how many pairs were left out as tiny
    perturbations (and the threshold), and why ``resid_pre`` is 0 at layer 0 at inserted tokens.

    Example:
        >>> from mechir_nig.interventions.patching import patch
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> res = patch(ce, align(ce, queries, docs, tfc1), sites="heads", layers=[4, 5])
        >>> patching_notes(res)  # no pair is a tiny perturbation here
        []
    """
    from mechir_nig.interventions.patching import SMALL_CHANGE

    notes = []
    small = result.small_change()
    n, k = len(result), int(small.sum())
    if k and not include_small:
        kept = "all are kept (every pair is tiny)" if k == n else "they are left out of the summaries"
        notes.append(
            f"{k} of {n} pairs move the score by less than {SMALL_CHANGE:g} x the spread of the scores "
            f"(|perturbed - clean| < {SMALL_CHANGE * result.score_spread:.4g}): their recovery divides "
            f"by a tiny change; {kept}."
        )
    if "resid_pre" in result.sites and 0 in result.layers:
        notes.append(
            "resid_pre at layer 0 is the token embeddings: a token present in one run only occupies a slot "
            "that holds the same token (masked out of attention) in the other run, so patching it there "
            "changes nothing and its layer-0 value is 0 by construction."
        )
    return notes


# -- circuits (issue 17): interaction study, attention by group, attribution patching ------------------
def interaction_findings(result: Any, measure: str | None = None, *, n_resamples: int = 10000) -> list[str]:
    """Sentences of an ``InteractionResult``: the block (or re-weighting, ``weight > 0``) that lowers the
    measure most (and the one that raises it most, where any does) with its interval and Holm-adjusted p,
    and how many (interaction, layer) blocks change the measure significantly.

    Example:
        >>> from mechir_nig.experiments.interaction import interaction_study
        >>> from mechir_nig.experiments.pruning import split_queries
        >>> held_out = split_queries(col, seed=0)[1][:3]
        >>> res = interaction_study(
        ...     ce, col, bm25_candidates(col, k=5), layers=[0], all_layers=False, eval_queries=held_out,
        ...     measures=("nDCG@10",), progress=False,
        ... )
        >>> interaction_findings(res, n_resamples=200)[-1]  # doctest: +ELLIPSIS
        '... of 4 (interaction, layer) blocks change nDCG@10 significantly (...); intervals are percentile bootstraps over the 3 held-out queries.'
    """
    m = measure or result.measures[0]
    rows = result.statistics(m, n_resamples=n_resamples)
    if not rows:
        return []
    out = []

    w = getattr(result, "weight", 0.0)

    def where(r: Mapping[str, Any]) -> str:
        layer = "in every layer" if r["layer"] == "all" else f"at layer {r['layer']}"
        if w:
            return f"Re-weighting {r['interaction']} attention by {w:g} {layer}"
        return f"Blocking {r['interaction']} attention {layer}"

    nq = f"{rows[0]['n_queries']} held-out queries"
    unmodified = "unmodified" if w else "unblocked"
    worst = max(rows, key=lambda r: r["drop"])
    best = min(rows, key=lambda r: r["drop"])
    for r, verb in ((worst, "lowers"), (best, "raises")):
        amount = r["drop"] if verb == "lowers" else -r["drop"]
        if amount <= 0:
            continue
        verdict = "" if r["p_holm"] < ALPHA else f"; indistinguishable from the {unmodified} model"
        out.append(
            f"{where(r)} {verb} {m} by {amount:.3f} {_ci(r['drop_ci'] if verb == 'lowers' else [0.0 - r['drop_ci'][1], 0.0 - r['drop_ci'][0]])} "
            f"({format_p(r['p_holm'])}, {nq}){verdict}."
        )
    if not out:
        what = "blocked interaction" if not w else f"interaction re-weighted by {w:g}"
        out.append(f"No {what} changes {m} on the {nq} ({unmodified} {rows[0]['unblocked']:.3f}).")
    sig = sum(r["p_holm"] < ALPHA for r in rows)
    blocks = "blocks" if not w else f"re-weightings (x{w:g})"
    out.append(
        f"{sig} of {len(rows)} (interaction, layer) {blocks} change {m} significantly (Holm-adjusted across "
        f"them, alpha {ALPHA:g}); intervals are percentile bootstraps over the {nq}."
    )
    return out


def attention_group_findings(result: Any) -> list[str]:
    """Sentences of an ``AttentionGroups``: the head whose query tokens put the largest share of their
    attention on matching document tokens, and the mean shares over every head.

    Example:
        >>> from mechir_nig.interventions.attention import attention_by_group
        >>> groups = attention_by_group(ce, [("what is a neuron", "a neuron is a cell")])
        >>> attention_group_findings(groups)[0]  # doctest: +ELLIPSIS
        "Head L... puts the largest share of the query tokens' attention on matching document tokens: 0... (mean over 1 pairs; ...)."
    """
    import torch

    out = []
    asked = (
        [("query", "doc_match", "matching document tokens"), ("doc", "query", "query tokens")]
        if result.meta.get("pairwise", True)
        else [("doc", "doc_match", "document tokens matching a query token")]  # a bi-encoder: no query tokens
    )
    for f, to, what in asked:
        if f not in result.from_groups:
            continue
        share = result.share(f, to)
        if not bool(torch.isfinite(share).any()):
            continue
        flat = torch.nan_to_num(share, nan=-1.0).flatten()
        j = int(flat.argmax())
        layer, head = result.layers[j // share.shape[1]], j % share.shape[1]
        out.append(
            f"Head L{layer}H{head} puts the largest share of the {f} tokens' attention on {what}: "
            f"{float(flat[j]):.2f} (mean over {len(result)} pairs; over all heads {float(share.nanmean()):.2f})."
        )
    return out


def attribution_patching_findings(result: Any) -> list[str]:
    """:func:`patching_findings` of attribution-patching estimates, and how the verified estimates
    (``verify_top``) compare with exact patches.

    Example:
        >>> from mechir_nig.interventions.attribution_patching import attribution_patch
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> est = attribution_patch(ce, align(ce, queries, docs, tfc1), sites="heads", verify_top=5)
        >>> attribution_patching_findings(est)[-1]  # doctest: +ELLIPSIS
        'Attribution patching: the 5 largest estimates, re-run exactly, have a Spearman rho of ... with the exact values (...).'
    """
    out = [f"Attribution patching (estimates): {s}" for s in patching_findings(result)[1:]]
    v = (result.meta.get("attribution") or {}).get("verify")
    if v:
        rho = "undefined" if v["spearman"] is None else f"{v['spearman']:+.2f}"
        out.append(
            f"Attribution patching: the {v['k']} largest estimates, re-run exactly, have a Spearman rho of {rho} "
            f"with the exact values (max abs error {v['max_abs_error']:.3g}, mean {v['mean_abs_error']:.3g})."
        )
    return out


def path_patching_findings(result: Any) -> list[str]:
    """:func:`patching_findings` of a path-patching receiver's ``PatchingResult`` (the ``circuits``
    command's ``path_patching``: every head's direct path into the score), each site's sentence prefixed
    by the path it measures (it read as an ordinary patch of the head's output).

    Example:
        >>> from mechir_nig.interventions.path_patching import path_patch
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> direct = path_patch(ce, align(ce, queries, docs, tfc1), receivers="score_direct", layers=[4, 5])
        >>> path_patching_findings(direct["score_direct"])[1]  # doctest: +ELLIPSIS
        'Path patching, direct path into the score: heads: restoring the clean activations has its largest mean recovery ...'
    """
    receiver = (result.meta.get("path_patching") or {}).get("receiver")
    path = "direct path into the score" if receiver == "score_direct" else f"into {receiver}"
    found = patching_findings(result)
    return found[:1] + [f"Path patching, {path}: {s}" for s in found[1:]]


_INPUT_WORDS = {"q": "queries", "k": "keys", "v": "values"}


def _receiver_words(key: str, readers: Sequence[str] = ()) -> str:
    """``"q:L3H1"`` -> ``"the queries of L3H1"``, ``"mlp:L2"`` -> ``"the MLP of layer 2"``, ``"score"``;
    a key/value input shared under grouped-query attention (``"k:L3H0"`` read by the query heads
    ``readers`` ``["L3H0", "L3H1"]``) -> ``"the keys of key/value head 0 of layer 3 (read by L3H0, L3H1)"``."""
    kind, _, where = key.partition(":")
    if kind in ("k", "v") and readers and list(readers) != [where]:
        layer, _, head = where.removeprefix("L").partition("H")
        return f"the {_INPUT_WORDS[kind]} of key/value head {head} of layer {layer} (read by {', '.join(readers)})"
    if not where:
        return {"score": "the score", "score_direct": "the score (direct path)"}.get(kind, key)
    what = _INPUT_WORDS.get(kind, {"mlp": "the MLP"}.get(kind, kind))
    target = where if "H" in where else f"layer {where.removeprefix('L')}"
    return f"the {what} of {target}" if kind in _INPUT_WORDS else f"{what} of {target}"


def path_patching_heads_findings(result: Any, *, n_resamples: int = 10000) -> list[str]:
    """Sentences of a ``PathPatchingResult`` (the ``circuits`` command's path patching into heads): how
    the receiver heads were chosen, and per receiver the sender whose path carries the largest mean effect
    with its bootstrap interval over pairs (``statistics.bootstrap_ci``), its raw score change and the
    runners-up; pairs with a tiny perturbation are left out as in :func:`patching_findings`.

    Example:
        >>> from mechir_nig.interventions.path_patching import path_patch
        >>> from mechir_nig.interventions.perturb import align, tfc1
        >>> res = path_patch(ce, align(ce, queries, docs, tfc1), receivers=[("q", 1, 0)])
        >>> path_patching_heads_findings(res, n_resamples=200)[0]  # doctest: +ELLIPSIS
        "Of the heads' paths into the queries of L1H0, the largest carrier of the perturbation's effect is L0H... (2 of 2 pairs)."
    """
    import torch

    from mechir_nig.statistics import bootstrap_ci

    out = []
    first = result[result.receivers[0]]
    keep = first.summary_pairs()
    used, n = int(keep.sum()), len(first)
    recovery = first.metric == "recovery"
    metric = "recovery" if recovery else "score change"
    digits = 2 if recovery else 4  # a raw score change is small: +0.0003, not +0.00
    chosen = result.meta.get("receivers_chosen") or {}
    heads = [f"L{lyr}H{h}" for lyr, h in chosen.get("heads", [])]
    if chosen.get("by") == "score_direct" and heads:
        effects = ", ".join(f"{x:+.{digits}f}" for x in chosen.get("direct_effect", []))
        out.append(
            f"Path patching into heads: the receivers are {', '.join(heads)}, the heads of layer >= 1 with the "
            f"largest mean direct-path effect on the score ({metric} {effects})."
        )
    perturbation = str(result.meta.get("perturbation") or first.meta.get("perturbation") or "")
    effect = f"the {perturbation.upper()} effect" if perturbation else "the perturbation's effect"
    inputs, group = chosen.get("inputs") or {}, int(chosen.get("kv_group") or 1)
    for key in result.receivers:
        part = result[key]
        readers = [head for head, keys in inputs.items() if key in keys]
        kind, _, where = key.partition(":")
        if group > 1 and kind in ("k", "v"):  # every query head of the key/value head's group reads it
            layer, _, kv = where.removeprefix("L").partition("H")
            readers = [f"L{layer}H{h}" for h in range(int(kv) * group, (int(kv) + 1) * group)]
        for site in part.sites:
            v = torch.nan_to_num(part[site].double())[keep]
            if v.dim() != 3 or v.numel() == 0:  # [pairs, layer, index]: heads or neurons
                continue
            raw = part.raw(site).double()[keep]
            mean, raw_mean = v.mean(0), raw.mean(0)
            width = mean.shape[-1]
            order = mean.abs().flatten().argsort(descending=True, stable=True).tolist()
            letter = "H" if site == "heads" else "N"

            def label(j: int, width: int = width, layers: Any = part.layers, letter: str = letter) -> str:
                return f"L{layers[j // width]}{letter}{j % width}"

            j = order[0]
            top = v.flatten(1)[:, j]
            ci = f" {_ci(bootstrap_ci(top.numpy(), n_resamples=n_resamples), digits)}" if used > 1 else ""
            rest = ", ".join(f"{label(i)} {float(mean.flatten()[i]):+.{digits}f}" for i in order[1:3])
            senders = "heads" if site == "heads" else f"{site} senders"
            raw_part = f", raw score change {float(raw_mean.flatten()[j]):+.4f}" if recovery else ""
            out.append(
                f"Of the {senders}' paths into {_receiver_words(key, readers)}, the largest carrier of {effect} is "
                f"{label(j)} (mean {metric} {float(mean.flatten()[j]):+.{digits}f}{ci}{raw_part})"
                + (f", then {rest}" if rest else "")
                + f" ({used} of {n} pairs)."
            )
    out += [f"Caveat: {note}" for note in patching_notes(first)]
    return out


def results_findings(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(section, sentence)`` of every result in ``results`` (keys as ``report.FILES``: ``pruning``,
    ``faithfulness`` (the result, or ``(result, raw JSON)``), ``patching``); a result whose sentences
    cannot be made gives one sentence saying so.

    Example:
        >>> results_findings({})
        []
    """
    makers = {
        "pruning": pruning_findings,
        "faithfulness": faithfulness_findings,
        "patching": patching_findings,
        "attribution_patching": attribution_patching_findings,
        "interaction": interaction_findings,
        "attention_groups": attention_group_findings,
        "path_patching": path_patching_findings,
        "path_patching_heads": path_patching_heads_findings,
    }
    out: list[tuple[str, str]] = []
    for key, make in makers.items():
        if key not in results:
            continue
        value = results[key]
        if isinstance(value, tuple):
            value = value[0]
        try:
            out += [(key, s) for s in make(value)]
        except Exception as exc:  # a finding that cannot be stated must not cost the report
            out.append((key, f"No findings for {key}: {type(exc).__name__}: {exc}."))
    return out


def folder_findings(results_dir: str | Path) -> list[tuple[str, str]]:
    """:func:`results_findings` of the results a folder holds (``pruning.json``, ``faithfulness.json``,
    ``patching.safetensors``; files that are missing or unreadable are skipped).

    Example:
        >>> import tempfile
        >>> folder_findings(tempfile.mkdtemp())
        []
    """
    import warnings

    from mechir_nig.report import CIRCUIT_FILES, FILES, _loaders

    folder = Path(results_dir)
    loaders = _loaders()
    loaded: dict[str, Any] = {}
    names = {**FILES, **CIRCUIT_FILES}
    for key in ("pruning", "patching", "faithfulness", *CIRCUIT_FILES):
        path = folder / names[key]
        if path.is_file():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    loaded[key] = loaders[key](path)
            except Exception:  # the report names unreadable files
                continue
    return results_findings(loaded)
