"""Figures of the cross-collection study (``CollectionComparison``): the intersections between schemes per
fraction, the summary of the intersections across collections against chance, and the layer distribution
of the top neurons (the three figures of the study of Vast et al., ICTIR 2024).

Example:
    >>> from mechir_nig.experiments.compare import CollectionComparison
    >>> row = {"collection": "a", "fraction": 0.01, "scheme_a": "relevant", "scheme_b": "difference",
    ...        "jaccard": 0.2, "expected_jaccard": 0.01}
    >>> cmp = CollectionComparison(["a", "b"], None, ["relevant", "difference"], [0.01], {}, [], [],
    ...                            [row], [], {}, {})
    >>> list(scheme_overlap_curves(cmp).data[0].y)
    [0.2]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from mechir_nig.errors import InputError
from mechir_nig.plotting._common import COLORS, color, finish
from mechir_nig.plotting.sets import layer_profile_bars

__all__ = ["collection_overlap_bars", "scheme_overlap_curves", "top_layer_bars"]


def _check(result: Any, fn: str) -> Any:
    if type(result).__name__ != "CollectionComparison":
        raise InputError(
            f"{fn} draws a CollectionComparison (compare_collections), got {type(result).__name__}"
        )
    return result


def scheme_overlap_curves(result: Any, *, title: str | None = None) -> Any:
    """Jaccard index of every two schemes' top sets per fraction, one line per collection and pair of
    schemes, with its chance level dotted (the intersections between schemes per pruning fraction).

    Shapes:
        ``fig.data[2 i].y``: the Jaccard index per fraction of line ``i``; ``fig.data[2 i + 1].y`` its
        chance level.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.experiments.compare import CollectionComparison
        >>> row = {"collection": "a", "fraction": 0.01, "scheme_a": "relevant", "scheme_b": "difference",
        ...        "jaccard": 0.2, "expected_jaccard": 0.01}
        >>> cmp = CollectionComparison(["a", "b"], None, [], [0.01], {}, [], [], [row], [], {}, {})
        >>> list(scheme_overlap_curves(cmp).data[1].y)  # the chance level
        [0.01]
    """
    cmp = _check(result, "scheme_overlap_curves")
    lines: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in cmp.scheme_overlaps:
        lines.setdefault((r["collection"], r["scheme_a"], r["scheme_b"]), []).append(r)
    if not lines:
        raise InputError("the comparison has one scheme: there is no intersection between schemes to draw")
    fig = go.Figure()
    for i, ((col, a, b), rows) in enumerate(lines.items()):
        rows = sorted(rows, key=lambda r: r["fraction"])
        x = [r["fraction"] for r in rows]
        c = color("", i)
        label = f"{a} ∩ {b} @{col}"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r["jaccard"] for r in rows],
                mode="lines+markers",
                name=label,
                line={"color": c},
                hovertemplate=f"{label}<br>top %{{x:.2%}}<br>Jaccard %{{y:.3f}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[r["expected_jaccard"] for r in rows],
                mode="lines",
                name=f"chance ({label})",
                line={"color": c, "dash": "dot"},
                showlegend=False,
                hovertemplate=f"chance {label}<br>top %{{x:.2%}}<br>Jaccard %{{y:.4f}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="top fraction of the attributed neurons", tickformat=".1%")
    fig.update_yaxes(title_text="Jaccard index (dotted: chance)", rangemode="tozero")
    return finish(fig, title or "Intersections between schemes per fraction", height=420)


def collection_overlap_bars(result: Any, *, fraction: float | None = None, title: str | None = None) -> Any:
    """Per scheme: the intersection of every two collections' sets, the core neurons and the OOD neurons
    (bars) against their chance levels (black markers), at ``fraction`` (default: the first).

    Shapes:
        ``fig.data[0].y``: the observed counts; ``fig.data[1].y``: the chance levels (same x).

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.experiments.compare import CollectionComparison
        >>> core = {"kind": "core", "scheme": "relevant", "fraction": 0.01, "size": 40, "expected": 0.9,
        ...         "p_value": 1e-30}
        >>> cmp = CollectionComparison(["a", "b"], None, [], [0.01], {}, [], [core], [], [], {}, {})
        >>> fig = collection_overlap_bars(cmp)
        >>> fig.data[0].y.tolist(), fig.data[1].y.tolist()
        ([40.0], [0.9])
    """
    cmp = _check(result, "collection_overlap_bars")
    if not cmp.fractions:
        raise InputError("the comparison has no fraction")
    f = cmp.fractions[0] if fraction is None else float(fraction)
    if f not in cmp.fractions:
        raise InputError(f"fraction {fraction} is not one of the comparison's {cmp.fractions}")
    x, y, chance, hover = [], [], [], []
    for r in cmp.overlaps:
        if r["fraction"] == f:
            x.append(f"{r['scheme']}: {r['collection_a']} ∩ {r['collection_b']}")
            y.append(r["intersection"])
            chance.append(r["expected_intersection"])
            hover.append(f"p = {r['p_value']:.3g}")
    for r in cmp.shared:
        if r["fraction"] == f:
            x.append(f"{r['scheme']}: {r['kind']}")
            y.append(r["size"])
            chance.append(r["expected"])
            hover.append(f"p = {r['p_value']:.3g}")
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=x,
            y=np.asarray(y, dtype=np.float64),
            name="observed",
            marker_color=COLORS["nig_top"],
            customdata=hover,
            hovertemplate="%{x}<br>%{y} neurons<br>%{customdata}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=np.asarray(chance, dtype=np.float64),
            mode="markers",
            name="chance",
            marker={"color": COLORS["chance"], "symbol": "line-ew-open", "size": 28, "line": {"width": 3}},
            hovertemplate="%{x}<br>chance %{y:.2f}<extra></extra>",
        )
    )
    fig.update_yaxes(title_text="neurons")
    fig.update_xaxes(tickangle=-30, automargin=True)
    return finish(
        fig, title or f"Neurons shared across collections (top {f:.2%}) vs chance", height=460, bargap=0.35
    )


def top_layer_bars(
    result: Any,
    *,
    scheme: str | None = None,
    fraction: float | None = None,
    normalize: bool = True,
    title: str | None = None,
) -> Any:
    """The layer distribution of each collection's top ``scheme`` set at ``fraction`` (defaults: the
    first), as the share of each layer's neurons (``plotting.layer_profile_bars``).

    Shapes:
        ``fig.data[i].y``: ``[n_layers]``, collection ``i``'s set per layer.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.experiments.compare import CollectionComparison
        >>> from mechir_nig.sets import NeuronSet
        >>> sets = {f"relevant@{c}|0.5": NeuronSet(m, n_layers=2, d_mlp=2).to_json()
        ...         for c, m in (("a", [(0, 0)]), ("b", [(1, 0), (1, 1)]))}
        >>> cmp = CollectionComparison(["a", "b"], None, ["relevant"], [0.5], sets, [], [], [], [], {}, {})
        >>> [t.y.tolist() for t in top_layer_bars(cmp).data]  # share of each layer's neurons
        [[0.5, 0.0], [0.0, 1.0]]
    """
    cmp = _check(result, "top_layer_bars")
    sch = scheme or cmp.schemes[0]
    f = cmp.fractions[0] if fraction is None else float(fraction)
    sets = {name: cmp.set(sch, name, f) for name in cmp.collections}
    return layer_profile_bars(
        sets, normalize=normalize, title=title or f"Top {f:.2%} {sch} neurons per layer, per collection"
    )
