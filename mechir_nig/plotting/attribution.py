"""Figures of NIG attributions: neuron heatmaps, top-neuron bars, token heatmaps and token-group bars.

They take a ``NeuronAttribution`` (one batch of pairs, ``neuron_integrated_gradients``) or a
``CollectionAttribution`` (per-label running statistics, ``attribute_collection``) and return a
``plotly.graph_objects.Figure``. Signed values use ``SCALES["signed"]`` centred at 0 (positive = red).

A *panel* is one layer x neuron table of a result: for a ``CollectionAttribution`` a selection scheme
(``relevant``, ``nonrelevant``, ``difference``, ``abs_mean``, ``mean_abs``: ``scheme_scores``); for a
``NeuronAttribution`` one pair (``pair=i``), the mean over its pairs, or, given ``labels`` (the relevance
of each pair), the mean over relevant / non-relevant pairs and their difference.

Example:
    >>> from mechir_nig.data import JudgedPair
    >>> from mechir_nig.experiments import attribute_collection
    >>> pairs = [JudgedPair("q1", "d1", queries[0], docs[0], 1, "relevant"),
    ...          JudgedPair("q1", "d2", queries[0], docs[1], 0, "nonrelevant")]
    >>> stats = attribute_collection(ce, pairs, n_steps=4, layers=[4, 5], progress=False)
    >>> fig = neuron_heatmap(stats)  # relevant, nonrelevant, difference
    >>> len(fig.data)
    3
    >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps=4, layers=[5])  # reduce="token"
    >>> fig = token_heatmap(attr, pair=0)
    >>> len(fig.data) > 0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from mechir_nig._validate import check_choice, check_int
from mechir_nig.attribution.result import CONTENT_GROUPS, NeuronAttribution
from mechir_nig.attribution.stats import LABELS, PROMPT_GROUP_AXIS, SCHEMES, CollectionAttribution
from mechir_nig.errors import InputError
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
from mechir_nig.sets.components import ComponentSet

__all__ = ["group_bars", "neuron_heatmap", "token_heatmap", "top_neurons_bar"]

Panel = tuple[str, Callable[[str], Tensor]]
"""A panel's name and its values: group name -> ``[layer, d_mlp]`` float64 (rows = the result's layers)."""

_RESULTS = (NeuronAttribution, CollectionAttribution)
_LABEL_PANELS = ("relevant", "nonrelevant", "difference")


def _check_group(group: Any) -> str:
    if group not in PROMPT_GROUP_AXIS:  # "prompt": a templated family's (the result says if it has one)
        raise InputError(f"group must be one of {PROMPT_GROUP_AXIS}, got {group!r}")
    return str(group)


def _group_index(result: NeuronAttribution, group: str) -> int:
    """The index of ``group`` in ``result.by_group()``'s group axis (``prompt``: templated families)."""
    names = result.group_names
    if group not in names:
        raise InputError(f"this attribution's groups are {names}; got {group!r}")
    return names.index(group)


def _panel_names(panels: Any, allowed: Sequence[str]) -> list[str]:
    if isinstance(panels, str):
        panels = [panels]
    if not isinstance(panels, Iterable):
        raise InputError(f"panels must be a list of names among {tuple(allowed)}, got {panels!r}")
    out = list(panels)
    bad = [p for p in out if p not in allowed]
    if bad or not out:
        raise InputError(f"panels must be a non-empty list of names among {tuple(allowed)}, got {out!r}")
    return out


def _default_panels(present: list[str]) -> list[str]:
    return present + (["difference"] if len(present) == 2 else [])


