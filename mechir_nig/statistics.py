"""Statistics of the studies' comparisons: bootstrap intervals, paired randomisation tests, Holm, effect
sizes, the NIG-set vs random-sets comparison, overlap vs chance and correlations over pairs.

Every study keeps per-query (pruning) or per-pair (faithfulness, patching) values; the comparisons here are
over those units. Everything is seeded (``seed``, numpy's ``default_rng``) and deterministic: the same
inputs and seed give the same numbers. Formulas (``d_i = a_i − b_i``, ``n`` units, ``R`` resamples):

- **Percentile bootstrap interval** (:func:`bootstrap_ci`) of the mean difference ``d̄``: draw ``R``
  resamples of ``n`` units with replacement, take the mean of each, and report the ``α/2`` and
  ``1 − α/2`` quantiles (linear interpolation) of those ``R`` means, ``α = 1 − confidence``.
- **Paired randomisation test** (:func:`paired_permutation_test`, two-sided): under the null that ``a``
  and ``b`` are exchangeable within each unit, every sign vector ``s ∈ {±1}^n`` is equally likely and
  ``p = P(|mean(s·d)| ≥ |d̄|)``. For ``n ≤ exact_max_n`` all ``2^n`` sign vectors are enumerated (exact);
  otherwise ``R`` random sign vectors give ``p = (1 + #{|mean(s·d)| ≥ |d̄|}) / (1 + R)`` (never 0, a valid
  p-value). Ties are counted with a relative tolerance of ``1e-12``.
- **Holm** (:func:`holm`) over a family of ``m`` p-values sorted ascending ``p_(1) ≤ … ≤ p_(m)``:
  ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``, returned in the input order.
- **Effect size** (:func:`cohens_dz`): the paired Cohen's ``d_z = d̄ / s_d`` with ``s_d`` the standard
  deviation of the differences (``n − 1`` denominator); NaN when ``s_d = 0`` or ``n < 2``.
- **NIG vs random sets** (:func:`versus_random`): per unit, ``d_i = mean_s(r_{s,i}) − t_i`` (the random
  sets' mean value minus the NIG set's: how much more the NIG set lowers the measure); its mean, bootstrap
  interval and randomisation p-value, plus the rank of the NIG set's mean among the ``S`` random draws'
  means (1 = the lowest value, i.e. the largest drop).
- **Overlap vs chance** (:func:`overlap_p_value`): two sets of sizes ``a`` and ``b`` drawn uniformly from
  ``N``; the intersection ``X`` is hypergeometric and ``p = P(X ≥ k) = Σ_{x ≥ k} C(a, x) C(N − a, b − x) /
  C(N, b)``, summed exactly in log space.
- **Correlation over pairs** (:func:`correlation_ci`): Pearson or Spearman (Pearson of the average ranks)
  of ``(x_i, y_i)``, and its percentile bootstrap interval resampling the pairs.

Example:
    >>> cmp = compare_paired([0.8, 0.6, 0.9, 0.7], [0.5, 0.5, 0.6, 0.6], n_resamples=2000)
    >>> round(cmp.mean_difference, 3), cmp.p_value, cmp.exact
    (0.2, 0.125, True)
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mechir_nig._validate import check_int
from mechir_nig.errors import InputError

__all__ = [
    "DEFAULT_RESAMPLES",
    "CeilingWarning",
    "Comparison",
    "RandomComparison",
    "bootstrap_ci",
    "cohens_dz",
    "compare_paired",
    "correlation",
    "correlation_ci",
    "row_correlations",
    "holm",
    "overlap_p_value",
    "paired_permutation_test",
    "versus_random",
]

DEFAULT_RESAMPLES = 10000
"""Bootstrap resamples and Monte Carlo sign vectors by default."""
EXACT_MAX_N = 16
"""Up to this many units the randomisation test enumerates all ``2^n`` sign vectors."""
_TIE = 1e-12


class CeilingWarning(UserWarning):
    """A measure is at its maximum on most evaluation queries: a drop can be measured, a rise cannot."""


def _vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-d float64 array (a tensor, list or array); refuses NaN and empty inputs."""
    arr = _array(values, np.float64)
    if arr.ndim != 1:
        raise InputError(f"{name} must be one value per unit (1-d), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{name} is empty: a comparison needs at least one unit")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds {int((~np.isfinite(arr)).sum())} non-finite values: drop those units")
    return arr


