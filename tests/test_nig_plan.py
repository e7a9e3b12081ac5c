"""The NIG window plan on its own: which (pair, point) items go into which window, and the carries."""

from __future__ import annotations

import doctest

import pytest
import torch

from mechir_nig import InputError
from mechir_nig.attribution.nig import plan as plan_module
from mechir_nig.attribution.nig.plan import WindowPlan, default_window, strided_points


def items(plan):
    """(pair, point, window index, continues-flag of the item's window if it is the window's first)."""
    out = []
    for w in plan:
        for r, (p, k) in enumerate(zip(w.pair_of_row.tolist(), w.points.tolist())):
            out.append((p, k, w.index, w.continues if r == 0 else None))
    return out


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, 100])
def test_grid_plan_covers_each_point_once_longest_first(window):
    lengths = torch.tensor([4, 9, 9, 2])
    plan = WindowPlan.grid(lengths, n_points=5, window=window)
    got = items(plan)
    # every (pair, point) exactly once; pairs longest first, ties in pair order; points ascending
    assert [(p, k) for p, k, _, _ in got] == [(p, k) for p in (1, 2, 0, 3) for k in range(5)]
    assert plan.total == 20 and len(plan) == -(-20 // window)
    assert all(w.rows <= window for w in plan)
    # a window continues exactly when its first item's pair had items in the previous window
    for i, (p, _, _w, cont) in enumerate(got):
        if cont is not None:
            assert cont == (i > 0 and got[i - 1][0] == p)
    for w in plan:
        assert w.length == int(lengths[w.pairs].max()) and w.first_length == int(lengths[w.pairs[0]])
        assert torch.equal(w.local, torch.sort(w.local).values)
        # boundaries: rows whose next row starts another pair
        b = w.boundaries().tolist()
        assert b == [r for r in range(w.rows - 1) if w.local[r] != w.local[r + 1]]


def test_strided_points_and_midpoints():
    counts, points = strided_points(torch.tensor([2, 0, 4]), torch.tensor([4, 4, 2]))
    assert counts.tolist() == [3, 0, 5]
    assert points.tolist() == [0, 4, 8, 0, 2, 4, 6, 8]
    counts, points = strided_points(torch.tensor([2, 0, 4]), torch.tensor([4, 4, 2]), midpoints=True)
    assert counts.tolist() == [2, 0, 4]
    assert points.tolist() == [2, 6, 1, 3, 5, 7]
    with pytest.raises(InputError, match="even stride"):
        strided_points(torch.tensor([2]), torch.tensor([3]), midpoints=True)


def test_strided_plan_skips_pairs_without_points():
    plan = WindowPlan.strided(torch.tensor([3, 7, 5]), torch.tensor([1, 0, 2]), torch.tensor([8, 8, 4]), 2)
    got = [(p, k) for p, k, _, _ in items(plan)]
    assert got == [(2, 0), (2, 4), (2, 8), (0, 0), (0, 8)]  # pair 1 takes no part
    assert [w.continues for w in plan] == [False, True, True]


def test_plan_rejects_inconsistent_input():
    with pytest.raises(InputError, match="window must be an int >= 1"):
        WindowPlan.grid(torch.tensor([3]), 2, 0)
    with pytest.raises(InputError, match="points has 3 entries; counts say 2"):
        WindowPlan(torch.tensor([3]), torch.tensor([2]), torch.arange(3), 4)
    with pytest.raises(InputError, match="one non-negative count per pair"):
        WindowPlan(torch.tensor([3, 4]), torch.tensor([2, -1]), torch.arange(1), 4)
    # a count missing for a pair: our InputError, or jaxtyping's TypeCheckError under the import hook
    from jaxtyping import TypeCheckError

    with pytest.raises((InputError, TypeCheckError)):
        WindowPlan(torch.tensor([3, 4]), torch.tensor([2]), torch.arange(2), 4)


def test_default_window():
    assert default_window(128) == 64 and default_window(100_000) == 1 and default_window(128, 7) == 7


def test_module_examples():
    assert doctest.testmod(plan_module, raise_on_error=True).attempted >= 2


@pytest.mark.parametrize("window", [1, 3, 7, 100])
def test_max_padding_cuts_windows_before_short_pairs(window):
    """A window ends before a pair shorter than (1 - max_padding) x its longest; items and order unchanged."""
    lengths = torch.tensor([80, 20, 75, 40, 38, 21])
    plain = WindowPlan.grid(lengths, n_points=3, window=window)
    cut = WindowPlan.grid(lengths, n_points=3, window=window, max_padding=0.125)
    assert [(p, k) for p, k, _, _ in items(cut)] == [(p, k) for p, k, _, _ in items(plain)]
    for w in cut:
        assert w.rows <= window
        # no row of the window is padded by more than 12.5 % of the window's longest pair
        assert int(lengths[w.pair_of_row].min()) >= 0.875 * w.length
    # by hand: length classes {80, 75}, {40, 38}, {21, 20} never share a window
    classes = {0: 0, 2: 0, 3: 1, 4: 1, 5: 2, 1: 2}
    assert all(len({classes[int(p)] for p in w.pairs}) == 1 for w in cut)
    if window == 100:
        assert len(plain) == 1 and len(cut) == 3
        assert sum(w.rows * w.length for w in plain) == 18 * 80
        assert sum(w.rows * w.length for w in cut) == 6 * 80 + 6 * 40 + 6 * 21
    with pytest.raises(InputError, match=r"max_padding must be in \[0, 1\)"):
        WindowPlan.grid(lengths, 3, window, max_padding=1.0)
