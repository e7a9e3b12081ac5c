"""Interventions along a direction of an activation space: project it out, or add it, through the engine.

``direction_intervention(model, "resid_post", u, mode="project_out", layers=[3])`` writes, at the chosen
layers and positions, ``a − (a · û) û`` (``mode="project_out"``: the component along the unit direction
``û = u / |u|`` removed) or ``a + scale · û`` (``mode="add"``: the component along ``û`` moved by
``scale``). The direction lives in the site's last axis: ``d_model`` for residual-stream sites
(``resid_*``, ``attn_out``, ``mlp_out``), ``d_mlp`` for ``mlp_pre``/``mlp_post``, ``d_head`` for the head
sites (``z``, ``q``, ``k``, ``v``; ``heads=`` picks the heads, default all).

It is an :class:`~mechir_nig.interventions.engine.Engine` of :class:`~mechir_nig.interventions.engine.Intervention`
with a :class:`~mechir_nig.interventions.engine.Function` value, so it is a context manager composable
with ``ablate`` and ``block_attention``, and gives ``(hook name, fn)`` pairs with :func:`direction_hooks`.

Example:
    >>> u = torch.randn(ce.cfg.d_model)
    >>> with direction_intervention(ce, "resid_post", u, mode="project_out", layers=[2], positions="doc"):
    ...     scores = ce(batch)
    >>> scores.shape  # [batch]
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._validate import check_choice, check_layers
from mechir_nig.errors import InputError
from mechir_nig.interventions.engine import Engine, Function, Intervention
from mechir_nig.models.protocol import HookedModel
from mechir_nig.sites import site

__all__ = ["MODES", "direction_hooks", "direction_intervention", "unit_direction"]

MODES = ("project_out", "add")
_WIDTH = {"position": "d_model", "neuron": "d_mlp", "head": "d_head"}


def unit_direction(direction: Any, width: int, what: str = "direction") -> Float[Tensor, " width"]:
    """``direction / |direction|`` as a float64 vector of length ``width``, else an InputError.

    Example:
        >>> unit_direction([3.0, 4.0], 2).tolist()
        [0.6, 0.8]
    """
    u = torch.as_tensor(direction).detach().to("cpu", torch.float64)
    if u.ndim != 1 or u.shape[0] != width:
        raise InputError(f"{what} must be a vector of length {width}, got shape {tuple(u.shape)}")
    norm = u.norm()
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        raise InputError(f"{what} must be a finite non-zero vector")
    return u / norm


def _edit(u: Tensor, mode: str, scale: float) -> Callable[[Tensor, str], Tensor]:
    def fn(act: Tensor, name: str) -> Tensor:  # [batch, pos, ..., width]
        v = u.to(act.device, act.dtype)
        if mode == "add":
            return act + scale * v
        return act - (act @ v)[..., None] * v

    return fn


def _interventions(
    model: HookedModel,
    site_name: str,
    direction: Any,
    mode: str,
    scale: float,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    positions: str | Tensor,
) -> list[Intervention]:
    s = site(site_name)
    if s.unit == "head" and s.unit_axis == 1:
        raise InputError(f"site {s.name!r} is an attention pattern (query x key), not a vector space")
    check_choice(mode, "mode", MODES)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise InputError(f"scale must be a finite number, got {scale!r}")
    if mode == "project_out" and scale != 1.0:
        raise InputError("scale applies to mode='add'; mode='project_out' removes the whole component")
    if heads is not None and s.unit != "head":
        raise InputError(f"heads= applies to the head sites (z, q, k, v), not {s.name!r}")
    u = unit_direction(direction, int(getattr(model.cfg, _WIDTH[s.unit])))
    units = None if heads is None else torch.tensor(check_layers(heads, model.cfg.n_heads, what="heads"))
    value = Function(_edit(u, mode, float(scale)))
    return [
        Intervention(s.name, layer, value, units=units, positions=positions)
        for layer in check_layers(layers, model.cfg.n_layers)
    ]


def direction_hooks(
    model: HookedModel,
    site: str,
    direction: Any,
    *,
    mode: str = "project_out",
    scale: float = 1.0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: str | Tensor = "all",
    batch: Any = None,
) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    """``[(hook name, fn)]`` of :func:`direction_intervention` for ``model.run_with_hooks``.

    Args:
        model: a ``HookedModel``.
        site: a site of :mod:`mechir_nig.sites` with a vector per position (not ``pattern``/``attn_scores``).
        direction: the direction, a vector over the site's last axis (normalised here).
        mode: ``"project_out"`` or ``"add"``.
        scale: how far ``"add"`` moves the component along the unit direction.
        layers: the layers (default all).
        heads: for head sites, the heads (default all).
        positions: ``"all"``, ``"cls"``, ``"query"``, ``"doc"`` or a ``[batch, pos]`` bool mask.
        batch: the batch every forward reads (for token groups on raw tensors).

    Returns:
        The hooks.

    Example:
        >>> hooks = direction_hooks(ce, "mlp_out", torch.ones(ce.cfg.d_model), mode="add", scale=2.0, layers=[0])
        >>> ce.run_with_hooks(batch, fwd_hooks=hooks).shape  # [batch]
        torch.Size([2])
    """
    its = _interventions(model, site, direction, mode, scale, layers, heads, positions)
    return Engine(model, its, batch=batch).hooks()


def direction_intervention(
    model: HookedModel,
    site: str,
    direction: Any,
    *,
    mode: str = "project_out",
    scale: float = 1.0,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: str | Tensor = "all",
) -> Engine:
    """An engine writing the direction edit (see the module docstring) in every forward inside ``with``.

    Args:
        model: a ``HookedModel``.
        site: a site of :mod:`mechir_nig.sites` with a vector per position (not ``pattern``/``attn_scores``).
        direction: the direction ``[width]`` (``d_model``, ``d_mlp`` or ``d_head``); normalised here.
        mode: ``"project_out"`` (``a − (a·û)û``) or ``"add"`` (``a + scale·û``).
        scale: how far ``"add"`` moves the component along the unit direction.
        layers: the layers (default all).
        heads: for head sites, the heads (default all).
        positions: ``"all"``, ``"cls"``, ``"query"``, ``"doc"`` or a ``[batch, pos]`` bool mask.

    Returns:
        An :class:`~mechir_nig.interventions.engine.Engine` (``with`` it; ``.hooks()`` for ``run_with_hooks``).

    Raises:
        InputError: an unknown site or mode, a direction of the wrong length or zero, ``heads`` on a
            non-head site, ``scale`` with ``project_out``.

    Example:
        >>> with direction_intervention(ce, "z", torch.ones(ce.cfg.d_head), heads=[0], layers=[1]):
        ...     scores = ce(batch)
        >>> scores.shape  # [batch]
        torch.Size([2])
    """
    its = _interventions(model, site, direction, mode, scale, layers, heads, positions)
    return Engine(model, its)
