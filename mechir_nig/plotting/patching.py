"""Figures of activation patching (``interventions.patch``): layer x position, layer x head, and more.

=============================  ==========================================  ========================
site of the ``PatchingResult``  figure                                      ``pair``
=============================  ==========================================  ========================
resid_pre, attn_out, mlp_out   heatmap layer x position, token labels      one pair (positions)
heads                          heatmap layer x head                        one pair or the mean
neurons                        heatmap layer x neuron                      one pair or the mean
head_pos                       heatmap (layer, head) x position            one pair (positions)
neuron_set, head_set           bars, one per member neuron or head         one pair or the mean
resid_pre_set, <site>_set      bars, one per member (layer, position)      one pair or the mean
=============================  ==========================================  ========================

The value is the result's metric (the recovery ``(patched − base) / (source − base)``, or ``patched −
base``) on the signed scale centred at 0. Position labels are the base run's tokens; where the clean and
corrupted runs differ (the perturbed tokens) the label reads ``clean→corrupted`` in bold, ``∅`` marking a
slot one run does not have. The mean over pairs is ``nanmean`` (pairs whose score did not move are NaN).

Example:
    >>> from mechir_nig.interventions import patch, perturb
    >>> al = perturb.align(ce, queries, docs, perturb.tfc1)
    >>> res = patch(ce, al, sites=("resid_pre", "heads"), layers=[4, 5])
    >>> fig = patching_heatmap(res, "resid_pre", pair=0)  # fig.show() opens it
    >>> fig.data[0].z.shape[0]  # [layer, pos]
    2
    >>> fig = patching_heatmap(res, "heads", pair=None)  # mean over pairs
    >>> fig.data[0].z.shape  # [layer, n_heads]
    (2, 12)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.interventions.patching import SITES, PatchingResult
from mechir_nig.plotting._common import (
    as_numpy,
    color,
    finish,
    layer_rows,
    need,
    pair_index,
    signed_coloraxis,
    signed_heatmap,
    token_figure,
)

__all__ = ["path_patching_heatmaps", "patching_heatmap"]

_SET_UNIT = {"neuron_set": ("neuron", "N"), "head_set": ("head", "H")}
"""Set site -> (unit, label letter) of its members; the other sets hold positions (``P``)."""


def _positions(result: PatchingResult, i: int) -> tuple[list[int], list[str], list[str]]:
    """Positions to draw for pair ``i`` (up to the last slot either run holds), their tick labels and
    hover texts (``clean→corrupted`` where the runs differ)."""
    n_pos = result.base_mask.shape[1]
    clean = result.clean_tokens[i] if result.clean_tokens else []
    corr = result.corrupted_tokens[i] if result.corrupted_tokens else []
    if not (clean and corr):  # batches patched without an Alignment: no token strings
        keep = list(range(int(result.base_mask[i].nonzero().max()) + 1))
        return keep, [str(p) for p in keep], [f"position {p}" for p in keep]
    filled = [p for p in range(min(len(clean), len(corr), n_pos)) if clean[p] or corr[p]]
    keep = list(range(max(filled) + 1 if filled else n_pos))
    ticks, texts = [], []
    for p in keep:
        c, k = clean[p], corr[p]
        if c == k:
            ticks.append(c)
            texts.append(repr(c))
        else:
            ticks.append(f"<b>{c or '∅'}→{k or '∅'}</b>")
            texts.append(f"clean {c or '∅'!r} → corrupted {k or '∅'!r}")
    return keep, ticks, texts


def _reduce_pairs(v: Tensor, pair: int | None, n: int) -> tuple[Tensor, str]:
    if pair is None:
        return torch.nanmean(v.to(torch.float64), 0), f"mean over {n} pairs"
    i = pair_index(pair, n)
    return v[i].to(torch.float64), f"pair {i}"


def _range(zmax: float | None) -> dict[str, Any]:
    """A fixed symmetric colour range (``zmin``/``zmax``; the scale stays centred at 0), or none."""
    if zmax is None:
        return {}
    if not zmax > 0:
        raise InputError(f"zmax must be a positive number, got {zmax!r}")
    return {"zmin": -float(zmax), "zmax": float(zmax), "zauto": False}


def patching_heatmap(
    result: Any,
    site: str | None = None,
    *,
    pair: int | None = 0,
    layers: Sequence[int] | None = None,
    title: str | None = None,
    zmax: float | None = None,
) -> Any:
    """Patching effect of each patched index of ``site`` (see the module table for the figure of each).

    Args:
        result: a ``PatchingResult``.
        site: one of ``result.sites`` (default: the first).
        pair: the pair to draw; ``None`` draws the mean over pairs (sites without a position axis only).
        layers: layers to draw (default: ``result.layers``).
        title: the figure title.
        zmax: the colour range ``[-zmax, zmax]`` of a heatmap (default: its own values'): pass one value
            to every figure of a family (e.g. the pairs of one site) so that their colours compare.

    Shapes:
        position sites: ``fig.data[0].z`` ``[layer, pos]`` = ``result[site][pair, layers, :n]`` (``n``:
        the pair's aligned length), ``x`` = positions, ``text`` = the tokens;
        ``heads`` / ``neurons``: ``z`` ``[layer, n_heads | d_mlp]``; ``head_pos``: ``z``
        ``[layer * n_heads, pos]`` (rows ``L{l} H{h}``); a set site (``neuron_set``, ``head_set``, ``resid_pre_set`` ...): ``fig.data[0].y``
        ``[n_members]``.

    Returns:
        A ``plotly.graph_objects.Figure`` (hover: layer, index, tokens, value).

    Example:
        >>> from mechir_nig.interventions import patch, perturb
        >>> res = patch(ce, perturb.align(ce, queries, docs, perturb.tfc1), layers=[5])
        >>> fig = patching_heatmap(res, "resid_pre", pair=0)  # fig.show() opens it
        >>> len(fig.data[0].text[0]) == fig.data[0].z.shape[1]  # a token label per position
        True
    """
    need(result, PatchingResult, "result", "draw the output of interventions.patch")
    site = result.sites[0] if site is None else site
    values = result[site]  # raises for a site the result does not hold
    kind = SITES[site][1] if site in SITES else ""
    metric = "recovery" if result.metric == "recovery" else "patched − base"
    n = len(result)
    what = f"{site} patching ({result.direction}, {result.metric})"
    if site.endswith("_set"):
        v, which = _reduce_pairs(values, pair, n)
        if layers is not None:
            raise InputError(f"layers= does not apply to site {site!r} (its members name their layers)")
        unit, letter = _SET_UNIT.get(site, ("position", "P"))
        fig = go.Figure(
            go.Bar(
                x=[f"L{layer} {letter}{index}" for layer, index in result.members],
                y=as_numpy(v),
                customdata=np.asarray(result.members, dtype=np.int64).reshape(-1, 2),
                marker_color=[color("sign_positive" if x >= 0 else "sign_negative") for x in v.tolist()],
                hovertemplate=f"layer %{{customdata[0]}}<br>{unit} %{{customdata[1]}}<br>{metric} %{{y:.4g}}<extra></extra>",
            )
        )
        fig.update_xaxes(type="category", title_text=f"{unit} of the set")
        fig.update_yaxes(title_text=metric)
        return finish(fig, title or f"{what} — {which}", height=420)
    rows, layer_ids = layer_rows(layers, result.layers)
    if kind in ("pos", "head_pos"):
        if pair is None:
            raise InputError(
                f"site {site!r} has a position axis, and positions differ between pairs: pass pair=i "
                "(sites 'heads' and 'neurons' can be averaged over pairs)"
            )
        i = pair_index(pair, n)
        keep, ticks, texts = _positions(result, i)
        v = values[i].to(torch.float64)[rows][..., keep]  # [layer, pos] or [layer, n_heads, pos]
        if kind == "head_pos":
            n_heads = v.shape[1]
            y_labels = [f"L{layer} H{h}" for layer in layer_ids for h in range(n_heads)]
            v = v.reshape(len(rows) * n_heads, len(keep))
            y_title = "layer, head"
        else:
            y_labels = [str(layer) for layer in layer_ids]
            y_title = "layer"
        heatmap = signed_heatmap(
            as_numpy(v),
            keep,
            y_labels,
            **_range(zmax),
            text=[texts for _ in y_labels],
            colorbar={"title": {"text": metric}},
            hovertemplate=f"position %{{x}}: %{{text}}<br>{y_title} %{{y}}<br>{metric} %{{z:.4g}}<extra></extra>",
        )
        return token_figure(
            heatmap,
            keep,
            ticks,
            result.groups[i],
            x_title="position (token)",
            y_title=y_title,
            title=title or f"{what} — pair {i}",
            row_height=30,
        )
    v, which = _reduce_pairs(values, pair, n)
    v = v[rows]  # [layer, n_heads | d_mlp]
    index = "head" if kind == "head" else "neuron"
    fig = go.Figure(
        signed_heatmap(
            as_numpy(v),
            np.arange(v.shape[-1]),
            [str(layer) for layer in layer_ids],
            **_range(zmax),
            colorbar={"title": {"text": metric}},
            hovertemplate=f"layer %{{y}}<br>{index} %{{x}}<br>{metric} %{{z:.4g}}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text=index, dtick=1 if v.shape[-1] <= 32 else None)
    fig.update_yaxes(type="category", title_text="layer")
    return finish(fig, title or f"{what} — {which}", height=220 + 30 * len(layer_ids))


def path_patching_heatmaps(
    result: Any,
    site: str | None = None,
    *,
    receivers: Sequence[Any] | None = None,
    pair: int | None = None,
    title: str | None = None,
    zmax: float | None = None,
) -> Any:
    """Path-patching effects of sender ``site`` into each receiver: one layer x head (or layer x neuron)
    heatmap per receiver, side by side on one shared signed colour scale.

    Args:
        result: a ``PathPatchingResult`` (``interventions.path_patch``).
        site: a sender site without a position axis (``heads``, ``neurons``; default: the first sender).
        receivers: the receivers to draw (default: all, in the result's order).
        pair: the pair to draw; ``None`` (default) the mean over pairs.
        title: the figure title.
        zmax: the colour range ``[-zmax, zmax]`` (default: the values'): pass one value to draw several
            figures on one scale.

    Shapes:
        ``fig.data[i].z`` ``[layer, n_heads | d_mlp]`` = ``result[receivers[i]][site][pair]`` (or its
        ``nanmean`` over pairs).

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.interventions import path_patch, perturb
        >>> al = perturb.align(ce, queries, docs, perturb.tfc1)
        >>> res = path_patch(ce, al, senders="heads", receivers=[("q", 1, 0), "score"], layers=[0])
        >>> fig = path_patching_heatmaps(res, "heads", pair=None)  # fig.show() opens it
        >>> len(fig.data)  # one heatmap per receiver
        2
    """
    from plotly.subplots import make_subplots

    from mechir_nig.interventions.path_patching import PathPatchingResult

    need(result, PathPatchingResult, "result", "draw the output of interventions.path_patch")
    keys = (
        result.receivers
        if receivers is None
        else [result[r].meta["path_patching"]["receiver"] for r in receivers]
    )
    first = result[keys[0]]
    site = first.sites[0] if site is None else site
    kind = SITES[site][1] if site in SITES else ""
    if kind in ("pos", "head_pos") or site.endswith("_set"):
        raise InputError(
            f"site {site!r} has no layer x head grid; draw one receiver with "
            f"patching_heatmap(result[receiver], {site!r}, pair=i)"
        )
    metric = "recovery" if first.metric == "recovery" else "patched − base"
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[f"→ {k}" for k in keys], shared_yaxes=True)
    index = "head" if kind == "head" else "neuron"
    which = ""
    for i, key in enumerate(keys):
        res = result[key]
        v, which = _reduce_pairs(res[site], pair, len(res))
        fig.add_trace(
            signed_heatmap(
                as_numpy(v),
                np.arange(v.shape[-1]),
                [str(layer) for layer in res.layers],
                coloraxis="coloraxis",
                name=key,
                hovertemplate=f"→ {key}<br>layer %{{y}}<br>{index} %{{x}}<br>{metric} %{{z:.4g}}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text=index, dtick=1 if v.shape[-1] <= 32 else None, row=1, col=i + 1)
    fig.update_yaxes(type="category", title_text="sender layer", row=1, col=1)
    what = f"{site} path patching ({first.direction}, {first.metric})"
    axis = signed_coloraxis(metric)
    if zmax is not None:  # one fixed symmetric range (checked as the other figures' zmax)
        fixed = _range(zmax)
        axis.update(cmin=fixed["zmin"], cmax=fixed["zmax"])
    return finish(
        fig,
        title or f"{what} — {which}",
        height=260 + 30 * len(first.layers),
        coloraxis=axis,
    )
