"""Figures of the circuit analyses: the interaction study and the attention patterns summarised by group.

=============================  ==============================================  ========================
function                       draws                                           from
=============================  ==============================================  ========================
``interaction_heatmap``        interaction x layer drop of a measure, one      ``InteractionResult``
                               signed colour scale, Holm-significant cells *
``attention_group_heatmap``    layer x head share of one group's attention,    ``AttentionGroups``
                               one panel per category, one scale (0..1)
``attention_pattern_view``     one head's attention pattern of one pair with   ``AttentionGroups``
                               token labels; a slider picks the head
=============================  ==============================================  ========================

Everything is plotly: the report inlines plotly.js once, so the views work offline (no CDN).

Example:
    >>> from mechir_nig.experiments.interaction import InteractionResult
    >>> runs = [{"interaction": "none", "layer": None, "nDCG@10": 0.7},
    ...         {"interaction": "query->doc", "layer": 0, "nDCG@10": 0.5}]
    >>> pq = [{"a": {"nDCG@10": 0.8}, "b": {"nDCG@10": 0.6}}, {"a": {"nDCG@10": 0.5}, "b": {"nDCG@10": 0.5}}]
    >>> res = InteractionResult(["nDCG@10"], [["query", "doc"]], [0], runs, pq, ["a", "b"], {})
    >>> fig = interaction_heatmap(res, measure="nDCG@10")  # fig.show() opens it
    >>> from mechir_nig.interventions.attention import attention_by_group
    >>> groups = attention_by_group(ce, [("what is a neuron", "a neuron is a cell")], layers=[0, 1])
    >>> fig = attention_pattern_view(groups, layer=1, head=0)
    >>> len(fig.data) > 0
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechir_nig.errors import InputError
from mechir_nig.plotting._common import SCALES, as_numpy, finish, signed_heatmap

__all__ = [
    "CIRCUIT_KINDS",
    "attention_group_heatmap",
    "attention_pattern_view",
    "interaction_heatmap",
    "plot_circuit",
]


def interaction_heatmap(
    result: Any, measure: str | None = None, *, n_resamples: int = 10000, title: str | None = None
) -> Any:
    """Interaction x layer heatmap of the drop of ``measure`` (unblocked − blocked; positive: blocking
    hurts), centred at 0 on one colour scale; ``*`` marks cells with Holm-adjusted ``p < 0.05``, the
    hover gives the interval and p-values (``InteractionResult.statistics``).

    Example:
        >>> from mechir_nig.experiments.interaction import InteractionResult
        >>> runs = [{"interaction": "none", "layer": None, "nDCG@10": 0.7},
        ...         {"interaction": "query->doc", "layer": 0, "nDCG@10": 0.5}]
        >>> pq = [{"a": {"nDCG@10": 0.8}, "b": {"nDCG@10": 0.6}}, {"a": {"nDCG@10": 0.5}, "b": {"nDCG@10": 0.5}}]
        >>> res = InteractionResult(["nDCG@10"], [["query", "doc"]], [0], runs, pq, ["a", "b"], {})
        >>> fig = interaction_heatmap(res)
        >>> [round(float(v), 6) for v in fig.data[0].z[0]]  # the drop 0.7 - 0.5 of query->doc at layer 0
        [0.2]
    """
    from mechir_nig.findings import ALPHA

    m = measure or result.measures[0]
    action = getattr(result, "action", "blocked")
    what, base = ("Blocking attention", "unblocked")
    if action != "blocked":
        what, base = (f"Attention {action}", "unmodified")
    z = as_numpy(result.drops(m))
    stats = {(r["interaction"], r["layer"]): r for r in result.statistics(m, n_resamples=n_resamples)}
    x = [f"L{c}" if isinstance(c, int) else str(c) for c in result.layers]
    text, hover = [], []
    for label in result.labels:
        trow, hrow = [], []
        for c in result.layers:
            r = stats.get((label, c))
            if r is None:
                trow.append("")
                hrow.append("not run")
                continue
            trow.append("*" if r["p_holm"] < ALPHA else "")
            lo, hi = r["drop_ci"]
            hrow.append(
                f"CI [{lo:+.4f}, {hi:+.4f}], p {r['p']:.3g}, Holm {r['p_holm']:.3g}, {r['n_queries']} queries"
            )
        text.append(trow)
        hover.append(hrow)
    fig = go.Figure(
        signed_heatmap(
            z,
            x,
            result.labels,
            text=text,
            texttemplate="%{text}",
            customdata=np.array(hover, dtype=object),
            hovertemplate=f"%{{y}} {action} at %{{x}}<br>drop %{{z:+.4f}}<br>%{{customdata}}<extra></extra>",
            colorbar={"title": {"text": f"drop {m}"}},
        )
    )
    fig.update_xaxes(title_text=f"layer {action}", type="category")
    fig.update_yaxes(title_text="interaction (from->to)", type="category", autorange="reversed")
    return finish(
        fig,
        title or f"{what}: drop of {m} ({base} {result.runs[0][m]:.4f}; * Holm p < {ALPHA:g})",
        height=max(280, 60 * len(result.labels) + 160),
    )


def attention_group_heatmap(result: Any, from_group: str = "query", *, title: str | None = None) -> Any:
    """Layer x head heatmaps of the mean share of ``from_group``'s attention on each category
    (``to_categories``), one panel each on one colour scale 0..1.

    Example:
        >>> from mechir_nig.interventions.attention import attention_by_group
        >>> groups = attention_by_group(ce, [("what is a neuron", "a neuron is a cell")], layers=[0, 1])
        >>> fig = attention_group_heatmap(groups, "query")
        >>> len(fig.data) == len(groups.to_categories)  # one panel per category
        True
    """
    cats = list(result.to_categories)
    fig = make_subplots(
        rows=1, cols=len(cats), subplot_titles=cats, shared_yaxes=True, horizontal_spacing=0.03
    )
    for j, c in enumerate(cats):
        z = as_numpy(result.share(from_group, c))
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(z.shape[1])),
                y=[f"L{layer}" for layer in result.layers],
                coloraxis="coloraxis",
                hovertemplate=f"{from_group} -> {c}<br>%{{y}} head %{{x}}<br>share %{{z:.3f}}<extra></extra>",
            ),
            row=1,
            col=j + 1,
        )
        fig.update_xaxes(title_text="head", row=1, col=j + 1)
    fig.update_yaxes(type="category", autorange="reversed", title_text="layer", row=1, col=1)
    fig.update_layout(
        coloraxis={
            "colorscale": SCALES["unsigned"],
            "cmin": 0,
            "cmax": 1,
            "colorbar": {"title": {"text": "share"}},
        }
    )
    n = len(result)
    return finish(
        fig,
        title or f"Where {from_group} tokens attend (mean share of attention over {n} pairs)",
        height=max(300, 28 * len(result.layers) + 180),
    )


def attention_pattern_view(
    result: Any, layer: int | None = None, head: int | None = None, *, title: str | None = None
) -> Any:
    """One pair's attention pattern (``result.pattern``) as a query-token x key-token heatmap with the
    tokens as labels; a slider steps through every (layer, head), starting at ``layer``/``head`` (default
    the first). The circuitsvis-style view of the report, drawn offline with plotly.

    Example:
        >>> from mechir_nig.interventions.attention import attention_by_group
        >>> groups = attention_by_group(ce, [("what is a neuron", "a neuron is a cell")], layers=[0, 1])
        >>> fig = attention_pattern_view(groups, layer=0, head=1)
        >>> len(fig.data) > 0
        True
    """
    if result.pattern is None:
        raise InputError("this AttentionGroups holds no pattern: compute it with view_pair= set")
    pat = as_numpy(result.pattern)  # [layer, head, pos, pos]
    n_layers, n_heads, n = pat.shape[0], pat.shape[1], pat.shape[-1]
    li = result.layers.index(layer) if layer is not None and layer in result.layers else 0
    if layer is not None and layer not in result.layers:
        raise InputError(f"layer must be one of {result.layers}, got {layer!r}")
    h0 = 0 if head is None else int(head)
    if not 0 <= h0 < n_heads:
        raise InputError(f"head must be in 0..{n_heads - 1}, got {head!r}")
    tokens = list(result.tokens) or [str(i) for i in range(n)]
    groups = list(result.token_groups) or [""] * n
    ticks = [f"{i}:{t}" for i, t in enumerate(tokens)]
    hover = np.array(
        [[f"{tokens[q]} ({groups[q]}) -> {tokens[k]} ({groups[k]})" for k in range(n)] for q in range(n)]
    )
    fig = go.Figure()
    steps = []
    start = li * n_heads + h0
    for i in range(n_layers):
        for h in range(n_heads):
            idx = i * n_heads + h
            fig.add_trace(
                go.Heatmap(
                    z=pat[i, h],
                    x=list(range(n)),
                    y=list(range(n)),
                    zmin=0,
                    zmax=1,
                    colorscale=SCALES["unsigned"],
                    customdata=hover,
                    visible=idx == start,
                    hovertemplate="%{customdata}<br>weight %{z:.3f}<extra></extra>",
                    colorbar={"title": {"text": "attention"}},
                    name=f"L{result.layers[i]}H{h}",
                )
            )
            visible = [False] * (n_layers * n_heads)
            visible[idx] = True
            steps.append(
                {"method": "update", "args": [{"visible": visible}], "label": f"L{result.layers[i]}H{h}"}
            )
    axis = {"tickmode": "array", "tickvals": list(range(n)), "ticktext": ticks, "tickfont": {"size": 9}}
    fig.update_xaxes(title_text="key token (attended to)", **axis)
    fig.update_yaxes(title_text="query token (attending)", autorange="reversed", **axis)
    fig.update_layout(
        sliders=[{"active": start, "steps": steps, "currentvalue": {"prefix": "head: "}, "pad": {"t": 60}}]
    )
    pair = f"pair {result.view_pair}" if result.view_pair is not None else "one pair"
    return finish(
        fig, title or f"Attention pattern of {pair} (slider: layer and head)", height=max(420, 14 * n + 220)
    )


CIRCUIT_KINDS: dict[str, dict[str, Any]] = {
    "InteractionResult": {"heatmap": interaction_heatmap},
    "AttentionGroups": {"heads": attention_group_heatmap, "pattern": attention_pattern_view},
}
"""Result type name -> ``{kind: figure function}`` of the circuit results (the first kind is the default);
``plotting.KINDS`` holds the other results'."""


def plot_circuit(result: Any, kind: str | None = None, **kwargs: Any) -> Any:
    """The figure ``kind`` of an ``InteractionResult`` or ``AttentionGroups`` (their ``.plot()``).

    Example:
        >>> from mechir_nig.interventions.attention import attention_by_group
        >>> groups = attention_by_group(ce, [("what is a neuron", "a neuron is a cell")], layers=[0, 1])
        >>> fig = plot_circuit(groups, "pattern", layer=0, head=1)
        >>> len(fig.data) > 0
        True
    """
    from mechir_nig.plotting import dispatch

    kinds = CIRCUIT_KINDS.get(type(result).__name__)
    if kinds is None:
        raise InputError(f"plot_circuit draws {sorted(CIRCUIT_KINDS)}, not a {type(result).__name__}")
    return dispatch(result, kinds, kind, kwargs)
