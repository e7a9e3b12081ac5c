"""Figures of component sets: their layer profile, and their overlap against the chance level.

Sets are given as a mapping ``{name: set}`` or a sequence (each set's ``name``, else ``set i``).

Example:
    >>> from mechir_nig.sets import NeuronSet
    >>> a = NeuronSet([(0, 0), (0, 1)], n_layers=2, d_mlp=4, name="relevant")
    >>> b = NeuronSet([(0, 1), (1, 3)], n_layers=2, d_mlp=4, name="nonrelevant")
    >>> layer_profile_bars([a, b]).data[0].y.tolist()
    [2.0, 0.0]
    >>> overlap_bars([a, b]).data[1].y.tolist()  # the chance level of the Jaccard index
    [0.17857142857142855]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import plotly.graph_objects as go

from mechir_nig._validate import check_bool
from mechir_nig.errors import InputError
from mechir_nig.plotting._common import COLORS, color, finish, layer_bars, names_of
from mechir_nig.sets.components import ComponentSet, check_sets, noun

__all__ = ["layer_profile_bars", "overlap_bars"]

_REPORT_KEYS = ("name_a", "name_b", "jaccard", "expected_jaccard", "intersection", "expected_intersection")


def _named_sets(sets: Any, fn: str) -> list[tuple[str, ComponentSet]]:
    if isinstance(sets, ComponentSet):
        sets = [sets]
    if isinstance(sets, str | bytes) or not isinstance(sets, Iterable | Mapping):
        raise InputError(
            f"{fn} takes a NeuronSet / ComponentSet, a list of them or a {{name: set}} mapping, got "
            f"{type(sets).__name__}"
        )
    named = names_of(sets, "set")
    check_sets([s for _, s in named])  # one kind, one universe, each a set
    return named


def layer_profile_bars(
    sets: Any,
    *,
    normalize: bool = False,
    title: str | None = None,
) -> Any:
    """Members per layer of one or more sets (``ComponentSet.layer_profile()``), one bar colour per set.

    Args:
        sets: a set, a list of sets or a ``{name: set}`` mapping (one kind and universe).
        normalize: draw the share of each layer's components (count / ``width``) instead of counts.
        title: the figure title.

    Shapes:
        ``fig.data[i].y``: ``[n_layers]``, set ``i``'s ``layer_profile()`` (divided by ``width`` when
        ``normalize``); ``x`` = ``0 .. n_layers - 1``.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.sets import NeuronSet
        >>> s = NeuronSet([(0, 0), (2, 1), (2, 3)], n_layers=3, d_mlp=4)
        >>> layer_profile_bars({"top": s}, normalize=True).data[0].y.tolist()
        [0.25, 0.0, 0.5]
    """
    check_bool(normalize, "normalize")
    named = _named_sets(sets, "layer_profile_bars")
    first = named[0][1]
    unit = f"share of the layer's {noun(first.kind)}" if normalize else noun(first.kind)
    series = [
        (
            name,
            f"{name} ({len(s)})",
            np.asarray(s.layer_profile(), dtype=np.float64) / (s.width if normalize else 1),
        )
        for name, s in named
    ]
    return layer_bars(
        series,
        unit=unit,
        title=title or f"{noun(first.kind).capitalize()} per layer",
        tickformat=".1%" if normalize else None,
    )


def _reports(sets: Any, pool_layers: Iterable[int] | None) -> list[tuple[str, dict[str, Any]]]:
    """``(label, overlap_report)`` per pair of sets, or the reports given."""
    from mechir_nig.sets.chance import overlap_report

    items = list(sets.values()) if isinstance(sets, Mapping) else sets
    if (
        isinstance(items, Sequence)
        and items
        and all(isinstance(r, Mapping) and all(k in r for k in _REPORT_KEYS) for r in items)
    ):
        if pool_layers is not None:
            raise InputError(
                "pool_layers= applies to sets; the reports given already hold their chance level"
            )
        keys = list(sets) if isinstance(sets, Mapping) else [None] * len(items)
        return [
            (str(key) if key is not None else f"{r['name_a'] or 'a'} vs {r['name_b'] or 'b'}", dict(r))
            for key, r in zip(keys, items, strict=True)
        ]
    named = _named_sets(sets, "overlap_bars")
    if len(named) < 2:
        raise InputError("overlap_bars needs at least two sets (or a list of overlap_report results)")
    return [
        (f"{na} vs {nb}", overlap_report(a, b, pool_layers=pool_layers))
        for (na, a), (nb, b) in combinations(named, 2)
    ]


def overlap_bars(
    sets: Any,
    *,
    metric: str = "jaccard",
    pool_layers: Iterable[int] | None = None,
    title: str | None = None,
) -> Any:
    """Observed overlap of every pair of sets next to its chance level (``sets.chance.overlap_report``).

    For sets of labels (relevant vs non-relevant), collections, or the two halves of a collection: one
    bar per pair of sets with the observed value, and a black mark at the value two uniformly random
    sets of the same sizes drawn from the pool would have on average.

    Args:
        sets: two or more sets (list or ``{name: set}``), every pair compared; or a list (or
            ``{label: report}`` mapping) of ``overlap_report`` results.
        metric: ``"jaccard"`` (observed ``jaccard`` vs ``expected_jaccard``) or ``"intersection"``
            (``intersection`` vs ``expected_intersection``).
        pool_layers: the chance pool, passed to ``overlap_report`` (default: the sets' own pools).
        title: the figure title.

    Shapes:
        ``fig.data[0].y``: ``[pairs]`` observed values; ``fig.data[1].y``: ``[pairs]`` chance levels, in
        the order of ``itertools.combinations`` of the sets.

    Returns:
        A ``plotly.graph_objects.Figure`` (hover: sizes, pool size, lift).

    Example:
        >>> from mechir_nig.sets import NeuronSet
        >>> a = NeuronSet([(0, 0), (0, 1)], n_layers=2, d_mlp=4)
        >>> b = NeuronSet([(0, 1), (1, 3)], n_layers=2, d_mlp=4)
        >>> fig = overlap_bars({"a": a, "b": b}, metric="intersection")
        >>> fig.data[0].y.tolist(), fig.data[1].y.tolist()
        ([1.0], [0.5])
    """
    if metric not in ("jaccard", "intersection"):
        raise InputError(f"metric must be 'jaccard' or 'intersection', got {metric!r}")
    reps = _reports(sets, pool_layers)
    labels = [label for label, _ in reps]
    observed = np.asarray([r[metric] for _, r in reps], dtype=np.float64)
    chance = np.asarray([r[f"expected_{metric}"] for _, r in reps], dtype=np.float64)
    info = np.asarray(
        [
            [r.get("size_a", ""), r.get("size_b", ""), r.get("pool_size", ""), r.get("lift", float("nan"))]
            for _, r in reps
        ],
        dtype=object,
    )
    hover = (
        "sizes %{customdata[0]} and %{customdata[1]}<br>pool %{customdata[2]}<br>lift %{customdata[3]:.3g}"
    )
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=labels,
            y=observed,
            name=f"observed {metric}",
            marker_color=color("nig_top"),
            customdata=info,
            hovertemplate=f"%{{x}}<br>{metric} %{{y:.4g}}<br>{hover}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=chance,
            mode="markers",
            name="chance (random sets of the same sizes)",
            marker={"symbol": "line-ew", "size": 40, "line": {"width": 4, "color": COLORS["chance"]}},
            customdata=info,
            hovertemplate=f"%{{x}}<br>chance {metric} %{{y:.4g}}<br>{hover}<extra></extra>",
        )
    )
    fig.update_xaxes(type="category", title_text="sets compared")
    fig.update_yaxes(title_text=metric, rangemode="tozero")
    return finish(fig, title or f"Overlap of sets ({metric}) vs chance", height=420)
