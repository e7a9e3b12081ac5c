"""Shared pieces of the figures: the colour scales, input checks and small trace builders.

Every figure uses ``SCALES`` for its colour scales (signed values on ``SCALES["signed"]`` centred at 0) and
``COLORS`` for the colour of a condition, token group or predictor, so one thing has one colour everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor

from mechir_nig.errors import InputError

SCALES: Mapping[str, str] = MappingProxyType(
    {
        "signed": "RdBu_r",  # diverging, centred at 0 (zmid=0): positive = red, negative = blue
        "unsigned": "Viridis",  # magnitudes, counts
    }
)
"""Colour scales of every figure: ``signed`` for attributions, recoveries and differences (always drawn
with ``zmid=0``/``cmid=0``), ``unsigned`` for values that are never negative."""

COLORS: Mapping[str, str] = MappingProxyType(
    {
        # signs of a value (bars)
        "sign_positive": "#d6604d",
        "sign_negative": "#4393c3",
        # token groups
        "cls": "#7f7f7f",
        "query": "#1f77b4",
        "sep": "#bcbd22",
        "doc": "#ff7f0e",
        # pruning conditions and curve series
        "unpruned": "#333333",
        "nig_top": "#d62728",
        "random": "#7f7f7f",
        "bottom": "#2ca02c",
        "negative": "#9467bd",
        "nig": "#d62728",
        "act_x_grad": "#1f77b4",
        "activation": "#2ca02c",
        "chance": "#333333",
    }
)
"""Colour of each named series (token group, pruning condition, faithfulness predictor)."""

_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TEMPLATE = "plotly_white"


def color(name: str, i: int = 0) -> str:
    """The colour of series ``name`` (``COLORS``), else the ``i``-th colour of a fixed cycle."""
    return COLORS.get(name, _CYCLE[i % len(_CYCLE)])


def band_fill(hex_color: str, alpha: float = 0.2) -> str:
    """``rgba(...)`` of a ``#rrggbb`` colour with transparency ``alpha`` (for the spread bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def need(value: Any, types: type | tuple[type, ...], what: str, hint: str = "") -> Any:
    """``value`` if it is an instance of ``types``, else an ``InputError`` naming what was expected."""
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise InputError(
            f"{what} must be a {names}, got {type(value).__name__}" + (f"; {hint}" if hint else "")
        )
    return value


def pair_index(pair: Any, n: int) -> int:
    """``pair`` as an index into a result of ``n`` pairs (``0 <= pair < n``)."""
    if isinstance(pair, bool) or not isinstance(pair, int | np.integer):
        raise InputError(f"pair must be an integer index, got {pair!r} ({type(pair).__name__})")
    if not 0 <= int(pair) < n:
        raise InputError(f"pair {pair} is out of range: the result holds {n} pairs (0..{n - 1})")
    return int(pair)


def layer_rows(layers: Iterable[Any] | None, available: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(rows, layers)``: the rows of a result's layer axis holding ``layers`` (default: all of
    ``available``, the result's ``layers``), after checking each is one of them."""
    if layers is None:
        return list(range(len(available))), list(available)
    if isinstance(layers, int | np.integer) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, str | bytes) or not isinstance(layers, Iterable):
        raise InputError(f"layers must be a list of layer indices or None, got {layers!r}")
    wanted = list(layers)
    if not wanted:
        raise InputError("layers is empty; give at least one layer index or None for all layers")
    bad = [
        x for x in wanted if isinstance(x, bool) or not isinstance(x, int | np.integer) or x not in available
    ]
    if bad:
        raise InputError(
            f"layers {bad} are not in this result, which holds layers {list(available)}; pick among them"
        )
    return [list(available).index(int(x)) for x in wanted], [int(x) for x in wanted]