def _panels(result: Any, panels: Any, pair: Any, labels: Any, fn: str) -> list[Panel]:
    """The panels of ``result`` (see the module docstring)."""
    need(result, _RESULTS, "result", f"{fn} draws NIG attributions")
    if isinstance(result, CollectionAttribution):
        if pair is not None or labels is not None:
            raise InputError(
                "pair= and labels= apply to a NeuronAttribution; a CollectionAttribution is already split "
                "by label (choose what to draw with panels=)"
            )
        if panels is None:
            present = [lab for lab in LABELS if result.counts[lab] > 0]
            if not present:
                raise InputError("the CollectionAttribution holds no pairs; attribute some pairs first")
            panels = _default_panels(present)
        rows = list(result.layers)

        def scheme(name: str, g: str) -> Tensor:
            return result.scheme_scores(name, g)[rows]

        return [(p, partial(scheme, p)) for p in _panel_names(panels, SCHEMES)]

    def values(g: str) -> Tensor:  # [batch, layer, d_mlp]
        v = result.per_neuron() if g == "all" else result.by_group()[:, :, _group_index(result, g)]
        return v.to(torch.float64)

    n = len(result)
    if pair is not None:
        if labels is not None or panels is not None:
            raise InputError("pair= draws one pair; leave labels= and panels= unset with it")
        i = pair_index(pair, n)
        return [(f"pair {i}", lambda g: values(g)[i])]
    if labels is None:
        if panels is not None:
            raise InputError(
                "panels= needs labels= (the relevance of each pair) for a NeuronAttribution; "
                "without labels the figure shows the mean over pairs"
            )
        return [(f"mean over {n} pairs", lambda g: values(g).mean(0))]
    rel = _relevant_mask(labels, n)
    present = [name for name, m in (("relevant", rel), ("nonrelevant", ~rel)) if bool(m.any())]
    names = _panel_names(_default_panels(present) if panels is None else panels, _LABEL_PANELS)
    for name in names:
        for lab in ("relevant", "nonrelevant") if name == "difference" else (name,):
            if lab not in present:
                raise InputError(f"panel {name!r} needs {lab} pairs, but labels mark none as {lab}")

    def panel(name: str, g: str) -> Tensor:
        v = values(g)
        if name == "difference":
            return v[rel].mean(0) - v[~rel].mean(0)
        return v[rel if name == "relevant" else ~rel].mean(0)

    return [(name, partial(panel, name)) for name in names]


def _relevant_mask(labels: Any, n: int) -> Tensor:
    """``[batch]`` bool: the pairs whose label (relevance grade) is > 0."""
    if isinstance(labels, str | bytes) or not isinstance(labels, Iterable | Tensor):
        raise InputError(f"labels must be a sequence of relevance grades, one per pair, got {labels!r}")
    try:
        grades = torch.as_tensor([float(x) for x in labels])
    except (TypeError, ValueError):
        raise InputError(
            f"labels must be numbers (relevance grades, > 0 = relevant), got {labels!r}"
        ) from None
    if len(grades) != n:
        raise InputError(f"labels has {len(grades)} entries; the result holds {n} pairs: give one per pair")
    return grades > 0


NEURON_VIEWS = ("auto", "top", "binned", "full")
"""Views of :func:`neuron_heatmap`: the top ``k`` neurons of each layer, bins of neurons, every neuron, or
``auto`` (every neuron up to ``FULL_VIEW_MAX`` per layer, else the top ``k``)."""
FULL_VIEW_MAX = 128
"""The widest layer ``view="auto"`` draws neuron by neuron (at 1 000 px, about 7 px a neuron); a BERT-base
MLP (3 072) or MiniLM's (1 536) would be under one pixel a neuron, a nearly blank figure."""
_UNIT = "NIG (score units)"  # NIG sums to the change of the score (completeness)


def _top_cells(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ids)``, each ``[layer, k]``: each row's ``k`` largest ``|z|``, largest first (ties: lower id)."""
    ids = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(z, ids, axis=1), ids


