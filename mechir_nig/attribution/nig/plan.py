"""The window plan: which (pair, point) items of the path go into which forward/backward.

NIG evaluates the interpolation points of many pairs as one flattened sequence of items
``(pair, point)`` — pairs sorted by length, longest first, so a window pads little; each pair's points in
ascending order — cut into windows of ``window`` items. With ``max_padding`` (NIGSettings
``window_padding``) a window also ends before the first pair that it would pad by more than that fraction of
the window's longest pair: mixed lengths in one window cost padded tokens (8 Vaswani pairs of 20-80
tokens in windows of 8,192 tokens ran 21 % padding), short pairs then share a window of their own. A window
may end inside a pair: the next window then *continues* that pair, and whatever the algorithm needs from the pair's last point (for conductance:
its activation and gradient) is carried across. The plan knows nothing of models or gradients (as
Captum keeps its batching apart from its algorithms); the kernel (``kernel.py``) runs one forward and
one backward per window.

``point`` is a position in a table of interpolation coefficients (the rule's ``n_steps + 1`` alphas, or
the ``max_steps + 1`` points ``j / max_steps`` of the nested grids of ``n_steps="auto"``), so a pass may
hold every point of each pair (``grid``), every ``stride``-th (``strided``) or only the midpoints of a
grid being refined (``strided(..., midpoints=True)``); pairs with no points take no part.

Example:
    >>> plan = WindowPlan.grid(torch.tensor([5, 9]), n_points=3, window=4)
    >>> [(w.pairs.tolist(), w.points.tolist(), w.continues) for w in plan]
    [([1, 0], [0, 1, 2, 0], False), ([0], [1, 2], True)]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechir_nig._validate import check_int
from mechir_nig.attribution.settings import DEFAULT_WINDOW_TOKENS
from mechir_nig.errors import InputError

MAX_PADDING = 0.125
"""A padding bound for windows: a pair shorter than ``(1 - MAX_PADDING)`` x the window's longest pair
starts a new window (``WindowPlan(max_padding=)``). Window cuts change results only by float round-off
(a pair run unpadded rounds differently from the same pair padded, as Captum's one batch pads it)."""


def default_window(
    longest: int, internal_batch_size: int | None = None, tokens: int = DEFAULT_WINDOW_TOKENS
) -> int:
    """Points per window: ``internal_batch_size``, else ``max(1, tokens // longest)``.

    Example:
        >>> default_window(128), default_window(128, 16), default_window(128, tokens=1024)
        (64, 16, 8)
    """
    return internal_batch_size or max(1, tokens // max(1, int(longest)))


@dataclass(frozen=True)
class Window:
    """One forward/backward: a run of consecutive items of a ``WindowPlan``.

    Attributes:
        index: position of the window in the plan.
        pairs: ``[n_local]`` global indices of the pairs with items here, in plan order.
        local: ``[rows]`` index into ``pairs`` of each row (non-decreasing).
        points: ``[rows]`` table position of each row's interpolation point (ascending within a pair).
        continues: row 0 continues the pair the previous window ended with (carry its last point).
        length: tokens to run: the longest pair of the window.
        first_length: tokens of ``pairs[0]`` (what a carried point covers).
    """

    index: int
    pairs: Int[Tensor, " n_local"]
    local: Int[Tensor, " rows"]
    points: Int[Tensor, " rows"]
    continues: bool
    length: int
    first_length: int

    @property
    def rows(self) -> int:
        return int(self.local.shape[0])

    @property
    def pair_of_row(self) -> Int[Tensor, " rows"]:
        """Global pair index of each row."""
        return self.pairs[self.local]

    def boundaries(self) -> Int[Tensor, " n_boundaries"]:
        """Rows ``r`` whose next row ``r + 1`` belongs to another pair (``r`` ends its pair here)."""
        return (self.local[1:] != self.local[:-1]).nonzero().flatten()


def strided_points(
    n_intervals: Int[Tensor, " batch"], stride: Int[Tensor, " batch"], *, midpoints: bool = False
) -> tuple[Int[Tensor, " batch"], Int[Tensor, " total"]]:
    """Per-pair points of a grid with ``n_intervals[i]`` intervals of ``stride[i]`` table positions.

    Returns ``(counts, points)``: pair ``i`` gets the ``n + 1`` positions ``0, s, …, n s`` or, with
    ``midpoints``, the ``n`` positions ``s/2, 3s/2, …`` (``s`` even); ``n_intervals[i] == 0`` gives none.
    """
    n = n_intervals.long()
    s = stride.long()
    if midpoints and bool(((s % 2 != 0) & (n > 0)).any()):
        raise InputError("midpoints need an even stride (nested grids halve it)")
    counts = n if midpoints else torch.where(n > 0, n + 1, torch.zeros_like(n))
    pair = torch.repeat_interleave(torch.arange(len(n)), counts)
    k = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    points = k * s[pair] + (s[pair] // 2 if midpoints else 0)
    return counts, points


class WindowPlan:
    """Items ``(pair, point)``, pairs longest first, walked in windows of ``window`` items.

    Args:
        lengths: ``[batch]`` tokens of each pair.
        counts: ``[batch]`` points of each pair in this pass (0: the pair takes no part).
        points: ``[total]`` the pairs' table positions, ascending within a pair, concatenated in pair
            order (``counts[0]`` for pair 0, then pair 1 ...).
        window: items per window (``>= 1``).
        max_padding: also end a window before an item whose pair is shorter than ``(1 - max_padding)``
            times the window's longest pair (``None``: windows of exactly ``window`` items).

    Example:
        >>> counts, points = strided_points(torch.tensor([2, 0, 4]), torch.tensor([4, 4, 2]))
        >>> plan = WindowPlan(torch.tensor([7, 3, 7]), counts, points, window=3)
        >>> plan.total, len(plan)
        (8, 3)
        >>> short = torch.tensor([7, 3])  # pads pair 1 by 4 of 7 tokens in one window, unless cut
        >>> len(WindowPlan.grid(short, 2, window=4)), len(WindowPlan.grid(short, 2, 4, max_padding=MAX_PADDING))
        (1, 2)
    """

    def __init__(
        self,
        lengths: Int[Tensor, " batch"],
        counts: Int[Tensor, " batch"],
        points: Int[Tensor, " total"],
        window: int,
        max_padding: float | None = None,
    ):
        check_int(window, "window", minimum=1)
        if max_padding is not None and not 0 <= max_padding < 1:
            raise InputError(f"max_padding must be in [0, 1) or None, got {max_padding!r}")
        lengths, counts, points = lengths.cpu().long(), counts.cpu().long(), points.cpu().long()
        if lengths.shape != counts.shape or bool((counts < 0).any()):
            raise InputError("counts must be one non-negative count per pair (shaped like lengths)")
        if points.shape != (int(counts.sum()),):
            raise InputError(f"points has {points.numel()} entries; counts say {int(counts.sum())}")
        self.window = window
        self.lengths = lengths
        # longest first; ties keep pair order (stable), so a plan is deterministic
        self.order = torch.argsort(lengths, descending=True, stable=True)
        sorted_counts = counts[self.order]
        starts = torch.cumsum(counts, 0) - counts  # where each pair's points begin in `points`
        self.pair_of_item = torch.repeat_interleave(self.order, sorted_counts)
        offset = torch.arange(self.pair_of_item.numel()) - torch.repeat_interleave(
            torch.cumsum(sorted_counts, 0) - sorted_counts, sorted_counts
        )
        self.point_of_item = points[starts[self.pair_of_item] + offset]
        self.starts = self._starts(max_padding)

    def _starts(self, max_padding: float | None) -> list[int]:
        """First item of each window: every ``window`` items, and (``max_padding``) before a short pair."""
        total = int(self.pair_of_item.numel())
        if max_padding is None:
            return list(range(0, total, self.window))
        # item lengths are non-increasing (pairs longest first): the first item too short for a window
        # starting at s is found by a binary search on the negated lengths
        neg = -self.lengths[self.pair_of_item].double()
        starts, s = [], 0
        while s < total:
            starts.append(s)
            too_short = int(torch.searchsorted(neg, -float(-neg[s]) * (1 - max_padding), right=True))
            s = min(s + self.window, max(too_short, s + 1), total)
        return starts

    @classmethod
    def grid(
        cls, lengths: Int[Tensor, " batch"], n_points: int, window: int, max_padding: float | None = None
    ) -> WindowPlan:
        """Every pair at the same ``n_points`` table positions ``0 … n_points - 1`` (a fixed rule)."""
        n = len(lengths)
        counts = torch.full((n,), n_points, dtype=torch.long)
        return cls(lengths, counts, torch.arange(n_points).repeat(n), window, max_padding)

    @classmethod
    def strided(
        cls,
        lengths: Int[Tensor, " batch"],
        n_intervals: Int[Tensor, " batch"],
        stride: Int[Tensor, " batch"],
        window: int,
        *,
        midpoints: bool = False,
        max_padding: float | None = None,
    ) -> WindowPlan:
        """A grid (or its midpoints) per pair on a finer table (see ``strided_points``)."""
        return cls(lengths, *strided_points(n_intervals, stride, midpoints=midpoints), window, max_padding)

    @property
    def total(self) -> int:
        """Items (points to evaluate) in the plan."""
        return int(self.pair_of_item.numel())

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[Window]:
        pair, point = self.pair_of_item, self.point_of_item
        ends = self.starts[1:] + [self.total]
        for i, (s, e) in enumerate(zip(self.starts, ends, strict=True)):
            pw = pair[s:e]
            pairs, counts = torch.unique_consecutive(pw, return_counts=True)
            local = torch.repeat_interleave(torch.arange(len(pairs)), counts)
            lens = self.lengths[pairs]
            yield Window(
                index=i,
                pairs=pairs,
                local=local,
                points=point[s:e],
                continues=s > 0 and int(pair[s - 1]) == int(pw[0]),
                length=int(lens.max()),
                first_length=int(lens[0]),
            )
