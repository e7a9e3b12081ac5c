"""Chance levels of set overlap over the candidate pool: exact hypergeometric expectations and lift.

Two sets selected from the same ``N`` candidates (the pool: every component of the layers they were
selected from) overlap by chance as two independent, uniformly random sets of their sizes would. The
intersection size is hypergeometric, so the expected intersection and the expected Jaccard index are exact
sums (``expected_overlap``); ``overlap_report`` compares two sets with that chance level. Using the pool,
not the whole model, matters: two sets drawn from one layer of a 6-layer model overlap about 6 times more
by chance than two sets drawn from all layers.

Example:
    >>> import torch
    >>> from mechir_nig.sets import overlap_report, select_top
    >>> g = torch.Generator().manual_seed(0)
    >>> a = select_top(torch.randn(6, 100, generator=g), k=20, layers=[2])  # 20 of layer 2's 100 neurons
    >>> b = select_top(torch.randn(6, 100, generator=g), k=20, layers=[2])
    >>> rep = overlap_report(a, b)
    >>> rep["pool_size"], rep["expected_intersection"]
    (100, 4.0)
    >>> overlap_report(a, b, pool_layers=range(6))["expected_intersection"]  # over the whole model
    0.6666666666666666
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from mechir_nig._validate import as_int, check_layers
from mechir_nig.errors import InputError
from mechir_nig.sets.components import ComponentSet, check_set
from mechir_nig.statistics import overlap_p_value

_TAIL_D2 = 400.0
"""Hypergeometric terms further than ``d = sqrt(_TAIL_D2 * min(a, b))`` from the mean are skipped: by
Hoeffding's bound for sampling without replacement their total mass is below ``2 exp(-2 d² / min(a, b))
= 2 exp(-800)``, far below float64 resolution."""


def expected_overlap(size_a: int, size_b: int, universe: int) -> dict[str, float]:
    """Chance level of the overlap of two independent, uniformly random sets of sizes ``a`` and ``b``
    drawn from ``universe`` elements (the pool size ``N``; ``a.pool_size`` for a selected set).

    The intersection size ``X`` is hypergeometric, ``P(X = x) = C(a, x) C(N − a, b − x) / C(N, b)``, so
    ``E[X] = a b / N`` and the expected Jaccard index is the exact sum ``Σ_x P(X = x) · x / (a + b − x)``
    over the support ``max(0, a + b − N) <= x <= min(a, b)``. The log-pmf is built in float64 from the
    ratio ``P(x + 1) / P(x) = (a − x)(b − x) / ((x + 1)(N − a − b + x + 1))`` by a cumulative sum of logs
    (stable: no differences of huge ``lgamma`` values, relative error ~1e-13 instead of ~1e-9 at
    ``N = 10^6``), exponentiated after subtracting its maximum and normalised by its sum. Terms further
    than ``sqrt(400 min(a, b))`` from the mean are skipped (Hoeffding's bound puts their total mass below
    ``2 e^-800``), so ``N`` up to ``10^6`` and sizes up to ``10^5`` take well under a millisecond. The
    Jaccard index of two empty sets is taken as 0.

    Args:
        size_a: the size ``a`` of the first set.
        size_b: the size ``b`` of the second set.
        universe: the number ``N`` of candidates both sets were drawn from.

    Returns:
        ``{"intersection": a b / N, "union": a + b − a b / N, "jaccard": E[|A ∩ B| / |A ∪ B|]}``.

    Example:
        >>> expected_overlap(4, 5, 12)["intersection"]
        1.6666666666666667
    """
    a, b, n = as_int(size_a, "size_a"), as_int(size_b, "size_b"), as_int(universe, "universe")
    if n < 1:
        raise InputError(f"universe must be >= 1 (the pool size, e.g. len(layers) * d_mlp), got {n}")
    if not (0 <= a <= n and 0 <= b <= n):
        raise InputError(f"set sizes must be between 0 and the universe size {n}, got size_a={a}, size_b={b}")
    mean = a * b / n
    out = {"intersection": mean, "union": a + b - mean}
    if a == 0 or b == 0:
        out["jaccard"] = 0.0
        return out
    lo, hi = max(0, a + b - n), min(a, b)
    half = math.ceil(math.sqrt(_TAIL_D2 * min(a, b))) + 1
    lo, hi = max(lo, math.floor(mean) - half), min(hi, math.ceil(mean) + half)
    step: np.ndarray = np.arange(lo, hi, dtype=np.float64)  # log P(x + 1) − log P(x) for x = lo .. hi − 1
    log_ratio = np.log(a - step) + np.log(b - step) - np.log(step + 1) - np.log(n - a - b + step + 1)
    logw = np.concatenate(([0.0], np.cumsum(log_ratio)))
    w = np.exp(logw - logw.max())
    x: np.ndarray = np.arange(lo, hi + 1, dtype=np.float64)
    out["jaccard"] = float(np.dot(w, x / (a + b - x)) / w.sum())
    return out


def chance_pool(a: ComponentSet, b: ComponentSet) -> tuple[int, ...]:
    """The layers over which the chance overlap of ``a`` and ``b`` is exact.

    The null is that each set is a uniformly random set of its size from its own pool. When both sets
    have the same pool that pool is the answer. When one pool contains the other, the larger one is: for
    any fixed ``A`` inside the smaller pool, a uniformly random ``B`` of the larger pool ``P`` meets it in a
    ``Hypergeometric(|P|, a, b)`` number of components, exactly as if both were drawn from ``P``. When
    neither pool contains the other there is no single pool with that property and an ``InputError`` asks
    for an explicit one (``overlap_report(..., pool_layers=...)``).

    Example:
        >>> import torch
        >>> from mechir_nig.sets import select_top
        >>> s = torch.arange(12.0).view(3, 4)  # [n_layers, d_mlp]
        >>> chance_pool(select_top(s, k=2, layers=[1]), select_top(s, k=3))
        (0, 1, 2)
    """
    a, b = check_set(a, "a"), check_set(b, "b")
    pa, pb = set(a.pool_layers), set(b.pool_layers)
    if pa <= pb:
        return b.pool_layers
    if pb <= pa:
        return a.pool_layers
    raise InputError(
        f"the sets were selected from different candidate layers ({a.name or 'a'}: {list(a.pool_layers)}, "
        f"{b.name or 'b'}: {list(b.pool_layers)}) and neither contains the other, so no single pool gives "
        "their chance overlap; select both from the same layers, or pass pool_layers=[...] (covering both "
        "sets) to overlap_report to choose the pool"
    )


def overlap_report(
    a: ComponentSet, b: ComponentSet, *, pool_layers: Iterable[int] | None = None
) -> dict[str, Any]:
    """Overlap of two sets and its chance level (``expected_overlap``) over their candidate pool.

    The pool is ``chance_pool(a, b)``: the sets' common pool, or the larger pool when one contains the
    other (both exact for sets drawn uniformly from their own pools); an ``InputError`` otherwise.
    ``pool_layers`` overrides it (it must contain both sets' members), e.g. ``range(n_layers)`` for the
    whole-model figure of earlier releases.

    Returns:
        ``name_a``, ``name_b``, ``kind`` (``"mlp"`` or ``"head"``), ``universe`` (``n_layers * width``,
        the whole model), ``pool_layers`` and ``pool_size`` (the ``N`` of the chance level:
        ``len(pool_layers) * width``), ``size_a``, ``size_b``, ``intersection``, ``union``, ``jaccard``,
        ``expected_intersection``, ``expected_jaccard``, ``lift = jaccard / expected_jaccard`` (NaN when
        a set is empty: the chance level is 0) and ``p_value``, the exact hypergeometric
        ``P(X >= intersection)`` over the pool (``statistics.overlap_p_value``). Plain Python types only (``json.dumps`` works).

    Example:
        >>> from mechir_nig.sets import NeuronSet
        >>> a = NeuronSet([(0, 0), (0, 1)], n_layers=2, d_mlp=4)
        >>> b = NeuronSet([(0, 1), (1, 3)], n_layers=2, d_mlp=4)
        >>> rep = overlap_report(a, b)
        >>> rep["jaccard"], rep["expected_intersection"], rep["pool_size"]
        (0.3333333333333333, 0.5, 8)
    """
    a, b = check_set(a, "a"), check_set(b, "b")
    inter = a.overlap(b)  # checks kind and universe
    if pool_layers is None:
        pool = chance_pool(a, b)
    else:
        pool = tuple(check_layers(pool_layers, a.n_layers, "pool_layers"))
        occupied = (a.to_mask() | b.to_mask()).any(1)  # [n_layers]: layers holding a member
        occupied[list(pool)] = False
        stray = occupied.nonzero().flatten().tolist()
        if stray:
            raise InputError(
                f"pool_layers {list(pool)} leaves out layers {stray} that hold members of the sets; "
                "the pool must contain both sets"
            )
    pool_size = len(pool) * a.width
    chance = expected_overlap(len(a), len(b), pool_size)
    jac = a.jaccard(b)
    return {
        "name_a": a.name,
        "name_b": b.name,
        "kind": a.kind,
        "universe": a.universe_size,
        "pool_layers": list(pool),
        "pool_size": pool_size,
        "size_a": len(a),
        "size_b": len(b),
        "intersection": inter,
        "union": len(a) + len(b) - inter,
        "jaccard": jac,
        "expected_intersection": chance["intersection"],
        "expected_jaccard": chance["jaccard"],
        "lift": jac / chance["jaccard"] if chance["jaccard"] > 0 else math.nan,
        "p_value": overlap_p_value(inter, len(a), len(b), pool_size),
    }


__all__ = ["chance_pool", "expected_overlap", "overlap_report"]
