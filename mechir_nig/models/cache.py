"""``EncoderActivationCache``: TransformerLens' ``ActivationCache`` for the hooked encoders.

TransformerLens' residual-stream decompositions assume a pre-LN model: the residual stream is the sum
of every component's output and one ``ln_final`` sits before the unembedding. In a post-LN encoder
(BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT) each block renormalises the stream (``ln1``, ``ln2``), so those sums
and the folded LayerNorm scales give wrong numbers without any error. This cache raises
``PostLayerNormError`` for them, naming what to use instead; everything else (indexing, ``stack_activation``,
``compute_head_results``, ``get_neuron_results``, ``accumulated_resid(apply_ln=False)`` ...) works as in
TransformerLens. Pre-LN families (ModernBERT) also get ``decompose_resid`` (the residual stream as the
sum of the embedding output and every block's ``attn_out`` and ``mlp_out``); the decompositions that
apply a final LayerNorm's scale or project onto an unembedding stay refused (a cross-encoder's score
reads a pooled, normalised vector, not an unembedding).
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.utilities import Slice

from mechir_nig.errors import PostLayerNormError

_ADVICE = (
    "read the hooks directly instead (cache['blocks.{l}.hook_attn_out'], 'hook_mlp_out', "
    "'hook_normalized_resid_post'), decompose the stream with every LayerNorm's scale frozen "
    "(mechir_nig.analysis.decompose_resid), attribute the score directly with the head's nonlinearities "
    "frozen (mechir_nig.analysis.decompose_score: logit_attrs for rerankers), or with "
    "neuron_integrated_gradients"
)


def _refuse(name: str, why: str) -> PostLayerNormError:
    return PostLayerNormError(
        f"ActivationCache.{name} {why}; this encoder is post-LN (every block renormalises the residual "
        f"stream), or, for a pre-LN family (ModernBERT), its score has no unembedding to project onto, "
        f"so it would give wrong answers here: {_ADVICE}"
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

    @property
    def pre_ln(self) -> bool:
        """Whether the model's blocks are pre-LN (ModernBERT), where the residual stream is the sum of
        the embedding output and every block's attention and MLP outputs."""
        from mechir_nig.models.architectures import architecture_named

        return architecture_named(self.model.cfg.architecture).pre_ln

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """Pre-LN families only: the residual stream before block ``layer`` (``None``: the last block's
        output, before ``ln_final``) as a stack ``[component, batch, pos, d_model]`` of the embedding
        output (``hook_full_embed``, label ``embed``) and each block's ``attn_out`` / ``mlp_out``, as
        TransformerLens' ``decompose_resid`` (``apply_ln`` is refused: the score has no unembedding)."""
        if not self.pre_ln:
            raise _refuse(
                "decompose_resid", "sums component outputs as if they added up to the residual stream"
            )
        if apply_ln:
            raise _refuse("decompose_resid(apply_ln=True)", "applies one final LayerNorm's scale")
        n = self.model.cfg.n_layers
        top = n if layer is None or layer == -1 else layer
        parts = [("embed", "hook_full_embed")] if incl_embeds else []
        for sub in range(top):
            kinds = [k for k, skip in (("attn_out", "mlp"), ("mlp_out", "attn")) if mode != skip]
            parts += [(f"{sub}_{k}", f"blocks.{sub}.hook_{k}") for k in kinds]
        if mlp_input and mode != "mlp":
            parts.append((f"{top}_attn_out", f"blocks.{top}.hook_attn_out"))
        sl = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        components = torch.stack([sl.apply(self[hook], dim=-2) for _, hook in parts])
        return (components, [label for label, _ in parts]) if return_labels else components

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
