"""Components of a post-LN BERT encoder, every activation behind a TransformerLens ``HookPoint``.

Weights are stored in ``nn.Linear`` layout (``[d_out, d_in]``) so each projection is one fused GEMM;
the TransformerLens layouts (``W_Q: [n_heads, d_model, d_head]``, ``W_in: [d_model, d_mlp]`` ...) are
exposed as einops views of the same storage, so editing them edits the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig.models.config import EncoderConfig


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    return F.relu


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens parameter names ``w`` and ``b``."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention.

    When nothing is hooked on ``hook_attn_scores`` or ``hook_pattern`` the pattern is never
    materialised (``scaled_dot_product_attention``); hooking either switches to the explicit path.
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

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        additive_mask: Float[Tensor, "batch 1 1 pos"],
    ) -> Float[Tensor, "batch pos d_model"]:
        n_heads, d_head = self.cfg.n_heads, self.cfg.d_head
        qkv = F.linear(x, self.W_QKV, self.b_QKV)
        q, k, v = rearrange(qkv, "b p (three n h) -> three b p n h", three=3, n=n_heads).unbind(0)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, n_heads, pos, d_head]
        if self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks():
            scores = torch.matmul(qh, kh.transpose(-1, -2)) * self.scale + additive_mask
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
            z = torch.matmul(pattern, vh)
        else:
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=additive_mask.to(qh.dtype))
        z = self.hook_z(z.transpose(1, 2))
        return F.linear(z.reshape(*z.shape[:2], n_heads * d_head), self.W_O_lin, self.b_O)


class MLP(nn.Module):
    """Feed-forward block; ``hook_post`` holds every MLP neuron (after the activation)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_in_lin = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out_lin = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.act = _activation(cfg.act_fn)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.W_in_lin, "f m -> m f")

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return rearrange(self.W_out_lin, "m f -> f m")

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(F.linear(x, self.W_in_lin, self.b_in))
        post = self.hook_post(self.act(pre))
        return F.linear(post, self.W_out_lin, self.b_out)


class BertBlock(nn.Module):
    """Post-LN transformer block, hook names as in TransformerLens' BERT block."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.ln1 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]  (resid_pre + attn_out, before ln1)
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]  (before ln2)
        self.hook_normalized_resid_post = HookPoint()  # [batch, pos, d_model]  (block output)

    def forward(
        self, resid_pre: Float[Tensor, "batch pos d_model"], additive_mask: Float[Tensor, "batch 1 1 pos"]
    ) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(resid_pre, additive_mask))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        normalized_mid = self.ln1(resid_mid)
        mlp_out = self.hook_mlp_out(self.mlp(normalized_mid))
        resid_post = self.hook_resid_post(normalized_mid + mlp_out)
        return self.hook_normalized_resid_post(self.ln2(resid_post))


class Pooler(nn.Module):
    """BERT pooler: ``tanh(W h_[CLS] + b)``."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model, dtype=cfg.dtype))  # nn.Linear layout
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pooler_out = HookPoint()  # [batch, d_model]

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        return self.hook_pooler_out(torch.tanh(F.linear(resid[:, 0], self.W, self.b)))
