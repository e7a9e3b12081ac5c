"""``n_steps="auto"``: nested trapezoid grids refined per pair until completeness holds to ``tol``.

Asserted: each pair's result equals a fixed-step run with its final ``n_steps`` (kept points, deferred
pairs, a mix of both; windows that split pairs); every pair reaches ``tol`` on the real MiniLM body
(checked against a 1024-step run) with fewer points on average than a fixed 64-step run; pairs at the
cap are named in a ``ConvergenceWarning``; every keyword is validated.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import HookedCrossEncoder, InputError
from mechir_nig.attribution import NeuronAttribution, neuron_integrated_gradients
from mechir_nig.attribution.nig import ConvergenceWarning

Q5, D5 = QUERIES + ["neuron"], DOCS + ["Neurons fire."]
# tiny_ce at min_steps=4, tol=3e-4 needs 16, 32, 32, 64 and 8 intervals; every pair's relative delta
# at the level before is >= 13 % above tol and at its final level >= 25 % below (no float-noise ties)
TINY = {"n_steps": "auto", "tol": 3e-4, "min_steps": 4}
TINY_STEPS = [16, 32, 32, 64, 8]


def relative_delta(attr):
    return (attr.convergence_delta / (attr.scores - attr.baseline_scores)).abs()


def assert_equals_fixed_steps(model, queries, docs, auto, *, atol=1e-6, max_n=None, **kw):
    """Each pair's auto result equals a fixed-step run at the pair's ``n_steps_used`` (up to ``max_n``)."""
    for n in sorted(set(auto.n_steps_used.tolist())):
        if max_n is not None and n > max_n:
            continue
        rows = (auto.n_steps_used == n).nonzero().flatten().tolist()
        fixed = neuron_integrated_gradients(
            model,
            [queries[i] for i in rows],
            [docs[i] for i in rows],
            n_steps=n,
            return_convergence_delta=True,
            **kw,
        )
        for j, i in enumerate(rows):
            p = int(fixed.mask[j].sum())
            got, want = auto.values[i], fixed.values[j]
            if auto.reduce == "token":
                got, want = got[:, :p], want[:, :p]
            err = (got - want).abs().max().item()
            assert err <= atol, f"pair {i} (n_steps={n}): values differ by {err:.2e}"
            if auto.head_values is not None:
                hg, hw = auto.head_values[i], fixed.head_values[j]
                if auto.reduce == "token":
                    hg, hw = hg[:, :p], hw[:, :p]
                assert (hg - hw).abs().max().item() <= atol
            assert abs(float(auto.convergence_delta[i] - fixed.convergence_delta[j])) <= 1e-6
            assert abs(float(auto.scores[i] - fixed.scores[j])) <= 1e-6


@pytest.mark.parametrize(
    "reuse_bytes,points",
    [
        (None, 157),  # every point kept: each point evaluated once (17 + 33 + 33 + 65 + 9)
        (0, 314),  # nothing kept: completeness rounds, then each pair's final grid once more
        (2_000_000, 288),  # a mix: some pairs refine from kept points, the others are deferred
        (4_000_000, 222),
    ],
)
def test_auto_equals_fixed_steps_on_final_grid(tiny_ce, reuse_bytes, points):
    attr = neuron_integrated_gradients(tiny_ce, Q5, D5, heads=True, reuse_bytes=reuse_bytes, **TINY)
    assert attr.n_steps_used.tolist() == TINY_STEPS
    assert attr.meta["points_evaluated"] == points
    assert (relative_delta(attr) <= 3e-4).all()
    assert_equals_fixed_steps(tiny_ce, Q5, D5, attr, heads=True)


@pytest.mark.parametrize("ibs", [1, 3, 7])
def test_auto_windows_never_change_results(tiny_ce, ibs):
    ref = neuron_integrated_gradients(tiny_ce, Q5, D5, heads=True, **TINY)
    got = neuron_integrated_gradients(tiny_ce, Q5, D5, heads=True, internal_batch_size=ibs, **TINY)
    assert got.n_steps_used.tolist() == TINY_STEPS
    assert (got.values - ref.values).abs().max() <= 1e-6
    assert (got.head_values - ref.head_values).abs().max() <= 1e-6
    assert (got.convergence_delta - ref.convergence_delta).abs().max() <= 1e-6


@pytest.mark.parametrize("reduce", ["group", "neuron"])
def test_auto_with_reduce(tiny_ce, reduce):
    token = neuron_integrated_gradients(tiny_ce, Q5, D5, heads=True, **TINY)
    for ibs in (None, 5):
        red = neuron_integrated_gradients(
            tiny_ce, Q5, D5, heads=True, reduce=reduce, internal_batch_size=ibs, **TINY
        )
        want = token.by_group() if reduce == "group" else token.per_neuron()
        assert red.reduce == reduce and (red.values - want).abs().max() <= 1e-6
        assert (red.per_head() - token.per_head()).abs().max() <= 1e-6
    red = neuron_integrated_gradients(tiny_ce, Q5, D5, reduce=reduce, reuse_bytes=0, **TINY)
    assert (red.values - want).abs().max() <= 1e-6  # deferred pairs reduce the same way


def test_auto_two_labels_heads(tiny_ce2_dir):
    ce = HookedCrossEncoder.from_pretrained(tiny_ce2_dir)
    attr = neuron_integrated_gradients(ce, Q5, D5, n_steps="auto", tol=1e-3, min_steps=4, heads=True)
    assert attr.n_steps_used.tolist() == [32, 4, 64, 32, 8]
    assert_equals_fixed_steps(ce, Q5, D5, attr, heads=True)


def test_auto_bi_encoder(minilm_be):
    attr = neuron_integrated_gradients(
        minilm_be, Q5[:2], D5[:2], n_steps="auto", tol=1e-4, min_steps=2, layers=[0, 5]
    )
    assert (relative_delta(attr) <= 1e-4).all() and attr.n_steps_used.max() > 2
    assert_equals_fixed_steps(minilm_be, Q5[:2], D5[:2], attr, atol=1e-6, layers=[0, 5])


def test_cap_warns_and_names_the_pairs(tiny_ce):
    with pytest.warns(
        ConvergenceWarning, match=r"1 pair\(s\) did not reach tol=0.0003 within max_steps=32"
    ) as rec:
        attr = neuron_integrated_gradients(tiny_ce, Q5, D5, max_steps=32, **TINY)
    message = str(rec[0].message)
    assert "pair 3 ('[CLS] python list comprehension [SEP]" in message
    assert attr.n_steps_used.tolist() == [16, 32, 32, 32, 8]
    assert relative_delta(attr)[3] > 3e-4 and (relative_delta(attr)[[0, 1, 2, 4]] <= 3e-4).all()
    with warnings.catch_warnings():  # converged runs are silent
        warnings.simplefilter("error")
        neuron_integrated_gradients(tiny_ce, Q5, D5, **TINY)


def test_auto_result_records_its_grids(tiny_ce, tmp_path):
    attr = neuron_integrated_gradients(tiny_ce, Q5, D5, **TINY)
    meta = attr.meta
    assert meta["n_steps"] == "auto" and meta["n_steps_used"] == TINY_STEPS
    assert meta["tol"] == 3e-4 and meta["min_steps"] == 4 and meta["max_steps"] == 512
    assert meta["method"] == "riemann_trapezoid" and "alphas" not in meta
    # F at each pair's final grid, NaN after its n_steps_used + 1 points
    assert attr.point_scores.shape == (5, 65)
    for i, n in enumerate(TINY_STEPS):
        assert not attr.point_scores[i, : n + 1].isnan().any() and attr.point_scores[i, n + 1 :].isnan().all()
        assert (
            attr.point_scores[i, 0] == attr.baseline_scores[i] and attr.point_scores[i, n] == attr.scores[i]
        )
    assert torch.allclose(attr.scores, tiny_ce.score(Q5, D5), atol=1e-5)
    back = NeuronAttribution.load(attr.save(tmp_path / "auto.safetensors"))
    assert torch.equal(back.n_steps_used, attr.n_steps_used) and back.meta["n_steps"] == "auto"
    # a fixed run records its (equal) steps too
    fixed = neuron_integrated_gradients(tiny_ce, Q5[:2], D5[:2], n_steps=6)
    assert fixed.n_steps_used.tolist() == [6, 6] and fixed.meta["points_evaluated"] == 14


def test_min_steps_equal_max_steps_is_one_fixed_grid(tiny_ce):
    with pytest.warns(ConvergenceWarning):
        attr = neuron_integrated_gradients(
            tiny_ce, Q5, D5, n_steps="auto", tol=3e-4, min_steps=8, max_steps=8
        )
    fixed = neuron_integrated_gradients(tiny_ce, Q5, D5, n_steps=8, return_convergence_delta=True)
    assert attr.n_steps_used.tolist() == [8] * 5 and attr.meta["points_evaluated"] == 45
    assert (attr.values - fixed.values).abs().max() <= 1e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_steps": "many"}, r"n_steps must be an int >= 1 or 'auto'"),
        ({"n_steps": "auto", "tol": 0.0}, r"tol must be a number > 0"),
        ({"n_steps": "auto", "tol": float("nan")}, r"tol must be a number > 0"),
        ({"n_steps": "auto", "min_steps": 0}, r"min_steps must be an int >= 1"),
        ({"n_steps": "auto", "max_steps": 100}, r"max_steps must be min_steps \(8\) times a power of 2"),
        ({"n_steps": "auto", "min_steps": 16, "max_steps": 8}, r"max_steps must be min_steps \(16\)"),
        ({"n_steps": "auto", "reuse_bytes": -1}, r"reuse_bytes must be an int >= 0"),
        ({"n_steps": "auto", "method": "gausslegendre"}, r"needs method='riemann_trapezoid'"),
        (
            {"n_steps": 16, "tol": 0.01},
            r"tol applies only to n_steps='auto'; pass n_steps='auto' or leave it out",
        ),
        (
            {"n_steps": 16, "max_steps": 64, "reuse_bytes": 0},
            r"max_steps, reuse_bytes apply only to n_steps='auto'; pass n_steps='auto' or leave them out",
        ),
    ],
)
def test_bad_auto_input(tiny_ce, kwargs, match):
    with pytest.raises(InputError, match=match):
        neuron_integrated_gradients(tiny_ce, Q5[:1], D5[:1], **kwargs)


@pytest.mark.slow
def test_auto_reaches_tol_minilm(minilm_ce):
    """Real MiniLM body: every pair within 1 % of |F(x) - F(x')|, checked against 1024 steps, with fewer
    points than a fixed 64-step run, and each pair equal to a fixed run at its final ``n_steps``."""
    tol = 0.01
    attr = neuron_integrated_gradients(minilm_ce, QUERIES, DOCS, n_steps="auto", tol=tol, layers=[0, 5])
    gap = (attr.scores - attr.baseline_scores).abs()
    assert (attr.convergence_delta.abs() <= tol * gap).all(), relative_delta(attr)
    ref = neuron_integrated_gradients(
        minilm_ce, QUERIES, DOCS, n_steps=1024, return_convergence_delta=True, layers=[5]
    )
    assert (relative_delta(ref) < 1e-3).all()  # 1024 steps: the completeness target, to 0.1 %
    # the input-level IG total of each pair (what completeness compares with F(x) - F(x'))
    total = attr.convergence_delta + attr.scores - attr.baseline_scores
    target = ref.convergence_delta + ref.scores - ref.baseline_scores
    assert ((total - target).abs() <= tol * gap).all(), (total - target) / gap
    # refined where needed, coarse where not: fewer points than 64 fixed steps (65 per pair)
    used = attr.n_steps_used.tolist()
    assert len(set(used)) > 1 and min(used) < 64, used
    assert attr.meta["points_evaluated"] / len(QUERIES) < 65, attr.meta["points_evaluated"]
    assert attr.meta["points_evaluated"] == sum(n + 1 for n in used)  # every point evaluated once
    # to 1e-6 (measured: 2.2e-8 at a largest value of 0.10), pairs refined up to 32 steps here; the
    # tiny and bi-encoder tests check every level
    assert_equals_fixed_steps(minilm_ce, QUERIES, DOCS, attr, atol=1e-6, max_n=32, layers=[0, 5])


@pytest.mark.parametrize("ibs", [None, 3])
def test_window_padding_changes_only_the_windows(ce64, ibs):
    """``window_padding`` cuts windows before short pairs: fixed and auto steps equal the plain windows."""
    kw = {"heads": True, "internal_batch_size": ibs, "return_convergence_delta": True}
    for steps in ({"n_steps": 6}, TINY):
        ref = neuron_integrated_gradients(ce64, Q5, D5, **kw, **steps)
        got = neuron_integrated_gradients(ce64, Q5, D5, window_padding=0.125, **kw, **steps)
        assert torch.equal(got.n_steps_used, ref.n_steps_used)
        for a, b in ((got.values, ref.values), (got.head_values, ref.head_values)):
            assert (a - b).abs().max() <= 1e-10 * b.abs().max()
        assert (got.convergence_delta - ref.convergence_delta).abs().max() <= 1e-10
    with pytest.raises(InputError, match=r"window_padding must be None or in \[0, 1\)"):
        neuron_integrated_gradients(ce64, Q5, D5, n_steps=2, window_padding=1.0)
