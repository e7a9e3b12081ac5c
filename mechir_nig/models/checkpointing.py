"""Gradient checkpointing of a model's blocks, for NIG on large decoders.

Inside ``checkpointed_blocks(model, after=l)`` a forward that records gradients runs every block above
layer ``l`` through ``torch.utils.checkpoint`` (non-reentrant): such a block keeps only its input for the
backward and recomputes its intermediate activations when the backward reaches it. The graph of a NIG
window then holds one block's activations at a time instead of every block's between the first
attributed layer and the score, at the price of a second forward of those blocks. Values are unchanged
(the recomputation is the same arithmetic); hooks still registered when the backward runs (an
``ablate`` context around the attribution) see the same forward context again.

Example:
    >>> import torch
    >>> from mechir_nig.models import HookedCrossEncoder
    >>> from mechir_nig.models.config import EncoderConfig
    >>> ce = HookedCrossEncoder(EncoderConfig(n_layers=3, n_heads=2, d_model=8, d_mlp=16, d_vocab=50, n_labels=1))
    >>> ce.init_weights(seed=0)
    >>> ids = torch.tensor([[1, 5, 2, 7, 2]])
    >>> emb = ce.word_embeddings(ids).detach().requires_grad_(True)
    >>> with checkpointed_blocks(ce, after=0):
    ...     f = ce(None, torch.zeros_like(ids), torch.ones_like(ids), input_embeds=emb)
    >>> f.grad_fn is not None
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mechir_nig.models.protocol import _FORWARD

_AFTER: ContextVar[tuple[int, int] | None] = ContextVar("mechir_nig_checkpoint_after", default=None)


@contextmanager
def checkpointed_blocks(model: nn.Module, *, after: int) -> Iterator[None]:
    """Checkpoint ``model``'s blocks above layer ``after`` in the forwards run inside (``-1``: every block).

    Only forwards with gradients enabled are checkpointed; other models run as usual.
    """
    token = _AFTER.set((id(model), after))
    try:
        yield
    finally:
        _AFTER.reset(token)


def run_block(model: nn.Module, layer: int, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``block(*args, **kwargs)``, checkpointed when inside ``checkpointed_blocks`` for a block above it."""
    scope = _AFTER.get()
    if scope is None or scope[0] != id(model) or layer <= scope[1] or not torch.is_grad_enabled():
        return block(*args, **kwargs)
    fwd = _FORWARD.get()  # the recomputation runs in the backward, outside the model's forward

    def again(*a: Any, **k: Any) -> Any:
        token = _FORWARD.set(fwd)
        try:
            return block(*a, **k)
        finally:
            _FORWARD.reset(token)

    return checkpoint(again, *args, use_reentrant=False, **kwargs)


__all__ = ["checkpointed_blocks", "run_block"]
