"""Model-level stacked weights of an encoder, in TransformerLens layouts, and its ``QK`` / ``OV`` circuits.

``stacked_weights(model)`` stacks every block's attention and MLP weights along a leading layer axis
(as TransformerLens ``HookedTransformer.W_Q`` ...), and gives each head's ``QK = W_Q W_Kᵀ`` and
``OV = W_V W_O`` as TransformerLens ``FactoredMatrix`` objects (low-rank products kept factored:
``.AB`` materialises, ``.svd()`` and ``.eigenvalues`` work on the factors). In a post-LN encoder (BERT)
these act on the LayerNorm-ed residual stream that enters each block; biases are not included.

Example:
    >>> w = stacked_weights(ce)
    >>> w.W_Q.shape, w.QK.AB.shape  # [n_layers, n_heads, d_model, d_head], [.., d_model, d_model]
    (torch.Size([6, 12, 384, 32]), torch.Size([6, 12, 384, 384]))
    >>> w.all_head_labels[:2]
    ['L0H0', 'L0H1']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig.errors import UnsupportedArchitectureError
from mechir_nig.models.protocol import HookedModel

__all__ = ["StackedWeights", "stacked_weights"]


@dataclass(frozen=True)
class StackedWeights:
    """Every block's weights stacked on a leading layer axis (detached copies).

    Shapes:
        W_Q, W_K, W_V: ``[n_layers, n_heads, d_model, d_head]``; W_O: ``[n_layers, n_heads, d_head, d_model]``.
        W_in: ``[n_layers, d_model, d_mlp]``; W_out: ``[n_layers, d_mlp, d_model]``.

    Example:
        >>> stacked_weights(ce).OV.AB.shape  # [n_layers, n_heads, d_model, d_model]
        torch.Size([6, 12, 384, 384])
    """

    W_Q: Float[Tensor, "n_layers n_heads d_model d_head"]
    W_K: Float[Tensor, "n_layers n_heads d_model d_head"]
    W_V: Float[Tensor, "n_layers n_heads d_model d_head"]
    W_O: Float[Tensor, "n_layers n_heads d_head d_model"]
    W_in: Float[Tensor, "n_layers d_model d_mlp"]
    W_out: Float[Tensor, "n_layers d_mlp d_model"]

    @property
    def QK(self) -> Any:
        """``FactoredMatrix(W_Q, W_Kᵀ)``: each head's bilinear attention score form ``[n_layers, n_heads,
        d_model, d_model]`` (before the ``1/√d_head`` scale)."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> Any:
        """``FactoredMatrix(W_V, W_O)``: each head's map from a source position's residual to its output
        ``[n_layers, n_heads, d_model, d_model]``."""
        from transformer_lens import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def all_head_labels(self) -> list[str]:
        """``"L{layer}H{head}"`` for every head, layer-major (TransformerLens' ``all_head_labels``)."""
        n_layers, n_heads = self.W_Q.shape[:2]
        return [f"L{layer}H{head}" for layer in range(n_layers) for head in range(n_heads)]


def stacked_weights(model: HookedModel) -> StackedWeights:
    """The :class:`StackedWeights` of an encoder (cross- or bi-encoder of the BERT-like families).

    Raises:
        UnsupportedArchitectureError: a model whose blocks do not expose TransformerLens weight views
            (``attn.W_Q`` ..., ``mlp.W_in``/``W_out``), e.g. gated MLPs or relative-position attention.

    Example:
        >>> stacked_weights(ce).W_out.shape  # [n_layers, d_mlp, d_model]
        torch.Size([6, 1536, 384])
    """
    blocks = getattr(model, "blocks", None)
    names = {"attn": ("W_Q", "W_K", "W_V", "W_O"), "mlp": ("W_in", "W_out")}
    out: dict[str, Tensor] = {}
    try:
        for part, ws in names.items():
            for w in ws:
                out[w] = torch.stack([getattr(getattr(b, part), w).detach().clone() for b in blocks or []])
    except (AttributeError, TypeError, RuntimeError) as err:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} does not expose TransformerLens weight views on its blocks "
            f"(attn.W_Q ..., mlp.W_in/W_out): stacked weights are available for the BERT-like encoders ({err})"
        ) from None
    if not blocks:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no blocks to stack")
    return StackedWeights(**out)
