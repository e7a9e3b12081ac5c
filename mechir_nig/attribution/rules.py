"""Interpolation points of the integration rules (the same alphas as Captum).

Conductance uses ``n_steps + 1`` points ``α_0 < … < α_n`` of a rule and sums
``∂F/∂a(α_k) · (a(α_{k+1}) − a(α_k))`` over the ``n_steps`` intervals, as
``captum.attr.LayerConductance`` does. Only ``riemann_trapezoid`` puts its points on both ends of the
path (``α_0 = 0``, ``α_n = 1``): with the others, neuron conductances cover ``[α_0, α_n] ⊂ [0, 1]``,
exactly as Captum's. The input-level completeness check instead integrates ``∇_x F · (x − x')`` with
each rule's own quadrature weights (``weights``) over the whole of ``[0, 1]``.
"""

from __future__ import annotations

from typing import cast

import torch

from mechir_nig._validate import check_int
from mechir_nig.errors import InputError

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")
NESTED = ("riemann_trapezoid",)
"""Rules ``n_steps="auto"`` refines: the trapezoid's points ``k / n`` are among those of ``2n`` (``2k / 2n``)
and reach both ends of the path. Gauss–Legendre and the midpoint rule do not nest (their points move
when ``n`` changes); left/right Riemann points would, but their conductance stops short of an end."""


def check_rule(method: str) -> str:
    """``method`` if it names a rule in ``RULES``, else ``InputError``."""
    if method not in RULES:
        raise InputError(f"unknown integration rule {method!r}; use one of {RULES}")
    return method


def check_n_steps(n_steps: int | str, *, allow_auto: bool = False) -> int | str:
    """``n_steps`` if it is an int >= 1 (or, with ``allow_auto``, ``"auto"``), else ``InputError``."""
    if allow_auto and n_steps == "auto":
        return n_steps
    also = "'auto' (steps chosen per pair to a tolerance)" if allow_auto else ""
    return cast(int, check_int(n_steps, "n_steps", minimum=1, alternative=also))


def alphas(method: str, n_points: int) -> list[float]:
    """The ``n_points`` interpolation coefficients of ``method`` in [0, 1], ascending.

    Example:
        >>> alphas("riemann_trapezoid", 5)  # n_steps=4 intervals: both ends included
        [0.0, 0.25, 0.5, 0.75, 1.0]
        >>> alphas("riemann_left", 4)
        [0.0, 0.25, 0.5, 0.75]
    """
    check_rule(method)
    if n_points < 2:
        raise InputError(f"a rule needs at least 2 points (n_steps >= 1), got {n_points}")
    n = n_points
    if method == "riemann_trapezoid":
        return torch.linspace(0, 1, n).tolist()
    if method == "riemann_left":
        return torch.linspace(0, 1 - 1 / n, n).tolist()
    if method == "riemann_middle":
        return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist()
    if method == "riemann_right":
        return torch.linspace(1 / n, 1, n).tolist()
    import numpy as np

    return (0.5 * (1 + np.polynomial.legendre.leggauss(n)[0])).tolist()


def weights(method: str, n_points: int) -> list[float]:
    """Quadrature weights of the rule's points for the path integral over [0, 1] (they sum to 1).

    Used for the input-level completeness check (``convergence_delta``). ``riemann_trapezoid`` gets the
    true trapezoid weights (``1/n`` inside, ``1/(2n)`` at both ends for ``n`` intervals).
    """
    check_rule(method)
    n = n_points
    if method == "riemann_trapezoid":
        w = [1.0 / (n - 1)] * n
        w[0] /= 2
        w[-1] /= 2
        return w
    if method == "gausslegendre":
        import numpy as np

        return (0.5 * np.polynomial.legendre.leggauss(n)[1]).tolist()
    return [1.0 / n] * n
