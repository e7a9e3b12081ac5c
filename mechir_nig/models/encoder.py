"""The hooked post-LN encoder shared by cross- and bi-encoders of every family.

Hook names follow TransformerLens (``hook_embed``, ``blocks.{l}.mlp.hook_post`` ...) and are the same
for BERT, ELECTRA, RoBERTa/XLM-R and DistilBERT. The forward pass takes TransformerLens-style
``start_at_layer`` / ``stop_at_layer``: with ``start_at_layer=k`` the input is the residual stream before
block ``k``; with ``stop_at_layer=k`` the output is the residual stream before block ``k``
(``[batch, pos, d_model]``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, overload

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from mechir_nig._types import Mask, Resid, Tokens
from mechir_nig.errors import InputError
from mechir_nig.models.architectures import architecture_named
from mechir_nig.models.cache import EncoderActivationCache
from mechir_nig.models.checkpointing import run_block
from mechir_nig.models.components import Pooler
from mechir_nig.models.config import ATTENTION_IMPLS, EncoderConfig
from mechir_nig.models.protocol import forward_context
from mechir_nig.models.reranker import run_sorted

_M = TypeVar("_M", bound="HookedEncoderBase")


class HookedEncoderBase(HookedRootModule):
    """Embeddings + blocks + (optional) pooler, with the TransformerLens hooking API.

    The base of ``HookedCrossEncoder`` and ``HookedBiEncoder``: hooks, ``run_with_cache``,
    ``run_with_hooks``, ``start_at_layer``/``stop_at_layer``. Inputs are ``[batch, pos]`` token ids (or a
    batch); ``stop_at_layer=k`` returns the residual stream ``[batch, pos, d_model]`` before block ``k``.

    Example:
        >>> import torch
        >>> from mechir_nig.models import HookedCrossEncoder
        >>> cfg = EncoderConfig(n_layers=2, n_heads=2, d_model=8, d_mlp=16, d_vocab=50, n_labels=1)
        >>> ce = HookedCrossEncoder(cfg)
        >>> ce.init_weights(seed=0)
        >>> ids, types = torch.tensor([[1, 5, 2, 7, 2]]), torch.tensor([[0, 0, 0, 1, 1]])  # [batch, pos]
        >>> ce(ids, types, torch.ones_like(ids), stop_at_layer=1).shape  # [batch, pos, d_model]
        torch.Size([1, 5, 8])
        >>> "blocks.1.mlp.hook_post" in ce.hook_dict
        True
    """

    def __init__(self, cfg: EncoderConfig, tokenizer: Any = None, *, with_pooler: bool = True):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        arch = architecture_named(cfg.architecture)  # the family's components (BERT's by default)
        self.embed: Any = arch.embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_embed]  word embeddings
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_embed]  (absolute positions only)
        self.hook_token_type_embed = HookPoint()  # [batch, pos, d_embed]  (absolute positions only)
        self.hook_full_embed = HookPoint()  # [batch, pos, d_model]  embedding output (= blocks.0 resid_pre)
        self.blocks = nn.ModuleList([arch.block(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final: nn.Module | None = arch.final_norm(cfg) if arch.final_norm else None  # pre-LN
        self.pooler: Pooler | None = arch.pooler(cfg) if with_pooler else None

    def init_weights(self, seed: int | None = None) -> None:
        """BERT initialisation (normal(0, 0.02), LayerNorm 1/0); used when building from a config."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("ln.w", "ln1.w", "ln2.w", "ln_final.w")):
                    p.fill_(1.0)
                elif p.dim() == 1:
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    def freeze(self: _M) -> _M:
        """Set ``requires_grad=False`` on every parameter and return the model (in eval mode)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    # -- TransformerLens switches ----------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute per-head outputs in ``blocks.{l}.attn.hook_result`` (costs memory; off by default)."""
        self.cfg.use_attn_result = bool(use_attn_result)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Fire ``blocks.{l}.hook_mlp_in`` (a copy of ``resid_mid`` before ``ln1``; off by default)."""
        self.cfg.use_hook_mlp_in = bool(use_hook_mlp_in)

    def set_attention_impl(self, impl: str) -> None:
        """How attention is computed: ``"auto"`` (default), ``"sdpa"`` or ``"explicit"``.

        ``"auto"`` uses ``torch.nn.functional.scaled_dot_product_attention`` (the pattern is never
        materialised: less memory, fused kernels on GPU) unless a hook is attached to
        ``blocks.{l}.attn.hook_attn_scores`` or ``hook_pattern``, which switches that layer to the
        explicit ``softmax(q kᵀ / √d_head + mask) v`` so the hook fires. ``"explicit"`` always computes
        the pattern (a reference); ``"sdpa"`` never does, and a pattern hook is then an ``InputError``.
        Results agree to float rounding (tested: 1e-6 in float32, 1e-12 in float64).

        Example:
            >>> ce.set_attention_impl("explicit")
            >>> _, cache = ce.run_with_cache(batch)  # the pattern is computed and cached
            >>> cache["blocks.0.attn.hook_pattern"].shape  # [batch, head, query pos, key pos]
            torch.Size([2, 12, 22, 22])
            >>> ce.set_attention_impl("auto")  # back to the default
        """
        if impl not in ATTENTION_IMPLS:
            raise InputError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.cfg.attn_impl = impl

    # -- pieces of the forward pass ------------------------------------------------------------
    def word_embeddings(self, input_ids: Tokens) -> Float[Tensor, "batch pos d_embed"]:
        """``W_E[input_ids]`` (the input that Integrated Gradients interpolates)."""
        return F.embedding(input_ids, self.embed.W_E)

    def embed_tokens(
        self,
        input_ids: Tokens | None,
        token_type_ids: Tokens | None,
        input_embeds: Float[Tensor, "batch pos d_embed"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
        attention_mask: Mask | None = None,
    ) -> Resid:
        """Embedding output: LayerNorm(word + token type + position), projected to ``d_model`` if needed.

        Families without absolute positions (DeBERTa-v3) add none (``hook_pos_embed`` is zero); those
        with ``cfg.mask_embeddings`` (DeBERTa) multiply the output by ``attention_mask``.

        ``position_ids`` (``0``-based, the family's offset is added) default to ``0 .. pos-1``; explicit
        ones let aligned inputs (``interventions.perturb``) keep every real token's position while
        masked slots are inserted.

        Word embeddings passed in a wider float dtype than the model (float32 into a bf16 model, as
        NIG's interpolated inputs are) are summed and normalised in that dtype and cast to the model's
        dtype only after the embedding LayerNorm, so nearby interpolation points stay distinct.
        """
        if input_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids (or a batch) or input_embeds")
            input_embeds = self.word_embeddings(input_ids)
        cfg = self.cfg
        n_pos = input_embeds.shape[1]
        if n_pos > cfg.n_ctx:
            raise InputError(f"input has {n_pos} positions; the model has {cfg.n_ctx}: truncate it")
        word = self.hook_embed(input_embeds)
        wide = word.dtype if word.dtype.itemsize > cfg.dtype.itemsize else cfg.dtype
        if cfg.positional_embedding_type == "rotary":  # positions rotate queries and keys in the blocks
            if position_ids is not None:
                self._check_position_ids(position_ids, word)
            return self.hook_full_embed(self.embed.project(word.to(wide)).to(cfg.dtype))
        if position_ids is None:
            pos = self.embed.positions(n_pos, cfg.position_offset).unsqueeze(0).expand(word.shape[0], -1, -1)
        else:
            self._check_position_ids(position_ids, word)
            pos = (
                word.new_zeros(word.shape)
                if self.embed.W_pos is None
                else F.embedding(position_ids + cfg.position_offset, self.embed.W_pos)
            )
        pos = self.hook_pos_embed(pos)
        if token_type_ids is None or cfg.n_token_types == 0:
            token_type_ids = torch.zeros(word.shape[:2], dtype=torch.long, device=word.device)
        tt = self.hook_token_type_embed(F.embedding(token_type_ids, self.embed.W_token_type))
        x = self.embed.project(word.to(wide) + tt.to(wide) + pos.to(wide))
        if cfg.mask_embeddings and attention_mask is not None:
            x = x * attention_mask.unsqueeze(-1).to(x.dtype)
        return self.hook_full_embed(x.to(cfg.dtype))

    def _check_position_ids(self, position_ids: Tensor, word: Tensor) -> None:
        if position_ids.shape != word.shape[:2]:
            raise InputError(
                f"position_ids has shape {tuple(position_ids.shape)}; expected [batch, pos] = {tuple(word.shape[:2])}"
            )
        if int(position_ids.max()) >= self.cfg.n_ctx or int(position_ids.min()) < 0:
            raise InputError(f"position_ids must be in 0..{self.cfg.n_ctx - 1} (the model's positions)")

    @staticmethod
    def additive_mask(attention_mask: Tensor | None, like: Tensor) -> Float[Tensor, "batch 1 1 pos"]:
        """``0`` where attended, the dtype's minimum where padded (as Hugging Face)."""
        if attention_mask is None:
            return torch.zeros(like.shape[0], 1, 1, like.shape[1], dtype=like.dtype, device=like.device)
        m = attention_mask[:, None, None, :].to(like.dtype)
        return (1.0 - m) * torch.finfo(like.dtype).min

    def _layer_range(self, start_at_layer: int | None, stop_at_layer: int | None) -> tuple[int, int]:
        n = self.cfg.n_layers
        start = 0 if start_at_layer is None else start_at_layer
        stop = n if stop_at_layer is None else stop_at_layer
        if start < 0:
            start += n
        if stop < 0:
            stop += n
        if not 0 <= start <= stop <= n:
            raise InputError(
                f"start_at_layer={start_at_layer}, stop_at_layer={stop_at_layer} do not give "
                f"0 <= start <= stop <= n_layers={n}"
            )
        return start, stop

    def encoder_forward(
        self,
        input_ids: Tokens | None = None,
        token_type_ids: Tokens | None = None,
        attention_mask: Mask | None = None,
        *,
        input_embeds: Float[Tensor, "batch pos d_embed"] | None = None,
        residual: Resid | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        position_ids: Int[Tensor, "batch pos"] | None = None,
    ) -> Resid:
        """Residual stream after the requested blocks (before block ``stop_at_layer``).

        ``position_ids`` (default ``0 .. pos-1``) feed the absolute position table (at the embeddings)
        and, for families whose blocks use positions (ModernBERT's rotary, DeBERTa-v2's relative
        attention: what the embedding's ``block_inputs`` gives), every block: pass the batch's own with
        ``start_at_layer`` when it has explicit ones (aligned inputs). A full forward
        (``stop_at_layer=None``) of a pre-LN family ends with its final norm (``ln_final``).
        """
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        if start > 0:
            if residual is None:
                raise InputError(f"start_at_layer={start} needs residual=[batch, pos, d_model] (resid_pre)")
            resid = residual
        else:
            resid = (
                residual
                if residual is not None
                else self.embed_tokens(input_ids, token_type_ids, input_embeds, position_ids, attention_mask)
            )
        mask = self.additive_mask(attention_mask, resid)
        extra = self.embed.block_inputs(attention_mask, position_ids, resid) if stop > start else {}
        for layer in range(start, stop):
            resid = run_block(self, layer, self.blocks[layer], resid, mask, **extra)
        if stop_at_layer is None and self.ln_final is not None:  # a full forward: the final norm
            resid = self.ln_final(resid)
        return resid

    def _encode_batch(
        self,
        batch: Any,
        batch_type: type,
        token_type_ids: Tensor | None,
        attention_mask: Tensor | None,
        **forward_kwargs: Any,
    ) -> tuple[Resid, Tensor | None]:
        """(residual stream, attention mask) of a ``batch_type`` batch or of raw ``input_ids``."""
        input_ids = batch
        if isinstance(batch, batch_type):
            b: Any = batch
            input_ids, token_type_ids, attention_mask = b.input_ids, b.token_type_ids, b.attention_mask
            if getattr(b, "position_ids", None) is not None and "position_ids" not in forward_kwargs:
                forward_kwargs["position_ids"] = b.position_ids
        # hooks that need the batch (token groups, a baseline input) read it from this context
        with forward_context(self, batch if isinstance(batch, batch_type) else None):
            resid = self.encoder_forward(input_ids, token_type_ids, attention_mask, **forward_kwargs)
        return resid, attention_mask

    def run_sorted(self, batch: Any, *, batch_size: int, trailing: tuple[int, ...] = ()) -> Tensor:
        """``self(batch)`` in chunks of ``batch_size`` rows, longest first, returned in input order (CPU)."""
        return run_sorted(self, batch, batch_size=batch_size, trailing=trailing)

    # -- TransformerLens API -------------------------------------------------------------------
    @overload
    def run_with_cache(
        self, *model_args: Any, return_cache_object: Literal[True] = True, **kwargs: Any
    ) -> tuple[Any, EncoderActivationCache]: ...

    @overload
    def run_with_cache(
        self, *model_args: Any, return_cache_object: Literal[False], **kwargs: Any
    ) -> tuple[Any, dict[str, Tensor]]: ...

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any
    ) -> tuple[Any, EncoderActivationCache | dict[str, Tensor]]:
        """Run and cache activations; returns ``(output, EncoderActivationCache)`` (a dict if asked).

        The cache is TransformerLens' ``ActivationCache`` except that the pre-LN-only decompositions
        raise ``PostLayerNormError`` (see ``mechir_nig.models.cache``).
        """
        out, cache = super().run_with_cache(*model_args, **kwargs)
        if return_cache_object:
            return out, EncoderActivationCache(
                cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False)
            )
        return out, cache

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"{type(self).__name__}(architecture={c.architecture!r}, n_layers={c.n_layers}, "
            f"n_heads={c.n_heads}, d_model={c.d_model}, d_mlp={c.d_mlp}, n_labels={c.n_labels})"
        )
