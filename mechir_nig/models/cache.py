"""``EncoderActivationCache``: TransformerLens' ``ActivationCache`` for post-LN encoders.

TransformerLens' residual-stream decompositions assume a pre-LN model: the residual stream is the sum
of every component's output and one ``ln_final`` sits before the unembedding. In a post-LN encoder
(BERT and every family here) each block renormalises the stream (``ln1``, ``ln2``), so those sums
and the folded LayerNorm scales give wrong numbers without any error. This cache raises
``PostLayerNormError`` for them, naming what to use instead; everything else (indexing, ``stack_activation``,
``compute_head_results``, ``get_neuron_results``, ``accumulated_resid(apply_ln=False)`` ...) works as in
TransformerLens.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.ActivationCache import ActivationCache

from mechir_nig.errors import PostLayerNormError

_ADVICE = (
    "read the hooks directly instead (cache['blocks.{l}.hook_attn_out'], 'hook_mlp_out', "
    "'hook_normalized_resid_post'), or attribute the score with neuron_integrated_gradients"
)


def _refuse(name: str, why: str) -> PostLayerNormError:
    return PostLayerNormError(
        f"ActivationCache.{name} {why}; this encoder is post-LN (every block renormalises the residual "
        f"stream), so it would give wrong answers here: {_ADVICE}"
    )


class EncoderActivationCache(ActivationCache):
    """``ActivationCache`` that refuses the pre-LN-only decompositions (see the module docstring).

    Activations keep TransformerLens' shapes: ``blocks.{l}.mlp.hook_post`` ``[batch, pos, d_mlp]``,
    ``blocks.{l}.attn.hook_pattern`` ``[batch, n_heads, pos, pos]``, ``hook_resid_pre``
    ``[batch, pos, d_model]``.

    Example:
        >>> import torch
        >>> from mechir_nig.models import EncoderConfig, HookedCrossEncoder
        >>> ce = HookedCrossEncoder(EncoderConfig(n_layers=2, n_heads=2, d_model=8, d_mlp=16, d_vocab=50, n_labels=1))
        >>> ce.init_weights(seed=0)  # a tiny random model
        >>> ids, types = torch.tensor([[1, 5, 2, 7, 2]]), torch.tensor([[0, 0, 0, 1, 1]])  # [batch, pos]
        >>> scores, cache = ce.run_with_cache(ids, types, torch.ones_like(ids))
        >>> type(cache).__name__, cache["blocks.1.mlp.hook_post"].shape  # [batch, pos, d_mlp]
        ('EncoderActivationCache', torch.Size([1, 5, 16]))
        >>> cache.logit_lens(cache["blocks.1.hook_resid_post"])  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        PostLayerNormError: ActivationCache.logit_lens projects the residual stream through a final LayerNorm
    """

    def decompose_resid(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("decompose_resid", "sums component outputs as if they added up to the residual stream")

    def get_full_resid_decomposition(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(
            "get_full_resid_decomposition",
            "sums component outputs as if they added up to the residual stream",
        )

    def apply_ln_to_stack(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("apply_ln_to_stack", "applies one final LayerNorm's scale to a stack of components")

    def logit_lens(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("logit_lens", "projects the residual stream through a final LayerNorm and unembedding")

    def logit_attrs(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("logit_attrs", "projects components through a final LayerNorm and unembedding")

    def accumulated_resid(self, *args: Any, apply_ln: bool = False, **kwargs: Any) -> Any:
        if apply_ln:
            raise _refuse("accumulated_resid(apply_ln=True)", "applies one final LayerNorm's scale")
        kwargs["apply_ln"] = False
        return super().accumulated_resid(*args, **kwargs)

    def stack_head_results(self, *args: Any, apply_ln: bool = False, **kwargs: Any) -> Any:
        if apply_ln:
            raise _refuse("stack_head_results(apply_ln=True)", "applies one final LayerNorm's scale")
        kwargs["apply_ln"] = False
        return super().stack_head_results(*args, **kwargs)

    def stack_neuron_results(self, *args: Any, apply_ln: bool = False, **kwargs: Any) -> Any:
        if apply_ln:
            raise _refuse("stack_neuron_results(apply_ln=True)", "applies one final LayerNorm's scale")
        kwargs["apply_ln"] = False
        return super().stack_neuron_results(*args, **kwargs)
