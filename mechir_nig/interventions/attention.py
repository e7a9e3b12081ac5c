"""Attention interventions between token groups: block what one group's tokens attend to in another.

``block_attention(model, "query", "doc")`` stops every query token from attending to the document tokens
(MICE-style interaction removal): on ``attn.hook_attn_scores`` of the chosen layers (and heads), the score
of each blocked (query position, key position) is set to the dtype's minimum, so its softmax weight is
exactly 0, as a masked key's. Groups are the batch's token groups (``"cls"``, ``"query"``, ``"doc"``,
``"sep"``), read from the batch each forward runs on. A query row that would be left with no key to
attend to (every attended key blocked) keeps its attention unchanged: a softmax over no keys is undefined.

It is a context manager (every forward inside is blocked) and, with :func:`attention_block_hooks`,
``(hook name, fn)`` pairs for ``run_with_hooks``; it composes with ``ablate`` and any other hooks (each adds
its own). The blocked layers compute the attention pattern explicitly (a hook on ``hook_attn_scores``
switches the layer from SDPA to the explicit path).

Example:
    >>> with block_attention(ce, "query", "doc", layers=[0, 1]):  # doctest: +SKIP
    ...     scores = ce(batch)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from mechir_nig._validate import check_layers
from mechir_nig.errors import InputError
from mechir_nig.interventions.engine import is_batch
from mechir_nig.models.protocol import HookedModel, current_forward
from mechir_nig.models.tokenization import CLS, DOC, PROMPT, QUERY, SEP
from mechir_nig.sites import hook_name

__all__ = ["GROUPS", "attention_block_hooks", "block_attention"]

GROUPS = {"cls": CLS, "query": QUERY, "doc": DOC, "sep": SEP, "prompt": PROMPT}
"""Group name -> the token-group id of a batch's ``groups``."""


def _group(name: Any, what: str) -> int:
    if not isinstance(name, str) or name not in GROUPS:
        raise InputError(f"{what} must be one of {sorted(GROUPS)}, got {name!r}")
    return GROUPS[name]


def blocked_keys(groups: Tensor, mask: Tensor, from_id: int, to_id: int) -> Tensor:
    """``[batch, query_pos, key_pos]`` bool: the (query, key) pairs blocked, rows that would be left with no
    attended key excepted.

    Example:
        >>> g = torch.tensor([[CLS, QUERY, SEP, DOC, DOC, SEP]])
        >>> blocked_keys(g, torch.ones(1, 6), QUERY, DOC)[0, 1].tolist()
        [False, False, False, True, True, False]
    """
    attended = mask.bool()[:, None, :]
    b = (groups == from_id)[:, :, None] & (groups == to_id)[:, None, :] & attended
    left = (attended & ~b).any(-1, keepdim=True)
    return b & left


def attention_block_hooks(
    model: HookedModel,
    from_group: str,
    to_group: str,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch: Any = None,
) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    """``[(hook name, fn)]`` on ``attn.hook_attn_scores`` blocking ``from_group`` -> ``to_group`` (see the
    module docstring).

    Args:
        model: a ``HookedModel``.
        from_group: the group whose tokens (query side of the attention) stop attending.
        to_group: the group of the keys they no longer attend to.
        layers: the layers (default all).
        heads: the heads of each layer (default all).
        batch: the batch every forward reads (default: each forward's own batch, as ``ablate``).

    Returns:
        The hooks, for ``model.run_with_hooks(..., fwd_hooks=...)`` or ``model.hooks(...)``.

    Raises:
        InputError: an unknown group, layers or heads out of range; at run time, a forward without a
            tokenized batch.

    Example:
        >>> hooks = attention_block_hooks(ce, "doc", "query", layers=[1])  # doctest: +SKIP
        >>> ce.run_with_hooks(batch, fwd_hooks=hooks)  # doctest: +SKIP
    """
    f, t = _group(from_group, "from_group"), _group(to_group, "to_group")
    layer_list = list(check_layers(layers, model.cfg.n_layers))
    head_idx = (
        None if heads is None else torch.tensor(list(check_layers(heads, model.cfg.n_heads, what="heads")))
    )

    def hook(scores: Tensor, hook: Any) -> Tensor:  # [batch, n_heads, query_pos, key_pos]
        fwd = current_forward()
        b = fwd.batch if batch is None and fwd is not None else batch
        if not is_batch(b):
            raise InputError(
                "block_attention needs the token groups of the batch: run a tokenized batch (model.tokenize) "
                "inside it, or pass batch= to attention_block_hooks"
            )
        n = scores.shape[-1]
        blocked = blocked_keys(b.groups[:, :n], b.attention_mask[:, :n], f, t).to(scores.device)[:, None]
        if head_idx is not None:
            on = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            on[head_idx.to(scores.device)] = True
            blocked = blocked & on[None, :, None, None]
        return scores.masked_fill(blocked, torch.finfo(scores.dtype).min)

    return [(hook_name("attn_scores", layer), hook) for layer in layer_list]


@contextmanager
def block_attention(
    model: HookedModel,
    from_group: str,
    to_group: str,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
) -> Iterator[HookedModel]:
    """Every forward of ``model`` inside the block with ``from_group`` -> ``to_group`` attention blocked
    (the arguments of :func:`attention_block_hooks`).

    Example:
        >>> with block_attention(ce, "query", "doc"), ablate(ce, neurons):  # doctest: +SKIP
        ...     scores = ce(batch)
    """
    with model.hooks(
        fwd_hooks=attention_block_hooks(model, from_group, to_group, layers=layers, heads=heads)
    ):
        yield model
