"""Plotly figures of every result: each function takes result objects and returns a ``go.Figure``.

function                   draws                                   from
=========================  ======================================  =====================================
``neuron_heatmap``         layer x neuron NIG, per label + diff    ``CollectionAttribution``,
                                                                   ``NeuronAttribution``
``top_neurons_bar``        the top-k neurons by a scheme           the same, or a scored ``NeuronSet``
``token_heatmap``          tokens x layers NIG of one pair         ``NeuronAttribution`` (reduce=token)
``group_bars``             cls/query/sep/doc NIG per layer         ``CollectionAttribution``,
                                                                   ``NeuronAttribution``
``layer_profile_bars``     members per layer of neuron sets        ``NeuronSet`` / ``ComponentSet`` s
``overlap_bars``           overlap of sets vs its chance level     sets, or ``overlap_report`` dicts
``pruning_curves``         measure vs fraction, random band        ``PruningResult``
``patching_heatmap``       layer x position / layer x head         ``PatchingResult``
``path_patching_heatmaps`` layer x head per receiver               ``PathPatchingResult``
``path_patching_heatmaps``    layer x head per receiver               ``PathPatchingResult``
``faithfulness_curves``    top-k NIG vs random score drops         ``FaithfulnessResult``
``faithfulness_bars``      Spearman of drops vs predictors         ``FaithfulnessResult``
=========================  ======================================  =====================================
=======
============================  ======================================  =====================================
function                      draws                                   from
============================  ======================================  =====================================
``neuron_heatmap``            layer x neuron NIG, per label + diff    ``CollectionAttribution``,
                                                                      ``NeuronAttribution``
``top_neurons_bar``           the top-k neurons by a scheme           the same, or a scored ``NeuronSet``
``token_heatmap``             tokens x layers NIG of one pair         ``NeuronAttribution`` (reduce=token)
``group_bars``                cls/query/sep/doc NIG per layer         ``CollectionAttribution``,
                                                                      ``NeuronAttribution``
``layer_profile_bars``        members per layer of neuron sets        ``NeuronSet`` / ``ComponentSet`` s
``overlap_bars``              overlap of sets vs its chance level     sets, or ``overlap_report`` dicts
``pruning_curves``            measure vs fraction, random band        ``PruningResult``
``patching_heatmap``          layer x position / layer x head         ``PatchingResult``
``faithfulness_curves``       top-k NIG vs random score drops         ``FaithfulnessResult``
``faithfulness_bars``         Spearman of drops vs predictors         ``FaithfulnessResult``
``scheme_overlap_curves``     Jaccard between schemes per fraction    ``CollectionComparison``
``collection_overlap_bars``   shared / core / OOD neurons vs chance   ``CollectionComparison``
``top_layer_bars``            layer distribution of the top sets      ``CollectionComparison``
============================  ======================================  =====================================

The circuit analyses (:mod:`mechir_nig.plotting.circuits`): ``interaction_heatmap`` (interaction x layer
drop of an ``InteractionResult``), ``attention_group_heatmap`` (layer x head shares of an
``AttentionGroups``) and ``attention_pattern_view`` (one pair's pattern, a slider over the heads).

Result objects draw themselves: ``result.plot(kind=...)`` calls :func:`plot`, whose ``KINDS`` table maps a
result type and a kind to a function (the first kind is the default). Colour scales are ``SCALES``
(signed values: ``"RdBu_r"``, centred at 0, positive = red); series colours are ``COLORS``.

Example:
    >>> from mechir_nig.sets import NeuronSet
    >>> fig = plot(NeuronSet([(0, 1), (1, 2)], n_layers=2, d_mlp=4), "profile")
    >>> type(fig).__name__, fig.data[0].y.tolist()
    ('Figure', [1.0, 1.0])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from mechir_nig.errors import InputError
from mechir_nig.plotting._common import COLORS, SCALES
from mechir_nig.plotting.attribution import group_bars, neuron_heatmap, token_heatmap, top_neurons_bar
from mechir_nig.plotting.circuits import attention_group_heatmap, attention_pattern_view, interaction_heatmap
from mechir_nig.plotting.compare import collection_overlap_bars, scheme_overlap_curves, top_layer_bars
from mechir_nig.plotting.experiments import faithfulness_bars, faithfulness_curves, pruning_curves
from mechir_nig.plotting.patching import patching_heatmap, path_patching_heatmaps
from mechir_nig.plotting.sets import layer_profile_bars, overlap_bars

__all__ = [
    "COLORS",
    "dispatch",
    "attention_group_heatmap",
    "attention_pattern_view",
    "interaction_heatmap",
    "KINDS",
    "SCALES",
    "collection_overlap_bars",
    "faithfulness_bars",
    "faithfulness_curves",
    "group_bars",
    "layer_profile_bars",
    "neuron_heatmap",
    "overlap_bars",
    "path_patching_heatmaps",
    "patching_heatmap",
    "plot",
    "pruning_curves",
    "scheme_overlap_curves",
    "token_heatmap",
    "top_layer_bars",
    "top_neurons_bar",
]

KINDS: Mapping[str, Mapping[str, Callable[..., Any]]] = MappingProxyType(
    {
        "NeuronAttribution": {
            "heatmap": neuron_heatmap,
            "top": top_neurons_bar,
            "tokens": token_heatmap,
            "groups": group_bars,
        },
        "CollectionAttribution": {"heatmap": neuron_heatmap, "top": top_neurons_bar, "groups": group_bars},
        "ComponentSet": {"profile": layer_profile_bars, "top": top_neurons_bar},
        "PruningResult": {"curves": pruning_curves},
        "PatchingResult": {"heatmap": patching_heatmap},
        "FaithfulnessResult": {"curves": faithfulness_curves, "correlations": faithfulness_bars},
    }
)
"""Result type name -> ``{kind: figure function}``; the first kind of each is the default of ``plot``."""


def _type_key(result: Any) -> str | None:
    for cls in type(result).__mro__:  # a NeuronSet is a ComponentSet
        if cls.__name__ in KINDS and cls.__module__.startswith("mechir_nig."):
            return cls.__name__
    return None


def plot(result: Any, kind: str | None = None, **kwargs: Any) -> Any:
    """The figure ``kind`` of ``result`` (what every result's ``.plot()`` calls).

    Args:
        result: a ``NeuronAttribution``, ``CollectionAttribution``, ``NeuronSet`` / ``ComponentSet``,
            ``PruningResult``, ``PatchingResult`` or ``FaithfulnessResult``.
        kind: one of ``KINDS[type(result).__name__]`` (default: its first kind).
        **kwargs: passed to the figure function (e.g. ``pair=0``, ``layers=[0, 1]``, ``title=...``).

    Returns:
        A ``plotly.graph_objects.Figure``.

    Example:
        >>> from mechir_nig.sets import NeuronSet
        >>> plot(NeuronSet([(0, 1)], n_layers=1, d_mlp=2), "bars")
        Traceback (most recent call last):
        ...
        mechir_nig.errors.InputError: unknown kind 'bars' for a NeuronSet; use one of ['profile', 'top']
    """
    key = _type_key(result)
    if key is None:
        raise InputError(
            f"cannot plot a {type(result).__name__}; plot draws {sorted(KINDS)} (for a list of sets use "
            "layer_profile_bars or overlap_bars)"
        )
    return dispatch(result, KINDS[key], kind, kwargs)


def dispatch(
    result: Any, kinds: Mapping[str, Callable[..., Any]], kind: str | None, kwargs: dict[str, Any]
) -> Any:
    """Call the figure function ``kinds[kind]`` (default: the first) on ``result`` with ``kwargs``, refusing
    an unknown kind or option (``plot``; the circuits' results use it with ``circuits.CIRCUIT_KINDS``).

    Example:
        >>> from mechir_nig.sets import NeuronSet
        >>> dispatch(NeuronSet([(0, 1)], n_layers=1, d_mlp=2), {"profile": layer_profile_bars}, None, {}).data[0].y.tolist()
        [1.0]
    """
    if kind is None:
        kind = next(iter(kinds))
    if kind not in kinds:
        raise InputError(f"unknown kind {kind!r} for a {type(result).__name__}; use one of {list(kinds)}")
    fn = kinds[kind]
    options = [p for p in inspect.signature(fn).parameters][1:]
    unknown = [k for k in kwargs if k not in options]
    if unknown:
        raise InputError(f"{fn.__name__}() has no option {unknown[0]!r}; its options are {options}")
    return fn(result, **kwargs)