def _differences(a: Any, b: Any | None) -> np.ndarray:
    x = _vector(a, "a")
    if b is None:
        return x
    y = _vector(b, "b")
    if x.shape != y.shape:
        raise InputError(
            f"a and b must be paired (one value each per unit), got {x.size} and {y.size} values"
        )
    return x - y


def _check(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    check_int(n_resamples, "n_resamples", minimum=1)


def bootstrap_ci(
    a: Any,
    b: Any | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``a − b`` over units (of ``a`` when ``b`` is None).

    Args:
        a: one value per unit (query or pair).
        b: the paired values (same units, same order), or None.
        confidence: the interval's coverage (0.95: the 2.5 % and 97.5 % quantiles).
        n_resamples: bootstrap resamples ``R``.
        seed: the generator's seed.

    Returns:
        ``(low, high)``.

    Example:
        >>> bootstrap_ci([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    _check(confidence, n_resamples)
    d = _differences(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, 2_000_000 // d.size)  # bounded memory: resamples in chunks
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        means[start : start + r] = d[rng.integers(0, d.size, size=(r, d.size))].mean(1)
    alpha = 1 - confidence
    q: Any = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(q[0]), float(q[1])


def paired_permutation_test(
    a: Any,
    b: Any | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    exact_max_n: int = EXACT_MAX_N,
) -> tuple[float, bool]:
    """Two-sided paired randomisation (sign-flip) test of ``mean(a − b) = 0``.

    Args:
        a: one value per unit.
        b: the paired values, or None (test ``mean(a) = 0``).
        n_resamples: random sign vectors when ``n > exact_max_n``.
        seed: the generator's seed (Monte Carlo only).
        exact_max_n: enumerate every sign vector up to this many units.

    Returns:
        ``(p_value, exact)``; ``exact`` says whether all ``2^n`` sign vectors were enumerated.

    Example:
        >>> paired_permutation_test([1.0, 2.0, 3.0])  # only the all-positive signs reach the mean 2
        (0.25, True)
    """
    _check(0.5, n_resamples)
    d = _differences(a, b)
    n = d.size
    observed = abs(d.mean())
    tol = _TIE * max(1.0, observed)
    if n <= exact_max_n:
        codes = np.arange(2**n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)  # [2^n, n]
        stats = np.abs(signs @ d) / n
        return float((stats >= observed - tol).mean()), True
    rng = np.random.default_rng(seed)
    count = 0
    step = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(r, n))
        count += int((np.abs(signs @ d) / n >= observed - tol).sum())
    return (1 + count) / (1 + n_resamples), False


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values of one family, in the input order (NaN stays NaN and is not counted).

    Example:
        >>> holm([0.01, 0.02, 0.5])
        [0.03, 0.04, 0.5]
    """
    p = [float(x) for x in p_values]
    idx = sorted((i for i, x in enumerate(p) if not math.isnan(x)), key=lambda i: p[i])
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for j, i in enumerate(idx):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out


def cohens_dz(a: Any, b: Any | None = None) -> float:
    """The paired effect size ``d_z = mean(d) / sd(d)`` (``sd`` with ``n − 1``; NaN when it is 0 or n < 2).

    Example:
        >>> cohens_dz([2.0, 4.0], [1.0, 1.0])  # d = [1, 3]: mean 2, sd sqrt(2)
        1.414213562373095
    """
    d = _differences(a, b)
    if d.size < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    return float(d.mean()) / sd if sd > 0 else math.nan


@dataclass(frozen=True)
class Comparison:
    """A paired comparison over units: ``mean_difference`` (of ``a − b``), its bootstrap interval
    ``[ci_low, ci_high]`` at ``confidence``, the randomisation ``p_value`` (``exact`` or Monte Carlo),
    the effect size ``d_z`` and the number of units ``n``.

    Example:
        >>> cmp = compare_paired([0.9, 0.8, 0.7], [0.6, 0.6, 0.6])
        >>> round(cmp.mean_difference, 3), cmp.n, cmp.exact
        (0.2, 3, True)
    """

    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    exact: bool
    d_z: float
    n: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict.

        Example:
            >>> sorted(compare_paired([1.0, 2.0]).to_dict())[:3]
            ['ci_high', 'ci_low', 'confidence']
        """
        return asdict(self)


def compare_paired(
    a: Any,
    b: Any | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """:func:`bootstrap_ci`, :func:`paired_permutation_test` and :func:`cohens_dz` of ``a − b`` together.

    Example:
        >>> round(compare_paired([0.5, 0.7], [0.5, 0.4]).mean_difference, 6)
        0.15
    """
    d = _differences(a, b)
    low, high = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    p, exact = paired_permutation_test(d, n_resamples=n_resamples, seed=seed)
    return Comparison(float(d.mean()), low, high, p, exact, cohens_dz(d), int(d.size), confidence)


@dataclass(frozen=True)
class RandomComparison:
    """The NIG set against ``n_random`` random sets: ``comparison`` of the per-unit ``random mean − NIG``
    values (positive: the NIG set lowers the measure more), ``rank`` of the NIG set's mean among the
    random draws' means (1 = lowest value) out of ``n_random + 1``, and the means themselves.

    Example:
        >>> versus_random([0.1, 0.2], [[0.5, 0.5], [0.4, 0.6]]).rank  # lower than every random draw
        1
    """

    comparison: Comparison
    rank: int
    n_random: int
    target_mean: float
    random_mean: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (``comparison`` nested).

        Example:
            >>> versus_random([0.1], [[0.5]]).to_dict()["rank"]
            1
        """
        return asdict(self)


def versus_random(
    target: Any,
    random_draws: Any,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> RandomComparison:
    """The NIG-set vs random-sets comparison over units.

    Args:
        target: the NIG set's value per unit ``[n]``.
        random_draws: the random sets' values ``[S, n]`` (one row per random draw, same units).
        confidence: the interval's coverage.
        n_resamples: bootstrap resamples and Monte Carlo sign vectors.
        seed: the generator's seed.

    Returns:
        A :class:`RandomComparison`.

    Example:
        >>> rc = versus_random([0.2, 0.3, 0.1], [[0.5, 0.6, 0.4], [0.6, 0.5, 0.5]])
        >>> round(rc.comparison.mean_difference, 3), rc.rank, rc.n_random
        (0.317, 1, 2)
    """
    t = _vector(target, "target")
    r = np.asarray(
        random_draws.detach().cpu().double().numpy() if hasattr(random_draws, "detach") else random_draws,
        dtype=np.float64,
    )
    if r.ndim != 2 or r.shape[1] != t.size or r.shape[0] < 1:
        raise InputError(f"random_draws must be [S >= 1, {t.size}] (one row per random set), got {r.shape}")
    cmp = compare_paired(r.mean(0), t, confidence=confidence, n_resamples=n_resamples, seed=seed)
    draw_means = r.mean(1)
    rank = 1 + int((draw_means < t.mean()).sum())
    return RandomComparison(cmp, rank, int(r.shape[0]), float(t.mean()), float(r.mean()))


def overlap_p_value(intersection: int, size_a: int, size_b: int, universe: int) -> float:
    """``P(X ≥ intersection)`` for ``X ~ Hypergeometric(N=universe, a=size_a, b=size_b)``: the chance
    that two uniformly random sets of these sizes overlap at least this much.

    Example:
        >>> round(overlap_p_value(2, 2, 2, 4), 12)  # both draws equal: 1 / C(4, 2)
        0.166666666667
    """
    k, a, b, n = (int(x) for x in (intersection, size_a, size_b, universe))
    if n < 1 or not (0 <= a <= n and 0 <= b <= n):
        raise InputError(f"set sizes must be between 0 and the universe size {n}, got {a} and {b}")
    lo, hi = max(0, a + b - n), min(a, b)
    if k <= lo:
        return 1.0
    if k > hi:
        return 0.0

    def logpmf(x: int) -> float:
        return _lcomb(a, x) + _lcomb(n - a, b - x) - _lcomb(n, b)

    logs = np.array([logpmf(x) for x in range(k, hi + 1)])
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def _lcomb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their positions) along the last axis."""
    if x.ndim > 1:
        return np.stack([_ranks(row) for row in x])
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    return (ends - (counts - 1) / 2)[inverse.reshape(-1)]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _array(values: Any, dtype: Any = None) -> np.ndarray:
    """``values`` (a tensor of any dtype on any device, a list or an array) as a numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        values = values.double() if values.is_floating_point() else values  # bfloat16 has no numpy dtype
    return np.asarray(values, dtype=dtype)


def row_correlations(x: Any, y: Any, method: str = "spearman") -> np.ndarray:
    """The correlation of each row of ``x`` with the same row of ``y`` (``[rows, n]`` each; tensors or
    arrays): ``[rows]``, NaN for a row where either side is constant or shorter than 2. Spearman uses
    average ranks for ties (as ``scipy.stats.spearmanr``).

    Example:
        >>> row_correlations([[1, 2, 3], [1, 1, 2]], [[3, 2, 1], [1, 1, 2]]).tolist()
        [-1.0, 1.0]
    """
    if method not in ("pearson", "spearman"):
        raise InputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = _array(x, np.float64), _array(y, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"x and y must be [rows, n] of one shape, got {a.shape} and {b.shape}")
    if method == "spearman":
        a, b = _ranks(a), _ranks(b)
    return _pearson_rows(a, b)


def correlation(x: Any, y: Any, method: str = "spearman") -> float:
    """Pearson or Spearman (average ranks) correlation of paired values.

    Example:
        >>> correlation([1, 2, 3, 4], [1, 3, 2, 4])
        0.8
    """
    if method not in ("pearson", "spearman"):
        raise InputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    a, b = _vector(x, "x"), _vector(y, "y")
    if a.size != b.size:
        raise InputError(f"x and y must be paired, got {a.size} and {b.size} values")
    return float(row_correlations(a[None], b[None], method)[0])


def correlation_ci(
    x: Any,
    y: Any,
    *,
    method: str = "spearman",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    groups: Any = None,
) -> tuple[float, float, float]:
    """The correlation of the pairs ``(x_i, y_i)`` and its percentile bootstrap interval (pairs resampled;
    resamples whose correlation is undefined, e.g. constant, are left out).

    ``groups`` (one label per pair, e.g. the query-document pair an index of a patching sweep belongs to)
    resamples whole groups instead (a cluster bootstrap): values of one group are not independent, and
    resampling them one by one would give too narrow an interval. A single group gives no interval
    (``low``, ``high`` NaN): every resample would be the data itself.

    Returns:
        ``(r, low, high)``.

    Example:
        >>> r, low, high = correlation_ci([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_resamples=500)
        >>> r, low <= r <= high
        (0.8, True)
    """
    _check(confidence, n_resamples)
    r = correlation(x, y, method)
    a, b = _vector(x, "x"), _vector(y, "y")
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, a.size, size=(n_resamples, a.size))
        boot = row_correlations(a[idx], b[idx], method)  # one resample a row
    else:
        labels = _array(groups)
        if labels.shape != a.shape:
            raise InputError(f"groups must give one label per pair ({a.size}), got shape {labels.shape}")
        members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
        if len(members) < 2:  # one cluster: every resample is the data, a zero-width interval
            return r, math.nan, math.nan
        picks = rng.integers(0, len(members), size=(n_resamples, len(members)))
        boot = np.array(
            [
                row_correlations(a[None, i], b[None, i], method)[0]
                for i in (np.concatenate([members[g] for g in p]) for p in picks)
            ]
        )
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return r, math.nan, math.nan
    alpha = 1 - confidence
    q: Any = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return r, float(q[0]), float(q[1])
