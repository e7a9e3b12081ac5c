"""mechir_nig.statistics against scipy (an independent implementation) and hand computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from mechir_nig.errors import InputError
from mechir_nig.statistics import (
    bootstrap_ci,
    cohens_dz,
    compare_paired,
    correlation,
    correlation_ci,
    holm,
    overlap_p_value,
    paired_permutation_test,
    row_correlations,
    versus_random,
)

A = np.array([0.71, 0.52, 0.90, 0.33, 0.64, 0.58, 0.81, 0.47, 0.66, 0.75, 0.29, 0.92])
B = np.array([0.60, 0.55, 0.71, 0.30, 0.49, 0.61, 0.70, 0.40, 0.52, 0.77, 0.31, 0.80])


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def test_exact_sign_flip_test_matches_scipy_and_enumeration() -> None:
    p, exact = paired_permutation_test(A, B)
    assert exact
    ref = sps.permutation_test(
        (A, B), _mean_diff, permutation_type="samples", alternative="two-sided", n_resamples=np.inf
    )
    assert p == pytest.approx(ref.pvalue, abs=1e-12)
    d = A - B  # by hand: every sign vector
    obs = abs(d.mean())
    hits = sum(abs(np.dot(s, d)) / len(d) >= obs - 1e-12 for s in itertools.product((-1, 1), repeat=len(d)))
    assert p == pytest.approx(hits / 2 ** len(d), abs=0)


def test_monte_carlo_sign_flip_test_is_seeded_and_close_to_scipy() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0.5, 0.2, 40)
    b = a - rng.normal(0.03, 0.1, 40)
    p1, exact = paired_permutation_test(a, b, n_resamples=20000, seed=1)
    p2, _ = paired_permutation_test(a, b, n_resamples=20000, seed=1)
    assert not exact and p1 == p2
    ref = sps.permutation_test(
        (a, b), _mean_diff, permutation_type="samples", n_resamples=20000, random_state=5
    ).pvalue
    assert p1 == pytest.approx(ref, abs=0.015)
    # the +1 correction: an effect no sign vector reaches gives 1 / (1 + R), never 0
    p_min, _ = paired_permutation_test(np.full(30, 1.0), n_resamples=99, seed=0)
    assert p_min == pytest.approx(1 / 100)


def test_percentile_bootstrap_matches_scipy_and_is_deterministic() -> None:
    low, high = bootstrap_ci(A, B, n_resamples=20000, seed=0)
    assert (low, high) == bootstrap_ci(A, B, n_resamples=20000, seed=0)
    ref = sps.bootstrap(
        (A - B,), np.mean, method="percentile", n_resamples=20000, random_state=0, vectorized=True
    ).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.006)
    assert high == pytest.approx(ref.high, abs=0.006)
    assert low < (A - B).mean() < high
    # tensors are accepted, one-sample form is the paired form against zeros
    assert bootstrap_ci(torch.tensor(A - B), n_resamples=500) == bootstrap_ci(A, B, n_resamples=500)


def test_bootstrap_exact_on_two_units() -> None:
    # resamples of [0, 1]: means 0 (1/4), 0.5 (1/2), 1 (1/4); the 1 % and 99 % quantiles are 0 and 1
    low, high = bootstrap_ci([0.0, 1.0], confidence=0.98, n_resamples=4000)
    assert (low, high) == (0.0, 1.0)


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.02, 0.03, 0.2 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.2
    assert holm([0.03, 0.2, 0.01, 0.02]) == pytest.approx([0.06, 0.2, 0.04, 0.06])
    assert holm([0.6, 0.9]) == [1.0, 1.0]
    out = holm([0.01, math.nan])
    assert out[0] == 0.01 and math.isnan(out[1])


def test_cohens_dz_by_hand() -> None:
    d = A - B
    assert cohens_dz(A, B) == pytest.approx(d.mean() / d.std(ddof=1))
    assert math.isnan(cohens_dz([1.0, 1.0], [0.0, 0.0]))  # no spread
    cmp = compare_paired(A, B)
    assert cmp.mean_difference == pytest.approx(d.mean())
    assert cmp.d_z == pytest.approx(cohens_dz(A, B)) and cmp.n == len(A)
    assert cmp.ci_low < cmp.mean_difference < cmp.ci_high


def test_versus_random_difference_rank_and_p() -> None:
    target = np.array([0.2, 0.3, 0.1, 0.4, 0.25])
    rand = np.array([[0.5, 0.6, 0.4, 0.6, 0.5], [0.45, 0.5, 0.3, 0.7, 0.4], [0.1, 0.2, 0.1, 0.3, 0.2]])
    rc = versus_random(target, rand)
    d = rand.mean(0) - target
    assert rc.comparison.mean_difference == pytest.approx(d.mean())
    assert rc.comparison.p_value == pytest.approx(paired_permutation_test(d)[0])
    # means: NIG 0.25; random 0.52, 0.47, 0.18: one draw is lower, so the NIG set ranks 2 of 4
    assert rc.rank == 2 and rc.n_random == 3
    assert rc.target_mean == pytest.approx(0.25) and rc.random_mean == pytest.approx(rand.mean())
    with pytest.raises(InputError, match="random_draws"):
        versus_random(target, rand[:, :3])


@pytest.mark.parametrize(
    ("k", "a", "b", "n"), [(3, 10, 12, 50), (0, 5, 5, 20), (7, 7, 9, 30), (40, 92, 92, 3072)]
)
def test_overlap_p_value_matches_scipy_hypergeom(k: int, a: int, b: int, n: int) -> None:
    assert overlap_p_value(k, a, b, n) == pytest.approx(
        sps.hypergeom.sf(k - 1, n, a, b), rel=1e-9, abs=1e-300
    )


def test_overlap_p_value_by_hand() -> None:
    # N = 5, a = b = 2: P(X = 2) = 1 / C(5, 2) = 0.1, P(X >= 1) = 1 - C(3, 2) / C(5, 2) = 0.7
    assert overlap_p_value(2, 2, 2, 5) == pytest.approx(0.1)
    assert overlap_p_value(1, 2, 2, 5) == pytest.approx(0.7)
    assert overlap_p_value(3, 2, 2, 5) == 0.0


def test_row_correlations_match_scipy_with_ties() -> None:
    # faithfulness ranks each pair's predictors against its drops; zero drops (neurons at 0) tie, and
    # the average ranks of scipy are the definition (argsort ranks broke ties by position)
    x = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0], [3.0, 1.0, 2.0, 2.0, 0.5]])
    y = torch.tensor([[0.5, 0.1, 0.3, 0.9, 0.8], [1.0, 0.0, 0.0, 0.0, 2.0]])
    got = row_correlations(x, y)
    for row, g in zip(range(2), got, strict=True):
        assert g == pytest.approx(sps.spearmanr(x[row], y[row]).statistic, abs=1e-12)
    assert np.isnan(row_correlations([[1.0, 1.0]], [[1.0, 2.0]])[0])  # a constant row: undefined
    with pytest.raises(InputError, match=r"\[rows, n\]"):
        row_correlations([1.0, 2.0], [1.0, 2.0])


def test_correlation_ci_groups_is_a_cluster_bootstrap() -> None:
    x = np.array([0.3, 1.2, 0.7, 2.5, 1.9, 0.1, 1.2, 3.3, 0.4])
    y = np.array([0.1, 0.9, 1.0, 2.0, 2.2, -0.3, 0.5, 2.9, 0.6])
    # one group per pair draws the same resamples as the plain bootstrap
    assert correlation_ci(x, y, n_resamples=400, groups=np.arange(9)) == correlation_ci(x, y, n_resamples=400)
    groups = np.array([2, 0, 1, 0, 2, 1, 1, 0, 2])  # three pairs' indices, interleaved
    r, low, high = correlation_ci(x, y, n_resamples=400, seed=3, groups=groups)
    rng = np.random.default_rng(3)  # by hand: resample whole groups, Spearman of what they hold
    boot = []
    for pick in rng.integers(0, 3, size=(400, 3)):
        i = np.concatenate([np.flatnonzero(groups == g) for g in pick])
        rho = sps.spearmanr(x[i], y[i]).statistic if np.ptp(x[i]) and np.ptp(y[i]) else np.nan
        boot.append(rho)
    boot = np.array(boot)
    q = np.quantile(boot[np.isfinite(boot)], [0.025, 0.975])
    assert r == pytest.approx(sps.spearmanr(x, y).statistic)
    assert (low, high) == pytest.approx((q[0], q[1]), abs=1e-12)
    with pytest.raises(InputError, match="one label per pair"):
        correlation_ci(x, y, groups=[0, 1])


def test_correlations_match_scipy() -> None:
    x = np.array([0.3, 1.2, 0.7, 2.5, 1.9, 0.1, 1.2, 3.3])
    y = np.array([0.1, 0.9, 1.0, 2.0, 2.2, -0.3, 0.5, 2.9])
    assert correlation(x, y) == pytest.approx(sps.spearmanr(x, y).statistic)  # with a tie in x
    assert correlation(x, y, "pearson") == pytest.approx(sps.pearsonr(x, y).statistic)
    r, low, high = correlation_ci(x, y, method="pearson", n_resamples=5000, seed=0)
    ref = sps.bootstrap(
        (x, y),
        lambda u, v: sps.pearsonr(u, v).statistic,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=5000,
        random_state=0,
    ).confidence_interval
    assert r == pytest.approx(sps.pearsonr(x, y).statistic)
    assert low == pytest.approx(ref.low, abs=0.03) and high == pytest.approx(ref.high, abs=0.02)
    assert correlation_ci(x, y, n_resamples=300) == correlation_ci(x, y, n_resamples=300)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="paired"):
        compare_paired([1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(InputError, match="non-finite"):
        paired_permutation_test([1.0, math.nan])
    with pytest.raises(InputError, match="confidence"):
        bootstrap_ci([1.0], confidence=1.5)


# -- the statistics of the studies -----------------------------------------------------------------------
def _toy_pruning():
    from mechir_nig.experiments.pruning import PruningResult

    qids = ["q1", "q2", "q3", "q4", "q5"]
    base = [1.0, 0.8, 0.6, 0.9, 0.7]
    values = {
        ("nig_top", 0): [0.5, 0.6, 0.3, 0.4, 0.6],
        ("random", 0): [1.0, 0.7, 0.6, 0.9, 0.7],
        ("random", 1): [0.9, 0.8, 0.6, 0.8, 0.7],
        ("bottom", 0): [1.0, 0.8, 0.6, 0.9, 0.7],
    }
    runs = [{"condition": "unpruned", "mode": "none", "fraction": 0.0, "seed": 0, "n_neurons": 0}]
    per_query = [{q: {"nDCG@10": v} for q, v in zip(qids, base)}]
    moved = [{"depth": 10, "changed": [], "docs": {}}]
    for frac in (0.01, 0.1):
        for (cond, seed), vals in values.items():
            shift = 0.0 if frac == 0.1 else 0.05  # the smaller fraction: a smaller drop
            vv = [min(b, v + shift) for b, v in zip(base, vals)]
            runs.append({"condition": cond, "mode": "zero", "fraction": frac, "seed": seed, "n_neurons": 9})
            per_query.append({q: {"nDCG@10": v} for q, v in zip(qids, vv)})
            moved.append({"depth": 10, "changed": qids[: 2 + seed], "docs": {}})
    for r, pq in zip(runs, per_query):
        r["nDCG@10"] = sum(v["nDCG@10"] for v in pq.values()) / len(pq)
    return PruningResult(["nDCG@10"], runs, per_query, {}, [], qids, {}, {}, moved), base


def test_pruning_statistics_by_hand() -> None:
    result, base = _toy_pruning()
    rows = {(r["condition"], r["fraction"]): r for r in result.statistics(n_resamples=2000)}
    top = rows[("nig_top", 0.1)]
    nig = np.array([0.5, 0.6, 0.3, 0.4, 0.6])
    rnd = np.array([[1.0, 0.7, 0.6, 0.9, 0.7], [0.9, 0.8, 0.6, 0.8, 0.7]])
    assert top["drop"] == pytest.approx(np.mean(np.array(base) - nig))
    assert top["p"] == pytest.approx(paired_permutation_test(np.array(base) - nig)[0])
    assert top["drop_ci"] == list(bootstrap_ci(np.array(base) - nig, n_resamples=2000))
    assert top["d_z"] == pytest.approx(cohens_dz(np.array(base), nig))
    assert top["n_queries"] == 5 and top["changed_queries"] == 2
    vs = top["vs_random"]
    assert vs["difference"] == pytest.approx(np.mean(rnd.mean(0) - nig))
    assert vs["rank"] == 1 and vs["n_random"] == 2
    assert vs["random_drop"] == pytest.approx(np.mean(base) - rnd.mean())
    assert vs["ratio"] == pytest.approx(top["drop"] / vs["random_drop"])
    # Holm over the two fractions of nig_top (one mode): 2 x the smaller p, then the running maximum
    small = rows[("nig_top", 0.01)]
    lo, hi = sorted([top["p"], small["p"]])
    assert sorted([top["p_holm"], small["p_holm"]]) == pytest.approx(
        [min(1, 2 * lo), max(min(1, 2 * lo), hi)]
    )
    # random: the mean over its seeds per query, changed queries the mean over seeds
    r = rows[("random", 0.1)]
    assert r["drop"] == pytest.approx(np.mean(np.array(base) - rnd.mean(0)))
    assert r["changed_queries"] == 2.5 and r["vs_random"] is None
    # bottom equals unpruned on every query: no drop, p = 1
    assert rows[("bottom", 0.1)]["drop"] == 0 and rows[("bottom", 0.1)]["p"] == 1.0


def test_pruning_ceiling_warning() -> None:
    result, _ = _toy_pruning()
    c = result.ceiling()
    assert (c["at_ceiling"], c["n_queries"]) == (1, 5) and c["warning"] is None
    result.per_query[0] = {q: {"nDCG@10": 1.0} for q in result.eval_queries}
    assert "on 5 of 5 evaluation queries" in result.ceiling()["warning"]


def test_pruning_moved_documents_by_hand() -> None:
    from mechir_nig.experiments.pruning import _moved

    pairs = [("q", "a"), ("q", "b"), ("q", "c"), ("q", "d"), ("r", "x"), ("r", "y")]
    before = torch.tensor([4.0, 3.0, 2.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    after = torch.tensor([1.0, 3.0, 2.5, 0.5, 2.0, 0.0], dtype=torch.float64)
    # q: before a b c d, after b c a d: a 1 -> 3 (down 2), b 2 -> 1, c 3 -> 2 (up 1 each)
    out = _moved(pairs, before, after)
    assert out["changed"] == ["q"]
    assert out["docs"] == {"q": {"up": [["b", 2, 1], ["c", 3, 2]], "down": [["a", 1, 3]]}}


def test_overlap_report_states_the_hypergeometric_p_value() -> None:
    from mechir_nig.sets import overlap_report, select_top

    g = torch.Generator().manual_seed(0)
    a = select_top(torch.randn(4, 10, generator=g), k=4, layers=[2], name="a")  # pool: 10 neurons
    b = select_top(torch.randn(4, 10, generator=g), k=5, layers=[2], name="b")
    rep = overlap_report(a, b)
    want = sps.hypergeom.sf(rep["intersection"] - 1, rep["pool_size"], 4, 5)
    assert rep["p_value"] == pytest.approx(want, rel=1e-9)


def test_correlation_ci_one_group_gives_no_interval() -> None:
    """One cluster carries no sampling information: the interval is NaN (it was [r, r], zero width)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    r, low, high = correlation_ci(x, y, n_resamples=200, groups=np.zeros(30))
    assert r == pytest.approx(sps.spearmanr(x, y).statistic) and math.isnan(low) and math.isnan(high)
    _, low2, high2 = correlation_ci(x, y, n_resamples=200, groups=np.arange(30) % 2)
    assert low2 < high2  # two groups: an interval
