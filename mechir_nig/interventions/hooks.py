"""Scoped hook helpers shared by the interventions (ablation, patching).

Every intervention goes through TransformerLens hook names, added with ``model.hooks(...)`` (or
``run_with_hooks``), so the hooks are removed on exit and when an exception is raised. Two helpers:

- :func:`replace_components`: an out-of-place write of new values into the selected components
  (neurons on the last axis of ``mlp.hook_post``, heads on axis 2 of ``attn.hook_z``) at selected
  positions, with one ``index_copy`` (no loop over neurons), differentiable;
- :func:`bind_batches`: a scoped wrapper of ``model.forward`` that records the tokenized batch of each
  forward pass (its token groups) for hooks that need it (position masks, baseline passes). It is an
  instance attribute removed on exit (also after an exception); the model class is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["bind_batches", "component_dim", "replace_components"]


def component_dim(kind: str) -> int:
    """The axis of the component index: ``-1`` (``d_mlp``) for ``mlp``, ``2`` (``n_heads``) for ``head``."""
    return -1 if kind == "mlp" else 2


def replace_components(
    act: Tensor,
    index: Tensor,
    dim: int,
    value: Tensor,
    positions: Tensor | None = None,
) -> Tensor:
    """``act`` with ``value`` written at components ``index`` of axis ``dim`` (where ``positions``).

    Shapes:
        act: ``[batch, pos, d_mlp]`` or ``[batch, pos, n_heads, d_head]``.
        index: ``[k]`` long.
        value: broadcastable to ``act.index_select(dim, index)`` (``[batch, pos, k(, d_head)]``).
        positions: ``[batch, pos]`` bool or ``None`` (every position).

    Example:
        >>> act = torch.zeros(1, 2, 4)  # [batch, pos, d_mlp]
        >>> replace_components(act, torch.tensor([1, 3]), -1, torch.tensor(7.0)).tolist()
        [[[0.0, 7.0, 0.0, 7.0], [0.0, 7.0, 0.0, 7.0]]]
        >>> first = torch.tensor([[True, False]])  # [batch, pos]
        >>> replace_components(act, torch.tensor([1]), -1, torch.tensor(7.0), first).tolist()
        [[[0.0, 7.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    """
    dim = dim % act.ndim
    current = act.index_select(dim, index)
    value = value.to(act.dtype).expand_as(current)
    if positions is not None:
        shape = positions.shape + (1,) * (act.ndim - 2)
        value = torch.where(positions.view(shape), value, current)
    return act.index_copy(dim, index, value)


@contextmanager
def bind_batches(
    model: Any, on_batch: Callable[[Any, Callable[..., Any], tuple, dict], Any]
) -> Iterator[None]:
    """Route ``model(...)`` through ``on_batch(batch, forward, args, kwargs)`` inside the block.

    ``on_batch`` gets the first positional argument (a ``PairBatch``/``TextBatch``, a tensor or ``None``),
    the original bound ``forward`` and the call's arguments, and returns the output. The wrapper is an
    instance attribute, restored on exit and after exceptions (nested bindings restore in order).

    Example:
        >>> class Model:
        ...     def forward(self, batch):
        ...         return batch * 2
        >>> model = Model()
        >>> with bind_batches(model, lambda batch, forward, args, kwargs: forward(*args, **kwargs) + 1):
        ...     model.forward(10)
        21
        >>> model.forward(10)  # restored on exit
        20
    """
    had_own = "forward" in vars(model)
    previous = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        batch = args[0] if args else kwargs.get("batch")
        return on_batch(batch, previous, args, kwargs)

    model.forward = forward
    try:
        yield
    finally:
        if had_own:
            model.forward = previous
        else:
            del model.forward