def _binned_cells(z: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, customdata)``: per row and bin of ``ceil(d / bins)`` consecutive neurons, the value of the
    neuron with the largest ``|z|`` (its sign kept); customdata ``[layer, bin, 3]`` = (first, last, that
    neuron)."""
    d = z.shape[1]
    width = -(-d // min(bins, d))
    starts = np.arange(0, d, width)
    values = np.empty((z.shape[0], len(starts)))
    data = np.empty((z.shape[0], len(starts), 3), dtype=np.int64)
    for j, lo in enumerate(starts):
        hi = min(lo + width, d)
        arg = lo + np.argmax(np.abs(z[:, lo:hi]), axis=1)
        values[:, j] = z[np.arange(z.shape[0]), arg]
        data[:, j, 0], data[:, j, 1], data[:, j, 2] = lo, hi - 1, arg
    return values, data


def neuron_heatmap(
    result: Any,
    *,
    group: str = "all",
    panels: Sequence[str] | None = None,
    pair: int | None = None,
    labels: Any = None,
    layers: Sequence[int] | None = None,
    view: str = "auto",
    k: int = 20,
    bins: int = 64,
    title: str | None = None,
) -> Any:
    """Layer x neuron heatmap of NIG, one panel per label (and their difference), on one colour scale.

    A layer of a real model holds too many neurons to draw one by one (MiniLM: 1 536), so by default a
    wide layer is drawn as its ``k`` strongest neurons: ``view="top"``, row = layer, column = rank by
    ``|NIG|`` within the layer in that panel, each cell labelled with its neuron's index. ``view="binned"``
    draws every neuron in ``bins`` bins of consecutive neurons (each bin: the value of its neuron of largest
    ``|NIG|``, sign kept; the hover names the bin's range and that neuron); ``view="full"`` one column per
    neuron. The colour scale is symmetric around 0 (``cmin = -cmax`` = the largest ``|value|`` drawn).

    Args:
        result: a ``CollectionAttribution`` or a ``NeuronAttribution``.
        group: the tokens summed: ``"all"`` (default), ``"cls"``, ``"query"``, ``"sep"``, ``"doc"`` or
            ``"prompt"`` (a templated family's template text; the groups need a ``NeuronAttribution`` with
            ``reduce="token"`` or ``"group"``).
        panels: schemes of a ``CollectionAttribution`` (``SCHEMES``; default: each label with pairs and,
            with both, ``difference``), or of a labelled ``NeuronAttribution`` (``relevant``,
            ``nonrelevant``, ``difference``).
        pair: a ``NeuronAttribution``: draw this pair only (default: the mean over pairs).
        labels: a ``NeuronAttribution``: the relevance grade of each pair (``> 0`` is relevant), to draw
            the label means and their difference.
        layers: layers to draw (default: the result's ``layers``).
        view: ``"auto"`` (default: ``"full"`` up to ``FULL_VIEW_MAX`` neurons a layer, else ``"top"``),
            ``"top"``, ``"binned"`` or ``"full"`` (``NEURON_VIEWS``).
        k: ``view="top"``: the neurons drawn per layer (at most the layer's width).
        bins: ``view="binned"``: the bins per layer (at most the layer's width).
        title: the figure title.

    Shapes:
        ``fig.data[i].z``: the ``i``-th panel (e.g. ``stats.mean("relevant", group)`` restricted to
        ``layers``), ``y`` = the layer indices. ``"full"``: ``[layer, d_mlp]``, ``x`` = ``0 .. d_mlp - 1``.
        ``"top"``: ``[layer, k]``, ``x`` = ranks ``1 .. k``, ``text`` / ``customdata`` = the neuron
        indices ``[layer, k]``. ``"binned"``: ``[layer, n_bins]``, ``x`` = each bin's first neuron,
        ``customdata`` ``[layer, n_bins, 3]`` = (first neuron, last neuron, neuron of largest ``|NIG|``).

    Returns:
        A ``plotly.graph_objects.Figure`` (hover: layer, neuron(s), value in score units).

    Example:
        >>> from mechir_nig.attribution.stats import CollectionAttribution
        >>> stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=3)
        >>> stats.update("relevant", torch.ones(2, 2, 4, 3))  # [pairs, layer, group, d_mlp]
        >>> stats.update("nonrelevant", -torch.ones(1, 2, 4, 3))
        >>> fig = neuron_heatmap(stats)
        >>> [t.name for t in fig.data], fig.data[2].z[0].tolist()  # difference = 4 - (-4)
        (['relevant', 'nonrelevant', 'difference'], [8.0, 8.0, 8.0])
        >>> top = neuron_heatmap(stats, view="top", k=2)  # the 2 strongest neurons of each layer
        >>> top.data[0].z.shape, top.data[0].text.tolist(), top.layout.coloraxis.cmax
        ((2, 2), [['0', '1'], ['0', '1']], 8.0)
    """
    group = _check_group(group)
    view = check_choice(view, "view", NEURON_VIEWS)
    k = check_int(k, "k", minimum=1)
    bins = check_int(bins, "bins", minimum=1)
    items = _panels(result, panels, pair, labels, "neuron_heatmap")
    rows, layer_ids = layer_rows(layers, result.layers)
    d = result.d_mlp if isinstance(result, CollectionAttribution) else result.values.shape[-1]
    if view == "auto":
        view = "full" if d <= FULL_VIEW_MAX else "top"
    k, bins = min(k, d), min(bins, d)
    fig = make_subplots(
        rows=len(items),
        cols=1,
        shared_xaxes=view != "top",  # ranks: each panel labels its own neurons
        subplot_titles=[name for name, _ in items],
        vertical_spacing=min(0.12, 0.5 / max(1, len(items) - 1)),
    )
    largest = 0.0
    for i, (name, fn) in enumerate(items):
        z = as_numpy(fn(group)[rows])
        extra: dict[str, Any] = {}
        if view == "full":
            x: Any = np.arange(d)
            hover = f"layer %{{y}}<br>neuron %{{x}}<br>NIG %{{z:.4g}}<extra>{name}</extra>"
        elif view == "top":
            z, ids = _top_cells(z, k)
            x = np.arange(1, k + 1)
            extra = {"text": ids.astype(str), "customdata": ids, "texttemplate": "%{text}"}
            extra["textfont"] = {"size": 9}
            hover = f"layer %{{y}}<br>neuron %{{text}} (rank %{{x}})<br>NIG %{{z:.4g}}<extra>{name}</extra>"
        else:
            z, cells = _binned_cells(z, bins)
            x = cells[0, :, 0]
            extra = {"customdata": cells}
            hover = (
                "layer %{y}<br>neurons %{customdata[0]}-%{customdata[1]}<br>largest |NIG| at neuron "
                f"%{{customdata[2]}}: %{{z:.4g}}<extra>{name}</extra>"
            )
        largest = max(largest, float(np.abs(z).max(initial=0.0)))
        fig.add_trace(
            signed_heatmap(z, x, layer_ids, name=name, coloraxis="coloraxis", hovertemplate=hover, **extra),
            row=i + 1,
            col=1,
        )
        fig.update_yaxes(type="category", title_text="layer", row=i + 1, col=1)
        if view == "top":
            fig.update_xaxes(
                title_text="rank in the layer by |NIG| (cell: MLP neuron index)", row=i + 1, col=1
            )
    if view != "top":
        width = "" if view == "full" else f"; bins of {-(-d // bins)}"
        fig.update_xaxes(title_text=f"MLP neuron (index{width})", row=len(items), col=1)
    coloraxis = signed_coloraxis(_UNIT)
    if largest > 0:
        coloraxis.update(cmin=-largest, cmax=largest)
    return finish(
        fig,
        title
        or f"NIG per neuron ({group} tokens)" + (f": top {k} per layer by |NIG|" if view == "top" else ""),
        height=140 + len(items) * (60 + (40 if view == "top" else 0) + 28 * len(layer_ids)),
        coloraxis=coloraxis,
    )


def top_neurons_bar(
    source: Any,
    *,
    k: int = 20,
    scheme: str | None = None,
    group: str = "all",
    pair: int | None = None,
    title: str | None = None,
) -> Any:
    """Horizontal bars of the ``k`` highest-scoring neurons (or heads), largest on top.

    Args:
        source: a ``CollectionAttribution`` (neurons ranked by ``scheme_scores(scheme, group)`` over its
            layers, as ``attribution.stats.top_neuron_set``), a ``NeuronAttribution`` (NIG of ``pair``, or
            summed over pairs, as ``NeuronAttribution.top_neurons``), or a ``NeuronSet`` /
            ``ComponentSet`` with ``scores`` (its members by score).
        k: bars to draw (at most).
        scheme: the ``CollectionAttribution`` scheme (default ``"relevant"``).
        group: the tokens summed (``"all"``, or ``cls``/``query``/``sep``/``doc``, and ``prompt`` for a
            templated family); attributions only.
        pair: a ``NeuronAttribution``: rank this pair's NIG (default: summed over pairs).
        title: the figure title.

    Shapes:
        ``fig.data[0].x``: ``[k]`` scores, descending; ``fig.data[0].customdata``: ``[k, 2]`` (layer, index).

    Returns:
        A ``plotly.graph_objects.Figure`` (hover: layer, neuron, value; red >= 0, blue < 0).

    Example:
        >>> from mechir_nig.sets import select_top
        >>> s = select_top(torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, 1.0]]), k=3)
        >>> top_neurons_bar(s).data[0].x.tolist()
        [3.0, 2.0, 1.0]
    """
    k = check_int(k, "k", minimum=1)
    group = _check_group(group)
    need(source, (*_RESULTS, ComponentSet), "source", "top_neurons_bar ranks attributions or a scored set")
    one = "neuron"
    if isinstance(source, ComponentSet):
        if scheme is not None or pair is not None or group != "all":
            raise InputError("scheme=, group= and pair= rank attributions; a set is drawn by its own scores")
        if source.scores is None:
            raise InputError(
                "the set has no scores; build it with select_top(scores, ...) (or from a "
                "CollectionAttribution with attribution.stats.top_neuron_set) to draw its top members"
            )
        ranked = sorted(source.scores.items(), key=lambda kv: -kv[1])[:k]
        members = [m for m, _ in ranked]
        values = [v for _, v in ranked]
        one = "neuron" if source.kind == "mlp" else "head"
        what = source.name or "set"
    elif isinstance(source, CollectionAttribution):
        from mechir_nig.attribution.stats import top_neuron_set

        if pair is not None:
            raise InputError("pair= applies to a NeuronAttribution; a CollectionAttribution has no pairs")
        scheme = "relevant" if scheme is None else scheme
        s = top_neuron_set(source, scheme, k=min(k, len(source.layers) * source.d_mlp), group=group)
        ranked = sorted((s.scores or {}).items(), key=lambda kv: -kv[1])  # select_top scores its members
        members = [m for m, _ in ranked]
        values = [v for _, v in ranked]
        what = f"{scheme} ({group} tokens)"
    else:
        if scheme is not None:
            raise InputError("scheme= ranks a CollectionAttribution; a NeuronAttribution is ranked by NIG")
        if group == "all":
            v = source.per_neuron()
        else:
            v = source.by_group()[:, :, _group_index(source, group)]
        v = v[pair_index(pair, len(source))] if pair is not None else v.sum(0)
        vals, idx = v.to(torch.float64).flatten().topk(min(k, v.numel()))
        d = v.shape[-1]
        members = [(source.layers[i // d], i % d) for i in idx.tolist()]
        values = vals.tolist()
        what = f"NIG of pair {pair}" if pair is not None else f"NIG summed over {len(source)} pairs"
    letter = one[0].upper()
    fig = go.Figure(
        go.Bar(
            x=np.asarray(values, dtype=np.float64),
            y=[f"L{layer} {letter}{i}" for layer, i in members],
            orientation="h",
            customdata=np.asarray(members, dtype=np.int64).reshape(-1, 2),
            marker_color=[color("sign_positive" if x >= 0 else "sign_negative") for x in values],
            hovertemplate=f"layer %{{customdata[0]}}<br>{one} %{{customdata[1]}}<br>value %{{x:.4g}}<extra></extra>",
            name=what,
        )
    )
    fig.update_yaxes(autorange="reversed", type="category", title_text=f"layer, {one}")
    fig.update_xaxes(title_text="score", zeroline=True)
    return finish(fig, title or f"Top {len(members)} {one}s: {what}", height=160 + 22 * len(members))


def token_heatmap(
    attr: Any,
    pair: int = 0,
    *,
    component: str = "mlp",
    neurons: ComponentSet | None = None,
    layers: Sequence[int] | None = None,
    title: str | None = None,
) -> Any:
    """Tokens x layers heatmap of one pair's NIG, summed over the neurons (or heads) of each layer.

    The query and the document are separated by a dashed vertical line and labelled above; padding is left
    out. Hovering a cell shows the token, its group (cls/query/sep/doc), the layer and the value.

    Args:
        attr: a ``NeuronAttribution`` with ``reduce="token"``.
        pair: the pair to draw.
        component: ``"mlp"`` (``values``) or ``"head"`` (``head_values``: attribute with ``heads=True``).
        neurons: sum only these components (a ``NeuronSet``, or a head ``ComponentSet`` with
            ``component="head"``) instead of all.
        layers: layers to draw (default: ``attr.layers``).
        title: the figure title.

    Shapes:
        ``fig.data[0].z``: ``[layer, token]`` = ``attr.values[pair, layers, :n].sum(-1)`` over the pair's
        ``n`` non-padding tokens; ``fig.data[0].text``: ``[layer, token]`` token text and group.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> attr = neuron_integrated_gradients(ce, queries, docs, reduce="token", n_steps=4, layers=[4, 5])
        >>> fig = token_heatmap(attr, pair=0)  # fig.show() opens it
        >>> len(fig.data) > 0
        True
    """
    from mechir_nig.models.tokenization import GROUPS

    need(attr, NeuronAttribution, "attr", "token_heatmap draws the per-token NIG of one pair")
    attr.per_token()  # raises, saying which reduce to use, when values are not per token
    if component not in ("mlp", "head"):
        raise InputError(
            f"component must be 'mlp' (MLP neurons) or 'head' (attention heads), got {component!r}"
        )
    i = pair_index(pair, len(attr))
    if component == "head":
        if attr.head_values is None:
            raise InputError("no head attributions in this result: attribute with heads=True")
        v = attr.head_values[i]
    else:
        v = attr.values[i]  # [layer, pos, width]
    rows, layer_ids = layer_rows(layers, attr.layers)
    if neurons is not None:
        need(neurons, ComponentSet, "neurons")
        if neurons.kind != component:
            raise InputError(
                f"neurons is a {neurons.kind!r} set but component={component!r}; pass a set of the same kind"
            )
        if neurons.width != v.shape[-1] or max(attr.layers) >= neurons.n_layers:
            raise InputError(
                f"neurons is a set of a {neurons.n_layers} x {neurons.width} model; this result has layers "
                f"{attr.layers} x {v.shape[-1]}: select the set on this model"
            )
        weight = neurons.to_mask()[attr.layers].to(v.dtype)  # [layer, width]
        v = v * weight[:, None, :]
    keep = attr.mask[i].nonzero().flatten().tolist()
    z = as_numpy(v[rows][:, keep].sum(-1))
    toks = attr.tokens[i] if attr.tokens else [str(t) for t in attr.input_ids[i].tolist()]
    group_row = attr.groups[i]
    labels = [f"{toks[p]} ({GROUPS[int(group_row[p])]})" if p < len(toks) else "" for p in keep]
    text = [labels for _ in rows]
    heatmap = signed_heatmap(
        z,
        keep,
        layer_ids,
        text=text,
        name=f"pair {i}",
        colorbar={"title": {"text": "NIG"}},
        hovertemplate="token %{text}<br>position %{x}<br>layer %{y}<br>NIG %{z:.4g}<extra></extra>",
    )
    what = "neurons" if component == "mlp" else "heads"
    subset = f" of {neurons.name or 'a set'} ({len(neurons)})" if neurons is not None else ""
    return token_figure(
        heatmap,
        keep,
        [toks[p] if p < len(toks) else "" for p in keep],
        group_row,
        x_title="token",
        y_title="layer",
        title=title or f"NIG per token, summed over the {what}{subset} of each layer — pair {i}",
        row_height=32,
    )


def group_bars(
    result: Any,
    *,
    panels: Sequence[str] | None = None,
    pair: int | None = None,
    labels: Any = None,
    layers: Sequence[int] | None = None,
    title: str | None = None,
) -> Any:
    """NIG of each token group (cls, query, sep, doc; and prompt for a templated family) per layer, summed
    over the layer's neurons.

    One panel per label (``panels``, ``pair`` and ``labels`` as in :func:`neuron_heatmap`), one bar colour
    per group.

    Args:
        result: a ``CollectionAttribution``, or a ``NeuronAttribution`` with ``reduce="token"`` or
            ``"group"``.
        panels: as in :func:`neuron_heatmap`.
        pair: a ``NeuronAttribution``: draw this pair only (default: the mean over pairs).
        labels: a ``NeuronAttribution``: relevance grade of each pair, to draw the label means.
        layers: layers to draw (default: the result's ``layers``).
        title: the figure title.

    Shapes:
        ``fig.data[p * 4 + g].y``: ``[layer]``: panel ``p``'s values of group ``g`` (order cls, query,
        sep, doc) summed over ``d_mlp`` (for a ``NeuronAttribution`` and one pair:
        ``attr.by_group()[pair, layers, g].sum(-1)``).

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.attribution.stats import CollectionAttribution
        >>> stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=3)
        >>> stats.update("relevant", torch.arange(4.0).view(1, 1, 4, 1).expand(2, 2, 4, 3))
        >>> fig = group_bars(stats)
        >>> [t.name for t in fig.data], fig.data[1].y.tolist()  # query group: 1.0 x 3 neurons per layer
        (['cls', 'query', 'sep', 'doc'], [3.0, 3.0])
    """
    items = _panels(result, panels, pair, labels, "group_bars")
    rows, layer_ids = layer_rows(layers, result.layers)
    fig = make_subplots(
        rows=1, cols=len(items), shared_yaxes=True, subplot_titles=[name for name, _ in items]
    )
    for c, (name, fn) in enumerate(items):
        for gi, g in enumerate(getattr(result, "group_names", CONTENT_GROUPS)):  # + prompt (templates)
            y = as_numpy(fn(g)[rows].sum(-1))
            fig.add_trace(
                go.Bar(
                    x=[str(x) for x in layer_ids],
                    y=y,
                    name=g,
                    legendgroup=g,
                    showlegend=c == 0,
                    marker_color=color(g, gi),
                    hovertemplate=f"layer %{{x}}<br>{g} tokens<br>NIG %{{y:.4g}}<extra>{name}</extra>",
                ),
                row=1,
                col=c + 1,
            )
        fig.update_xaxes(title_text="layer", type="category", row=1, col=c + 1)
    fig.update_yaxes(title_text="NIG summed over neurons", row=1, col=1)
    return finish(fig, title or "NIG per token group and layer", barmode="group", height=420)