def as_numpy(t: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    """A float64 numpy copy of a tensor or sequence (the data stored in the traces)."""
    if isinstance(t, Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def signed_heatmap(
    z: np.ndarray, x: Iterable[Any], y: Iterable[Any], *, hovertemplate: str, name: str = "", **kw: Any
) -> Any:
    """A ``go.Heatmap`` on the signed scale, centred at 0 (``kw``: e.g. ``text``, ``coloraxis``)."""
    if "coloraxis" not in kw:
        kw.update(colorscale=SCALES["signed"], zmid=0)
    return go.Heatmap(z=z, x=list(x), y=list(y), hovertemplate=hovertemplate, name=name, **kw)


def signed_coloraxis(title: str) -> dict[str, Any]:
    """A shared colour axis on the signed scale, centred at 0 (for several heatmap panels)."""
    return {"colorscale": SCALES["signed"], "cmid": 0, "colorbar": {"title": {"text": title}}}


def finish(fig: Any, title: str | None, *, height: int | None = None, **layout: Any) -> Any:
    """Apply the common layout (template, title, height) and return ``fig``."""
    fig.update_layout(template=TEMPLATE, title={"text": title or ""}, **layout)
    if height is not None:
        fig.update_layout(height=height)
    return fig


FIGURE_CONFIG: Mapping[str, Any] = MappingProxyType(
    {"displaylogo": False, "responsive": True, "showSendToCloud": False}
)
"""The plotly ``config`` of a figure on a page: resized with its container (``responsive``)."""


def figure_html(fig: Any, *, div_id: str | None = None) -> str:
    """``fig`` as an HTML ``div`` for a page that loads plotly.js once (the report, the docs site).

    The figure takes its width from its container (``autosize``, ``responsive``: it follows the window), so
    no figure is wider than the page. A fixed ``layout.width`` (e.g. a bar chart of a few categories kept
    narrow) becomes the container's ``max-width``; the caller's ``fig`` is not changed.

    Example:
        >>> fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]), layout={"width": 700})
        >>> html = figure_html(fig, div_id="f1")
        >>> html.startswith('<div class="plotly-figure" style="width:100%;max-width:700px">')
        True
        >>> '"responsive": true' in html, fig.layout.width
        (True, 700)
    """
    import plotly.io as pio

    width = fig.layout.width
    fig = go.Figure(fig).update_layout(width=None, autosize=True)
    div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=dict(FIGURE_CONFIG))
    style = "width:100%" + (f";max-width:{int(width)}px" if width else "")
    return f'<div class="plotly-figure" style="{style}">{div}</div>'


def doc_boundary(groups_row: Tensor, positions: Sequence[int]) -> float | None:
    """x of the line between the query and the document (left edge of the first document token) among
    ``positions``, or ``None`` when the row has no query or no document tokens (a bi-encoder side)."""
    from mechir_nig.models.tokenization import DOC, QUERY

    g = groups_row.tolist()
    kept = [p for p in positions if p < len(g)]
    q = [p for p in kept if g[p] == QUERY]
    d = [p for p in kept if g[p] == DOC]
    if not q or not d:
        return None
    return min(d) - 0.5


def mark_query_doc(fig: Any, groups_row: Tensor, positions: Sequence[int]) -> None:
    """Draw the query | document separator of a one-panel figure: a dashed vertical line, with ``query``
    and ``doc`` written above the tokens of each."""
    from mechir_nig.models.tokenization import DOC, QUERY

    x = doc_boundary(groups_row, positions)
    if x is None:
        return
    g = groups_row.tolist()
    fig.add_vline(x=x, line={"color": "black", "dash": "dash", "width": 2})
    for group, label in ((QUERY, "query"), (DOC, "doc")):
        ps = [p for p in positions if p < len(g) and g[p] == group]
        fig.add_annotation(
            x=(min(ps) + max(ps)) / 2,
            y=1.0,
            yref="paper",
            yanchor="bottom",
            text=f"<b>{label}</b>",
            showarrow=False,
        )


def token_figure(
    heatmap: Any,
    keep: Sequence[int],
    ticks: Sequence[str],
    groups_row: Tensor,
    *,
    x_title: str,
    y_title: str,
    title: str,
    row_height: int,
) -> Any:
    """A one-panel ``heatmap`` over the token positions ``keep`` (labelled ``ticks``), the query | document
    separator drawn (:func:`mark_query_doc`), as tall as its rows need and as wide as its container."""
    fig = go.Figure(heatmap)
    fig.update_xaxes(tickmode="array", tickvals=keep, ticktext=ticks, tickangle=-60, title_text=x_title)
    fig.update_yaxes(type="category", title_text=y_title)
    mark_query_doc(fig, groups_row, keep)
    return finish(fig, title, height=220 + row_height * len(heatmap.y))  # as wide as its container


def layer_bars(
    series: Sequence[tuple[str, str, Any]],
    *,
    unit: str,
    title: str,
    tickformat: str | None = None,
) -> Any:
    """Bars per layer grouped by series, each ``(name, legend label, values per layer)`` in its colour."""
    fig = go.Figure()
    for i, (name, label, y) in enumerate(series):
        fig.add_trace(
            go.Bar(
                x=list(range(len(y))),
                y=np.asarray(y, dtype=np.float64),
                name=label,
                marker_color=color(name, i),
                hovertemplate=f"{name}<br>layer %{{x}}<br>{unit} %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="layer", tickmode="linear", dtick=1)
    fig.update_yaxes(title_text=unit, tickformat=tickformat)
    return finish(fig, title, barmode="group", height=400)


def names_of(items: Any, what: str) -> list[tuple[str, Any]]:
    """``(name, item)`` pairs of a mapping (its keys), or of a sequence (each item's ``name``, else
    ``f"{what} {i}"``)."""
    if isinstance(items, Mapping):
        return [(str(k), v) for k, v in items.items()]
    out = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else getattr(item, "name", "")
        out.append((str(name) if name else f"{what} {i}", item))
    return out
