"""``n_steps="auto"``: per pair, the trapezoid grid is doubled until completeness holds to ``tol``.

Rule: ``riemann_trapezoid`` on nested grids. A pair starts at ``min_steps`` intervals (points ``k / n``);
while its completeness error ``|Σ_k w_k ∇_x F(γ(α_k))·(x − x') − (F(x) − F(x'))|`` (trapezoid weights ``w``,
the ``convergence_delta``) is above ``tol · |F(x) − F(x')|``, its grid is doubled: ``n → 2n`` adds the ``n``
midpoints and keeps every old point (``k / n = 2k / 2n``), up to ``max_steps``. Gauss–Legendre and the
midpoint rule do not nest (their points move when ``n`` changes): see ``rules.NESTED``.

Every point is evaluated once. The completeness integral is updated from the new points' ``dF/dα`` alone.
The conductance on the doubled grid needs, for each halved interval ``[p, q]`` with midpoint ``m``, the
gradient at ``p`` and the activation at ``q`` (``MidpointConductance``): those are kept (a ``PointBank``:
activation and gradient of every requested site at every point of the pair's grid) while they fit in
``reuse_bytes``. A pair whose next grid would not fit is *deferred*: its further rounds evaluate only what
completeness needs, and its conductance is computed once, at the end, over its final grid (those points
are then evaluated twice). Either way a pair's result equals a fixed-step run with its final ``n_steps``.

Example:
    >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps="auto", tol=0.05, min_steps=4,
    ...                                    max_steps=16, layers=[5], reduce="neuron")
    >>> attr.n_steps_used.shape  # [batch] intervals each pair needed
    torch.Size([2])
    >>> all(n in (4, 8, 16) for n in attr.n_steps_used.tolist())  # min_steps doubled, at most max_steps
    True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig._validate import check_int, check_number
from mechir_nig.attribution.nig.kernel import (
    Conductance,
    GridConductance,
    MidpointConductance,
    PathKernel,
    PathScalars,
    PointBank,
)
from mechir_nig.attribution.nig.plan import WindowPlan, strided_points
from mechir_nig.attribution.rules import NESTED
from mechir_nig.errors import InputError

DEFAULT_TOL = 0.01
DEFAULT_MIN_STEPS = 8
DEFAULT_MAX_STEPS = 512
DEFAULT_REUSE_BYTES = 2 * 1024**3


class ConvergenceWarning(UserWarning):
    """``n_steps="auto"`` stopped at ``max_steps`` for some pairs before reaching ``tol``; the message
    names them (batch index, tokens, relative error reached)."""


@dataclass(frozen=True)
class AutoSteps:
    """Settings of ``n_steps="auto"`` (validated by ``check_auto``)."""

    tol: float = DEFAULT_TOL
    min_steps: int = DEFAULT_MIN_STEPS
    max_steps: int = DEFAULT_MAX_STEPS
    reuse_bytes: int = DEFAULT_REUSE_BYTES


def check_auto(
    method: str,
    tol: float | None,
    min_steps: int | None,
    max_steps: int | None,
    reuse_bytes: int | None,
) -> AutoSteps:
    """Validate the ``n_steps="auto"`` keywords (``None``: the default)."""
    if method not in NESTED:
        raise InputError(
            f"n_steps='auto' refines nested grids and needs method='riemann_trapezoid', got {method!r}; "
            "pass an int n_steps for other rules"
        )
    tol = DEFAULT_TOL if tol is None else tol
    tol = check_number(tol, "tol", minimum=0, strict=True, hint="a fraction of |F(x) - F(x')|, e.g. 0.01")
    lo = check_int(
        DEFAULT_MIN_STEPS if min_steps is None else min_steps,
        "min_steps",
        minimum=1,
        hint="the first, coarsest grid",
    )
    hi = max(DEFAULT_MAX_STEPS, lo) if max_steps is None else max_steps
    if isinstance(hi, bool) or not isinstance(hi, int) or hi < lo or hi % lo or (hi // lo) & (hi // lo - 1):
        raise InputError(
            f"max_steps must be min_steps ({lo}) times a power of 2 (the grids double: {lo}, {2 * lo}, "
            f"{4 * lo}, ...), got {hi!r}"
        )
    mem = check_int(
        DEFAULT_REUSE_BYTES if reuse_bytes is None else reuse_bytes,
        "reuse_bytes",
        minimum=0,
        hint="bytes; 0 keeps no points",
    )
    return AutoSteps(tol, lo, hi, mem)


def trapezoid_integral(
    slope: Float[Tensor, "batch n_table"], n_steps: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """``∫₀¹ dF/dα`` by the trapezoid rule on each pair's grid of ``n_steps[i]`` intervals.

    ``slope[i, j]`` holds ``dF/dα`` at ``α = j / (n_table − 1)``; pair ``i`` uses every
    ``(n_table − 1) / n_steps[i]``-th entry.
    """
    n_max = slope.shape[1] - 1
    j = torch.arange(n_max + 1, device=slope.device)
    stride = (n_max // n_steps).to(slope.device)
    w = (j[None] % stride[:, None] == 0).to(slope.dtype) / n_steps.to(slope)[:, None]
    w[:, 0] /= 2
    w[:, -1] /= 2
    return (w * slope).sum(1)


def _admit(candidates: Tensor, points: Tensor, budget: int) -> Tensor:
    """The candidates, in pair order, whose kept points fit in ``budget`` points altogether."""
    cost = torch.where(candidates, points, torch.zeros_like(points))
    return candidates & (torch.cumsum(cost, 0) <= budget)


def _slots(pairs: Tensor, n_steps: Tensor, stride: Tensor, n_table: int) -> Tensor:
    """``slot_of[pair, point]``: a bank slot for every point of the grids of ``pairs`` (else -1)."""
    counts, points = strided_points(torch.where(pairs, n_steps, torch.zeros_like(n_steps)), stride)
    slot_of = torch.full((len(pairs), n_table), -1, dtype=torch.long)
    slot_of[torch.repeat_interleave(torch.arange(len(pairs)), counts), points] = torch.arange(points.numel())
    return slot_of


@dataclass
class AutoRun:
    """What ``run_auto`` found: the steps per pair, the points evaluated, the scalars on the path."""

    n_steps: Int[Tensor, " batch"]
    points: int
    scalars: PathScalars
    converged: Tensor
    relative_delta: Tensor


def completeness_error(scalars: PathScalars, n_steps: Tensor) -> tuple[Tensor, Tensor]:
    """Completeness error on each pair's grid and the score change ``F(x) − F(x')`` it is relative to."""
    ig = trapezoid_integral(scalars.slope, n_steps)
    gap = scalars.score[:, -1] - scalars.score[:, 0]
    return ig - gap, gap


def run_auto(
    kernel: PathKernel,
    target: Conductance,
    names: list[str],
    shapes: dict[str, tuple[int, ...]],
    lengths: Int[Tensor, " batch"],
    window: int,
    settings: AutoSteps,
    *,
    bank_dtype: torch.dtype,
    progress: bool = False,
    window_padding: float | None = None,
) -> AutoRun:
    """Refine each pair's grid until completeness holds to ``tol`` (see the module docstring).

    ``window_padding``: the plans' ``max_padding`` (``NIGSettings.window_padding``).
    """
    s = settings
    n_pairs, n_table = len(lengths), s.max_steps + 1

    def plan(n_intervals: Tensor, *, midpoints: bool = False) -> WindowPlan:
        """This round's grid (``stride`` as it is now) of each pair, or its midpoints."""
        return WindowPlan.strided(
            lengths, n_intervals, stride, window, midpoints=midpoints, max_padding=window_padding
        )

    dev = target.device
    n_pos = kernel.batch.input_ids.shape[1]
    scalars = PathScalars(n_pairs, n_table, target.dtype, dev)
    per_point = PointBank.bytes_per_point(shapes, n_pos, bank_dtype)
    budget = s.reuse_bytes // per_point if per_point else 0
    level = torch.full((n_pairs,), s.min_steps, dtype=torch.long)
    stride = s.max_steps // level
    everyone = torch.ones(n_pairs, dtype=torch.bool)
    banked = _admit(everyone, level + 1, budget)
    bank = PointBank(shapes, _slots(banked, level, stride, n_table), n_pos, bank_dtype, dev)
    points = kernel.run(
        plan(level),
        GridConductance(target, names, bank),
        scalars,
        input_grad=True,
        progress=progress,
        desc=f"NIG auto {s.min_steps}",
    )
    done = torch.zeros(n_pairs, dtype=torch.bool)
    deferred = torch.zeros(n_pairs, dtype=torch.bool)
    while True:
        delta, gap = completeness_error(scalars, level)
        ok = (delta.abs() <= s.tol * gap.abs()).cpu()
        refine = ~done & ~ok & (level < s.max_steps)
        done |= ~refine
        if not bool(refine.any()):
            break
        # pairs with every point of their grid kept refine from the kept points; those whose new
        # midpoints fit in the budget too can do so again next round, the others are deferred if they
        # need another round
        use = refine & banked
        newly = refine & ~use & ~deferred
        if bool(newly.any()):  # no kept points: conductance over the final grid at the end
            target.reset(newly.nonzero().flatten().to(dev))
            deferred |= newly
        held = int(torch.where(use, level + 1, torch.zeros_like(level)).sum())
        banked = _admit(use, level, budget - held)
        half = stride // 2
        if bool(use.any()):
            grid = torch.where(banked, 2 * level, level), torch.where(banked, half, stride)
            bank = bank.moved(_slots(use, *grid, n_table))
            points += kernel.run(
                plan(torch.where(use, level, 0), midpoints=True),
                MidpointConductance(target, names, bank, half),
                scalars,
                input_grad=True,
                progress=progress,
                desc=f"NIG auto {int(2 * level[use].max())}",
            )
        else:
            bank = PointBank(shapes, _slots(use, level, stride, n_table), n_pos, bank_dtype, dev)
        lazy = refine & deferred
        if bool(lazy.any()):  # completeness only: no conductance, no kept points
            points += kernel.run(
                plan(torch.where(lazy, level, 0), midpoints=True),
                None,
                scalars,
                input_grad=True,
                progress=progress,
                desc="NIG auto (deferred)",
            )
        level = torch.where(refine, 2 * level, level)
        stride = s.max_steps // level
    del bank
    if bool(deferred.any()):
        points += kernel.run(
            plan(torch.where(deferred, level, 0)),
            GridConductance(target, names),
            scalars,
            input_grad=False,
            progress=progress,
            desc="NIG auto (deferred conductance)",
        )
    delta, gap = completeness_error(scalars, level)
    converged = (delta.abs() <= s.tol * gap.abs()).cpu()
    rel = (delta.abs() / gap.abs()).cpu()
    return AutoRun(level, points, scalars, converged, rel)


def warn_unconverged(run: AutoRun, settings: AutoSteps, tokens: list[list[str]]) -> None:
    """``ConvergenceWarning`` naming the pairs that reached ``max_steps`` without ``tol``."""
    bad = (~run.converged).nonzero().flatten().tolist()
    if not bad:
        return
    shown = []
    for i in bad[:10]:
        text = " ".join(tokens[i]) if tokens else ""
        if len(text) > 60:
            text = text[:57] + "..."
        shown.append(f"pair {i}{f' ({text!r})' if text else ''}: {float(run.relative_delta[i]):.3g}")
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    warnings.warn(
        f"n_steps='auto': {len(bad)} pair(s) did not reach tol={settings.tol} within "
        f"max_steps={settings.max_steps} (|delta| / |F(x) - F(x')| reached: {'; '.join(shown)}{more}); "
        "raise max_steps or tol, or check these pairs' convergence_delta",
        ConvergenceWarning,
        stacklevel=3,
    )
