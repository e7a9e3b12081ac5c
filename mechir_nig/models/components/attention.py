"""Bidirectional multi-head self-attention with TransformerLens hooks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Resid
from mechir_nig.errors import InputError
from mechir_nig.models.config import EncoderConfig


class Attention(nn.Module):
    """Bidirectional multi-head self-attention.

    Two paths give the same ``hook_z`` (to float rounding: 1e-7 in float32, 1e-15 in float64):

    - *SDPA*: ``torch.nn.functional.scaled_dot_product_attention`` with the additive mask (padding and
      the masked slots of aligned inputs); the pattern is never materialised, so neither
      ``hook_attn_scores`` nor ``hook_pattern`` fires.
    - *explicit*: ``softmax(q kᵀ / √d_head + mask) v`` with the scores and the pattern through their
      hooks.

    ``cfg.attn_impl`` picks (``model.set_attention_impl``): ``"auto"`` (default) takes SDPA unless a
    forward or backward hook is attached to ``hook_attn_scores`` or ``hook_pattern`` of this layer
    (``run_with_cache`` caching them, ``run_with_hooks``, ``hooks()``, a permanent hook), so every
    hook fires; ``"explicit"`` always materialises the pattern; ``"sdpa"`` never does and refuses a
    pattern hook (``InputError``) rather than silently not calling it.

    With ``cfg.use_attn_result`` each head's output is written to ``hook_result``
    ``[batch, pos, n_heads, d_model]`` (the heads' contributions before ``b_O``) and summed from there,
    so per-head patching edits what the block adds.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d, dt = cfg.d_model, cfg.dtype
        self.W_QKV = nn.Parameter(torch.empty(3 * d, d, dtype=dt))  # rows: (qkv n_heads d_head)
        self.b_QKV = nn.Parameter(torch.zeros(3 * d, dtype=dt))
        self.W_O_lin = nn.Parameter(torch.empty(d, d, dtype=dt))  # [d_model, (n_heads d_head)]
        self.b_O = nn.Parameter(torch.zeros(d, dtype=dt))
        self.scale = 1.0 / math.sqrt(cfg.d_head)
        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_v = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model]  (only with cfg.use_attn_result)

    def _tl_view(self, i: int) -> Tensor:
        d = self.cfg.d_model
        return rearrange(self.W_QKV[i * d : (i + 1) * d], "(n h) m -> n m h", n=self.cfg.n_heads)

    @property
    def W_Q(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._tl_view(0)

    @property
    def W_K(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._tl_view(1)

    @property
    def W_V(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self._tl_view(2)

    @property
    def W_O(self) -> Float[Tensor, "n_heads d_head d_model"]:
        return rearrange(self.W_O_lin, "m (n h) -> n h m", n=self.cfg.n_heads)

    def _tl_bias(self, i: int) -> Tensor:
        d = self.cfg.d_model
        return rearrange(self.b_QKV[i * d : (i + 1) * d], "(n h) -> n h", n=self.cfg.n_heads)

    @property
    def b_Q(self) -> Float[Tensor, "n_heads d_head"]:
        return self._tl_bias(0)

    @property
    def b_K(self) -> Float[Tensor, "n_heads d_head"]:
        return self._tl_bias(1)

    @property
    def b_V(self) -> Float[Tensor, "n_heads d_head"]:
        return self._tl_bias(2)

    def explicit_path(self) -> bool:
        """Whether this forward materialises the pattern (see the class docstring for the rule)."""
        impl = self.cfg.attn_impl
        hooked = self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()
        if hooked and impl == "sdpa":
            raise InputError(
                "a hook is attached to attn.hook_attn_scores or attn.hook_pattern, but the model is set to "
                "attention 'sdpa', which never computes the pattern: call model.set_attention_impl('auto') "
                "(or 'explicit') to run the hook"
            )
        return hooked or impl == "explicit"

    def forward(
        self,
        x: Resid,
        additive_mask: Float[Tensor, "batch 1 1 pos"],
    ) -> Resid:
        return self.attend(*self.qkv(x), additive_mask)

    def qkv(self, x: Resid) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``[batch, pos, n_heads, d_head]``, through their hooks."""
        qkv = F.linear(x, self.W_QKV, self.b_QKV)
        q, k, v = rearrange(qkv, "b p (three n h) -> three b p n h", three=3, n=self.cfg.n_heads).unbind(0)
        return self.hook_q(q), self.hook_k(k), self.hook_v(v)

    def attend(
        self,
        q: Float[Tensor, "batch pos n_heads d_head"],
        k: Float[Tensor, "batch pos n_heads d_head"],
        v: Float[Tensor, "batch pos n_heads d_head"],
        additive_mask: Float[Tensor, "batch 1 q_or_1 pos"],
    ) -> Resid:
        """``softmax(q kᵀ / √d_head + mask) v`` (explicit or SDPA, see the class docstring) and the output
        projection; ``additive_mask`` is ``[batch, 1, 1, key_pos]`` or ``[batch, 1, query_pos, key_pos]``."""
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, n_heads, pos, d_head]
        if self.explicit_path():
            scores = torch.matmul(qh, kh.transpose(-1, -2)) * self.scale + additive_mask
            scores = self.hook_attn_scores(scores)  # [batch, n_heads, query_pos, key_pos]
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))  # [batch, n_heads, query_pos, key_pos]
            z = torch.matmul(pattern, vh)
        else:
            mask = additive_mask.to(qh.dtype)  # [batch, 1, 1 or query_pos, key_pos], broadcast over heads
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)
        return self.output(z)

    def output(self, z: Float[Tensor, "batch n_heads pos d_head"]) -> Resid:
        """The heads' mixed values ``z`` through ``hook_z`` (and ``hook_result``), projected by ``W_O``."""
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        z = self.hook_z(z.transpose(1, 2))
        if self.cfg.use_attn_result:
            result = self.hook_result(
                einsum(z, self.W_O, "b p n h, n h m -> b p n m")
            )  # [batch, pos, n_heads, d_model]
            return result.sum(2) + self.b_O
        return F.linear(z.reshape(*z.shape[:2], n_heads * d_head), self.W_O_lin, self.b_O)
