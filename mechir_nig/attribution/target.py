"""``target=``: attribute a score other than the model's ``F`` (as inseq's step functions).

NIG integrates the gradient of one scalar per pair along the path. By default that is ``F``
(``model.score_embeds``: a cross-encoder's score, a bi-encoder's similarity). A ``target`` callable
computes another scalar from the same forward: it is called once per window with a ``TargetArgs``
(the rows' default score, the model's raw output, the bi-encoder's fixed side and each row's pair
index) and returns one value per row. Conductances, ``scores``/``baseline_scores`` and the completeness
check (``convergence_delta``) are then those of the target.

Shapes:
    ``TargetArgs.score``: ``[rows]``; ``output``: ``[rows, n_labels]`` (cross-encoder logits) or
    ``[rows, d_model]`` (bi-encoder embedding); ``other``: ``[rows, d_model]`` or ``None``;
    ``pair``: ``[rows]``; the target returns ``[rows]``.

Example:
    >>> args = TargetArgs(score=torch.tensor([2.0, 1.0]), output=torch.tensor([[0.5, 2.5], [1.0, 2.0]]),
    ...                   other=None, pair=torch.tensor([0, 1]))
    >>> logit_margin = lambda t: t.output[:, 1] - t.output[:, 0]
    >>> logit_margin(args).tolist()
    [2.0, 1.0]
    >>> negatives = torch.tensor([0.5, 3.0])  # F(q, d-) of each pair, computed beforehand
    >>> (lambda t: t.score - negatives[t.pair])(args).tolist()  # pairwise margin F(q, d+) - F(q, d-)
    [1.5, -2.0]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.protocol import AttributionModel

__all__ = ["Target", "TargetArgs", "call_target", "output_hook", "target_name"]


@dataclass(frozen=True)
class TargetArgs:
    """What a ``target`` callable receives: one window's rows (interpolation points of some pairs).

    Attributes:
        score: ``F`` of each row (the default target), differentiable.
        output: the forward's raw output: a cross-encoder's logits ``[rows, n_labels]``, a bi-encoder's
            embedding of the interpolated side ``[rows, d_model]``.
        other: bi-encoder: the fixed side's embedding of each row ``[rows, d_model]``; else ``None``.
        pair: the index of each row's pair in the queries/docs (or pairs) given to the call, so per-pair
            data (a negative document's score or embedding) is looked up as ``data[t.pair]``.

    Shapes:
        ``score``, ``pair``: ``[rows]``; ``output``: ``[rows, n_labels]`` or ``[rows, d_model]``;
        ``other``: ``[rows, d_model]``.

    Example:
        >>> t = TargetArgs(torch.tensor([1.0]), torch.tensor([[0.2, 0.7]]), None, torch.tensor([0]))
        >>> (t.output[:, 1] - t.output[:, 0]).tolist()  # a 2-label model's logit margin as the target
        [0.5]
    """

    score: Float[Tensor, " rows"]
    output: Float[Tensor, "rows out"] | None
    other: Float[Tensor, "rows d_model"] | None
    pair: Int[Tensor, " rows"]


Target = Callable[[TargetArgs], Tensor]
"""``target(t: TargetArgs) -> Float[Tensor, "rows"]``: one differentiable scalar per row."""


def output_hook(model: AttributionModel) -> str | None:
    """The hook whose value is ``TargetArgs.output`` (cross-encoder logits, bi-encoder embedding)."""
    suffix = "hook_logits" if model.pairwise else "hook_embedding"
    names = [n for n in getattr(model, "hook_dict", {}) if n.split(".")[-1] == suffix]
    return names[-1] if names else None


def call_target(target: Target, args: TargetArgs) -> Float[Tensor, " rows"]:
    """``target(args)``, checked to be one floating value per row (else an InputError saying so)."""
    out = target(args)
    rows = int(args.score.shape[0])
    if not isinstance(out, Tensor) or tuple(out.shape) != (rows,) or not out.is_floating_point():
        got = f"shape {tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
        raise InputError(
            f"target must return one floating value per row, a tensor of shape ({rows},); got {got}. "
            "It receives TargetArgs (score, output, other, pair) for a window of rows, e.g. "
            "lambda t: t.score - negatives[t.pair]"
        )
    if not out.requires_grad and torch.is_grad_enabled() and args.score.requires_grad:
        raise InputError(
            "target returned a value without a gradient: compute it from t.score or t.output "
            "(not from detached or precomputed tensors alone)"
        )
    return out


def target_name(target: Target | None) -> str | None:
    """A name for the record of a run (``module.qualname``), ``None`` without a target."""
    if target is None:
        return None
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{mod}.{name}" if mod else name
