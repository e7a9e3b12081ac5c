"""DeBERTa-v2/v3 components: relative positions (log buckets) and disentangled attention.

As Hugging Face's ``modeling_deberta_v2.py``: the attention score of query ``i`` and key ``j`` is

``q_i·k_j / s  +  q_i·K_r[δ(i, j)] / s  +  k_j·Q_r[-δ(j, i)] / s``  (content, c2p, p2c)

with ``s = sqrt(d_head · (1 + #pos_att_type))``, ``δ(i, j)`` the log-bucketed relative position
``pos_i − pos_j`` shifted by the span and clipped to ``[0, 2·span)``, and ``K_r``/``Q_r`` the shared
relative embeddings (after their LayerNorm with ``norm_rel_ebd``) projected by the attention's own
key/query weights (``share_att_key``) or by separate ones. Relative positions come from the position
ids, so aligned inputs with masked slots inserted (explicit ``position_ids``) keep every real token's
distances.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Resid
from mechir_nig.models.components.attention import Attention
from mechir_nig.models.components.embed import Embed
from mechir_nig.models.components.layer_norm import LayerNorm
from mechir_nig.models.config import EncoderConfig


def relative_span(cfg: EncoderConfig) -> int:
    """Relative distances each side of 0 (``position_buckets``, else ``max_relative_positions``)."""
    return cfg.position_buckets if cfg.position_buckets > 0 else cfg.max_relative_positions


def log_bucket_position(relative_pos: Tensor, bucket_size: int, max_position: int) -> Tensor:
    """HF ``make_log_bucket_position``: distances under ``bucket_size // 2`` kept, longer ones binned
    logarithmically up to ``max_position`` (same operations, so the same buckets).

    Example:
        >>> log_bucket_position(torch.tensor([0, 3, -5, 40]), 8, 64).tolist()
        [0.0, 3.0, -5.0, 7.0]
    """
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid),
        torch.tensor(mid - 1).type_as(relative_pos),
        torch.abs(relative_pos),
    )
    log_pos = (
        torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1))
        + mid
    )
    return torch.where(abs_pos <= mid, relative_pos.type_as(log_pos), log_pos * sign)


def relative_positions(
    position_ids: Int[Tensor, "batch pos"], cfg: EncoderConfig
) -> Int[Tensor, "batch q k"]:
    """``pos_q − pos_k`` per row, log-bucketed where the config has buckets."""
    rel = position_ids[:, :, None] - position_ids[:, None, :]
    if cfg.position_buckets > 0 and cfg.max_relative_positions > 0:
        rel = log_bucket_position(rel, cfg.position_buckets, cfg.max_relative_positions)
    return rel.long()


class DebertaEmbed(Embed):
    """``Embed`` plus DeBERTa's relative embeddings ``W_rel`` ``[2·span, d_model]`` and their LayerNorm
    ``rel_ln`` (HF ``encoder.rel_embeddings`` / ``encoder.LayerNorm``), shared by every block."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.cfg = cfg
        self.W_rel: nn.Parameter | None = None
        self.rel_ln: LayerNorm | None = None
        if cfg.relative_attention:
            self.W_rel = nn.Parameter(torch.empty(2 * relative_span(cfg), cfg.d_model, dtype=cfg.dtype))
            if cfg.norm_rel_ebd:
                self.rel_ln = LayerNorm(cfg)

    def block_inputs(
        self, attention_mask: Tensor | None, position_ids: Tensor | None, resid: Resid
    ) -> dict[str, Any]:
        """``keep`` ``[batch, 1, q, k]`` (both query and key attended, as HF's 2-D mask),
        ``rel_pos`` ``[batch, q, k]`` from the position ids (default ``0 .. pos-1``) and ``rel_emb``."""
        b, n = resid.shape[:2]
        m = (
            torch.ones(b, n, dtype=torch.bool, device=resid.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        out: dict[str, Any] = {"keep": m[:, None, :, None] & m[:, None, None, :]}
        if self.W_rel is not None:
            if position_ids is None:
                position_ids = torch.arange(n, device=resid.device).expand(b, n)
            out["rel_pos"] = relative_positions(position_ids, self.cfg)
            rel: Tensor = self.W_rel
            out["rel_emb"] = rel if self.rel_ln is None else self.rel_ln(rel[None])[0]
        return out


class DisentangledAttention(Attention):
    """DeBERTa-v2 attention: content, content-to-position (``c2p``) and position-to-content (``p2c``).

    Same weights and hooks as ``Attention`` (``W_QKV``, ``W_O``; ``hook_q/k/v/z/result``), plus the
    relative terms ``hook_c2p`` and ``hook_p2c`` ``[batch, n_heads, query_pos, key_pos]`` (already
    divided by the scale). ``hook_attn_scores`` is the full score (content + c2p + p2c, masked) and
    ``hook_pattern`` its softmax. The pattern is always materialised (the relative bias is a full
    ``[batch, n_heads, q, k]`` tensor anyway), so ``attn_impl`` does not change anything here. Without
    ``share_att_key`` the relative embeddings have their own projections ``W_pos_K``/``b_pos_K`` (c2p)
    and ``W_pos_Q``/``b_pos_Q`` (p2c).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        types = cfg.pos_att_type
        self.c2p, self.p2c = "c2p" in types, "p2c" in types
        factor = 1 + self.c2p + self.p2c
        # as HF: sqrt computed in float32 (scaled_size_sqrt), whatever the model's dtype
        self.scale_div = float(torch.sqrt(torch.tensor(cfg.d_head, dtype=torch.float32) * factor))
        self.scale = 1.0 / self.scale_div
        d, dt = cfg.d_model, cfg.dtype
        self.W_pos_K: nn.Parameter | None = None
        self.b_pos_K: nn.Parameter | None = None
        self.W_pos_Q: nn.Parameter | None = None
        self.b_pos_Q: nn.Parameter | None = None
        if cfg.relative_attention and not cfg.share_att_key:
            if self.c2p:
                self.W_pos_K = nn.Parameter(torch.empty(d, d, dtype=dt))
                self.b_pos_K = nn.Parameter(torch.zeros(d, dtype=dt))
            if self.p2c:
                self.W_pos_Q = nn.Parameter(torch.empty(d, d, dtype=dt))
                self.b_pos_Q = nn.Parameter(torch.zeros(d, dtype=dt))
        self.hook_c2p = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_p2c = HookPoint()  # [batch, n_heads, query_pos, key_pos]

    def _project_rel(self, rel_emb: Tensor, which: int) -> Float[Tensor, "n_heads rel d_head"]:
        """Relative embeddings through the query (``which=0``) or key (``1``) projection."""
        d = self.cfg.d_model
        if self.cfg.share_att_key:
            w, b = self.W_QKV[which * d : (which + 1) * d], self.b_QKV[which * d : (which + 1) * d]
        else:
            w_, b_ = (self.W_pos_Q, self.b_pos_Q) if which == 0 else (self.W_pos_K, self.b_pos_K)
            assert w_ is not None and b_ is not None  # created for the terms pos_att_type names
            w, b = w_, b_
        return rearrange(F.linear(rel_emb, w, b), "r (n h) -> n r h", n=self.cfg.n_heads)

    def forward(
        self,
        x: Resid,
        additive_mask: Float[Tensor, "batch 1 1 pos"],
        *,
        keep: Tensor | None = None,
        rel_pos: Tensor | None = None,
        rel_emb: Tensor | None = None,
    ) -> Resid:
        qh, kh, vh = (t.transpose(1, 2) for t in self.qkv(x))  # [batch, n_heads, pos, d_head]
        scale = self.scale_div
        scores = torch.matmul(qh, kh.transpose(-1, -2) / scale)
        if self.cfg.relative_attention:
            if rel_pos is None or rel_emb is None:
                raise ValueError("relative attention needs rel_pos and rel_emb (DebertaEmbed.block_inputs)")
            span = relative_span(self.cfg)
            rel_emb = rel_emb[: 2 * span]
            b, n_heads, n = qh.shape[:3]
            bias: Tensor | None = None
            if self.c2p:
                c2p = torch.matmul(qh, self._project_rel(rel_emb, 1).transpose(-1, -2))  # [b, h, q, 2span]
                idx = torch.clamp(rel_pos + span, 0, 2 * span - 1)[:, None].expand(b, n_heads, n, n)
                bias = self.hook_c2p(torch.gather(c2p, -1, idx) / scale)
            if self.p2c:
                p2c = torch.matmul(kh, self._project_rel(rel_emb, 0).transpose(-1, -2))  # [b, h, k, 2span]
                idx = torch.clamp(-rel_pos + span, 0, 2 * span - 1)[:, None].expand(b, n_heads, n, n)
                term = self.hook_p2c(torch.gather(p2c, -1, idx).transpose(-1, -2) / scale)
                bias = term if bias is None else bias + term
            if bias is not None:
                scores = scores + bias
        if keep is None:
            scores = scores + additive_mask
        else:
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        scores = self.hook_attn_scores(scores)  # [batch, n_heads, query_pos, key_pos]
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        return self.output(torch.matmul(pattern, vh))


__all__ = ["DebertaEmbed", "DisentangledAttention", "log_bucket_position", "relative_positions"]
