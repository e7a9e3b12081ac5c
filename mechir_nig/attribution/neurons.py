"""Neuron sets (compatibility module): the names now live in ``mechir_nig.sets``.

``NeuronSet`` and the functions below are re-exported unchanged from ``mechir_nig.sets``, which also holds
attention-head sets (``ComponentSet`` with ``kind="head"``) and computes chance levels over the candidate
pool a set was selected from. New code should import from ``mechir_nig.sets``.

Example:
    >>> from mechir_nig.attribution.neurons import NeuronSet, overlap_report, select_top
"""

from __future__ import annotations

from mechir_nig.sets import (
    FUSION_METHODS,
    ComponentSet,
    NeuronSet,
    chance_pool,
    expected_overlap,
    fuse_scores,
    intersection,
    overlap_report,
    random_like,
    rank_fusion,
    select_top,
    union,
)

__all__ = [
    "FUSION_METHODS",
    "ComponentSet",
    "NeuronSet",
    "chance_pool",
    "expected_overlap",
    "fuse_scores",
    "intersection",
    "overlap_report",
    "random_like",
    "rank_fusion",
    "select_top",
    "union",
]
