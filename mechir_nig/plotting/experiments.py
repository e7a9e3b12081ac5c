"""Figures of the validation studies: pruning curves and faithfulness curves and correlations.

Conditions and predictors keep one colour everywhere (``COLORS``); the spread over random seeds is a
band (mean ± standard deviation) around the random condition's mean line.

Example:
    >>> runs = [{"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0, "n_neurons": 0,
    ...          "nDCG@10": 0.5}]
    >>> runs += [{"condition": "random", "mode": "zero", "fraction": 0.1, "seed": s, "n_neurons": 2,
    ...           "nDCG@10": v} for s, v in enumerate((0.2, 0.4))]
    >>> fig = pruning_curves({"measures": ["nDCG@10"], "runs": runs}, measure="nDCG@10")
    >>> [t.name for t in fig.data]  # faithfulness_curves(faith): see its example
    ['random', 'random mean + std', 'random mean − std', 'unpruned']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechir_nig.errors import InputError
from mechir_nig.plotting._common import band_fill, color, finish, need

__all__ = ["faithfulness_bars", "faithfulness_curves", "pruning_curves"]


def _choose(given: Any, available: list[str], what: str) -> list[str]:
    if given is None:
        return available
    items = [given] if isinstance(given, str) else list(given)
    bad = [x for x in items if x not in available]
    if bad or not items:
        raise InputError(f"{what} must be among {available} (what this result holds), got {items!r}")
    return items


def _band(
    fig: Any, x: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str, hexcolor: str, **where: Any
) -> None:
    """Upper and lower edges of ``mean ± std`` (the lower filled up to the upper)."""
    common = {"mode": "lines", "line": {"width": 0}, "legendgroup": name, "showlegend": False}
    fig.add_trace(
        go.Scatter(x=x, y=mean + std, name=f"{name} mean + std", hoverinfo="skip", **common), **where
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=mean - std,
            name=f"{name} mean − std",
            fill="tonexty",
            fillcolor=band_fill(hexcolor),
            hoverinfo="skip",
            **common,
        ),
        **where,
    )


def _pruning_runs(result: Any) -> tuple[list[str], list[dict[str, Any]]]:
    from mechir_nig.experiments.pruning import PruningResult

    if isinstance(result, PruningResult):
        return list(result.measures), list(result.runs)
    if isinstance(result, Mapping) and "runs" in result and "measures" in result:
        return list(result["measures"]), list(result["runs"])
    raise InputError(
        f"result must be a PruningResult (or its to_dict() / saved JSON), got {type(result).__name__}"
    )


def pruning_curves(
    result: Any,
    *,
    measure: str | None = None,
    modes: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    title: str | None = None,
) -> Any:
    """Effectiveness against the fraction of neurons ablated: one line per condition, one panel per mode.

    Conditions with several seeds (``random``) are drawn as their mean with a band of ± one standard
    deviation over the seeds (the sample standard deviation, as ``PruningResult.table()``); the
    ``unpruned`` model is a dashed horizontal line.

    Args:
        result: a ``PruningResult`` (or its ``to_dict()``, e.g. read back from ``save()``'s JSON).
        measure: the measure on the y axis (default: the first of ``result.measures``).
        modes: ablation modes to draw, one panel each (default: all in the result).
        conditions: conditions to draw (default: all in the result but ``unpruned``).
        title: the figure title.

    Shapes:
        per panel, for each condition: a line (name = the condition) with ``x`` = the sorted fractions
        ``[F]`` and ``y`` = the mean of ``measure`` over seeds ``[F]``; for conditions with several seeds,
        then two traces ``"{condition} mean + std"`` and ``"{condition} mean − std"`` ``[F]``; last the
        ``unpruned`` line (``y`` = the unpruned value at both ends of the x range).

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> runs = [{"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0, "n_neurons": 0, "RR@10": 0.5}]
        >>> runs += [{"condition": "random", "mode": "zero", "fraction": 0.1, "seed": s, "n_neurons": 2,
        ...           "RR@10": v} for s, v in enumerate((0.2, 0.4))]
        >>> fig = pruning_curves({"measures": ["RR@10"], "runs": runs})
        >>> [t.name for t in fig.data]
        ['random', 'random mean + std', 'random mean − std', 'unpruned']
        >>> round(float(fig.data[1].y[0]), 4)  # 0.3 + std([0.2, 0.4])
        0.4414
    """
    measures, runs = _pruning_runs(result)
    measure = measures[0] if measure is None else measure
    if measure not in measures:
        raise InputError(f"measure must be one of {measures}, got {measure!r}")
    base = next((r for r in runs if r["condition"] == "unpruned"), None)
    all_modes = list(dict.fromkeys(r["mode"] for r in runs if r["condition"] != "unpruned"))
    all_conds = list(dict.fromkeys(r["condition"] for r in runs if r["condition"] != "unpruned"))
    if not all_modes:
        raise InputError("the result holds no pruned condition (only the unpruned model); run more fractions")
    mode_list = _choose(modes, all_modes, "modes")
    cond_list = _choose(conditions, all_conds, "conditions")
    fig = make_subplots(rows=1, cols=len(mode_list), shared_yaxes=True, subplot_titles=mode_list)
    fractions = sorted({float(r["fraction"]) for r in runs})
    x_range = np.asarray([min(fractions), max(fractions)], dtype=np.float64)
    for c, mode in enumerate(mode_list):
        where = {"row": 1, "col": c + 1}
        for i, cond in enumerate(cond_list):
            by_f: dict[float, list[float]] = {}
            neurons: dict[float, int] = {}
            for r in runs:
                if r["condition"] == cond and r["mode"] == mode:
                    by_f.setdefault(float(r["fraction"]), []).append(float(r[measure]))
                    neurons[float(r["fraction"])] = int(r["n_neurons"])
            if not by_f:
                continue
            x = np.asarray(sorted(by_f), dtype=np.float64)
            groups = [np.asarray(by_f[f], dtype=np.float64) for f in x]
            mean = np.asarray([g.mean() for g in groups])
            std = np.asarray([g.std(ddof=1) if len(g) > 1 else 0.0 for g in groups])
            n_seeds = np.asarray([len(g) for g in groups])
            hexcolor = color(cond, i)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=mean,
                    name=cond,
                    mode="lines+markers",
                    legendgroup=cond,
                    showlegend=c == 0,
                    line={"color": hexcolor},
                    customdata=np.stack([std, n_seeds, [neurons[f] for f in x]], -1),
                    hovertemplate=(
                        f"{cond}<br>fraction %{{x:.3g}} (%{{customdata[2]}} neurons)<br>{measure} %{{y:.4f}}"
                        " ± %{customdata[0]:.4f} (%{customdata[1]} seeds)<extra></extra>"
                    ),
                ),
                **where,
            )
            if int(n_seeds.max()) > 1:
                _band(fig, x, mean, std, cond, hexcolor, **where)
        if base is not None:
            fig.add_trace(
                go.Scatter(
                    x=x_range,
                    y=np.full(2, float(base[measure])),
                    name="unpruned",
                    mode="lines",
                    legendgroup="unpruned",
                    showlegend=c == 0,
                    line={"color": color("unpruned"), "dash": "dash"},
                    hovertemplate=f"unpruned<br>{measure} %{{y:.4f}}<extra></extra>",
                ),
                **where,
            )
        fig.update_xaxes(title_text="fraction of neurons ablated", tickformat=".2~%", **where)
    fig.update_yaxes(title_text=measure, row=1, col=1)
    return finish(fig, title or f"Pruning: {measure} vs fraction ablated", height=440)


def _faith(result: Any) -> Any:
    from mechir_nig.experiments.faithfulness import FaithfulnessResult

    return need(result, FaithfulnessResult, "result", "draw the output of experiments.faithfulness")


def faithfulness_curves(result: Any, *, modes: Sequence[str] | None = None, title: str | None = None) -> Any:
    """Mean score drop when the top-``k`` NIG neurons are ablated together, against ``k`` random neurons.

    One panel per ablation mode; the random line is the mean over seeds with a band of ± its standard
    deviation over seeds (``curve[mode]["random_std"]``).

    Args:
        result: a ``FaithfulnessResult`` computed with ``curve_k >= 1``.
        modes: ablation modes to draw (default: every mode with a curve).
        title: the figure title.

    Shapes:
        per panel: ``"nig"`` ``[K]`` = ``curve[mode]["nig"]``, ``"random"`` ``[K]``, then
        ``"random mean + std"`` and ``"random mean − std"`` ``[K]``; ``x`` = ``1 .. K``.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.experiments.faithfulness import faithfulness
        >>> faith = faithfulness(ce, queries, docs, k=2, curve_k=2, seeds=2, n_steps=2, interventions=("zero",))
        >>> fig = faithfulness_curves(faith)  # fig.show() opens it
        >>> [len(t.y) for t in fig.data]  # K = curve_k points per line
        [2, 2, 2, 2]
    """
    result = _faith(result)
    if not result.curve:
        raise InputError("the result has no curve: run faithfulness(..., curve_k=K) with K >= 1")
    mode_list = _choose(modes, list(result.curve), "modes")
    fig = make_subplots(rows=1, cols=len(mode_list), shared_yaxes=True, subplot_titles=mode_list)
    for c, mode in enumerate(mode_list):
        where = {"row": 1, "col": c + 1}
        cur = result.curve[mode]
        x: np.ndarray = np.arange(1, len(cur["nig"]) + 1, dtype=np.float64)
        for name, label in (("nig", "top-k by NIG"), ("random", "k random neurons")):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=np.asarray(cur[name], dtype=np.float64),
                    name=name,
                    mode="lines+markers",
                    legendgroup=name,
                    showlegend=c == 0,
                    line={"color": color(name)},
                    hovertemplate=f"{label}<br>k %{{x}}<br>mean score drop %{{y:.4g}}<extra>{mode}</extra>",
                ),
                **where,
            )
        rnd, std = (
            np.asarray(cur["random"], dtype=np.float64),
            np.asarray(cur["random_std"], dtype=np.float64),
        )
        _band(fig, x, rnd, std, "random", color("random"), **where)
        fig.update_xaxes(title_text="neurons ablated together (k)", **where)
    fig.update_yaxes(title_text="mean score drop F(x) − F(x, ablated)", row=1, col=1)
    return finish(fig, title or "Faithfulness: score drop of the top-k NIG neurons vs random", height=420)


def faithfulness_bars(result: Any, *, title: str | None = None) -> Any:
    """Spearman correlation of the single-neuron score drops with each predictor, per ablation mode.

    Args:
        result: a ``FaithfulnessResult``.
        title: the figure title.

    Shapes:
        ``fig.data[j].y``: ``[modes]``, ``spearman[mode][predictor_j]`` (predictors ``nig``,
        ``act_x_grad``, ``activation``), ``x`` = the modes.

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.experiments.faithfulness import faithfulness
        >>> faith = faithfulness(ce, queries, docs, k=2, curve_k=2, seeds=2, n_steps=2, interventions=("zero",))
        >>> fig = faithfulness_bars(faith)  # fig.show() opens it
        >>> len(fig.data) > 0
        True
    """
    result = _faith(result)
    modes = list(result.spearman)
    if not modes:
        raise InputError("the result holds no correlations (no intervention was run)")
    predictors = list(dict.fromkeys(p for m in modes for p in result.spearman[m]))
    fig = go.Figure()
    for i, p in enumerate(predictors):
        y = np.asarray([result.spearman[m].get(p, math.nan) for m in modes], dtype=np.float64)
        fig.add_trace(
            go.Bar(
                x=modes,
                y=y,
                name=p,
                marker_color=color(p, i),
                hovertemplate=f"{p}<br>mode %{{x}}<br>Spearman %{{y:.3f}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="ablation mode", type="category")
    fig.update_yaxes(title_text="mean Spearman ρ over pairs", range=[-1, 1])
    return finish(
        fig,
        title or f"Faithfulness: predicted vs observed drops of the top-{result.k} neurons",
        barmode="group",
    )
