"""ModernBERT's pre-LN components: the normalised word embedding, rotary attention with a sliding
window on local layers, the GeGLU MLP, the pre-LN block, the pooling head and the final norm.

Hook names follow TransformerLens' pre-LN blocks: ``hook_resid_pre`` -> ``ln1`` -> attention
(``attn.hook_q``/``hook_k`` before rotation, ``attn.hook_rot_q``/``hook_rot_k`` after) ->
``hook_attn_out`` -> ``hook_resid_mid`` -> ``ln2`` -> MLP (``mlp.hook_pre``: the activation's input,
``mlp.hook_pre_linear``: the gate factor, ``mlp.hook_post``: their product, every neuron) ->
``hook_mlp_out`` -> ``hook_resid_post`` (the block's output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Embeddings, Resid
from mechir_nig.models.components.attention import Attention
from mechir_nig.models.components.layer_norm import LayerNorm
from mechir_nig.models.components.mlp import activation
from mechir_nig.models.components.pooler import Pooler
from mechir_nig.models.config import EncoderConfig


class NormedEmbed(nn.Module):
    """Word embeddings ``W_E`` and their LayerNorm (``ln``); no position or token-type tables
    (positions enter as rotations of queries and keys)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))
        self.ln = LayerNorm(cfg)

    def project(self, x: Float[Tensor, "batch pos d_model"]) -> Resid:
        """The embedding output: the LayerNorm of the word embeddings."""
        return self.ln(x)

    def block_inputs(
        self, attention_mask: Tensor | None, position_ids: Tensor | None, resid: Resid
    ) -> dict[str, Tensor]:
        """What every block takes besides the residual and mask: the positions its rotary attention
        rotates by (explicit ones of an aligned input; the block defaults to ``0 .. pos-1``)."""
        return {} if position_ids is None else {"position_ids": position_ids}


def rotary_cos_sin(
    position_ids: Int[Tensor, "batch pos"], d_head: int, base: float
) -> tuple[Float[Tensor, "batch pos d_head"], Float[Tensor, "batch pos d_head"]]:
    """``cos`` and ``sin`` of the rotation angles, computed in float32 exactly as Hugging Face's
    ``ModernBertRotaryEmbedding`` (inverse frequencies ``base^(-2i/d_head)``, halves repeated)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d_head, 2, dtype=torch.float) / d_head))
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate(
    x: Float[Tensor, "batch pos n_heads d_head"], cos: Tensor, sin: Tensor
) -> Float[Tensor, "batch pos n_heads d_head"]:
    """``x cos + rotate_half(x) sin`` (the halves convention of Hugging Face's ``rotate_half``), in at
    least float32 (as Hugging Face, which rotates bf16 queries in float32) and returned in ``x``'s dtype."""
    wide = torch.promote_types(x.dtype, torch.float32)
    xw = x.to(wide)
    x1, x2 = xw.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    c, s = cos.to(wide)[:, :, None], sin.to(wide)[:, :, None]
    return (xw * c + rotated * s).to(x.dtype)


class RotaryAttention(Attention):
    """Multi-head attention with rotary queries and keys; a local layer attends only keys within
    ``cfg.window_size // 2`` positions (by position id, so aligned inputs with inserted masked slots keep
    each real token's window; with the default ``0..n-1`` ids this is Hugging Face's sliding window).

    Rotation uses ``cfg.rotary_base`` on global layers and ``cfg.rotary_base_local`` on local ones.
    Extra hooks: ``hook_rot_q`` and ``hook_rot_k`` ``[batch, pos, n_heads, d_head]`` (after rotation).
    """

    def __init__(self, cfg: EncoderConfig, local: bool):
        super().__init__(cfg)
        self.local = local
        base = cfg.rotary_base_local if local and cfg.rotary_base_local is not None else cfg.rotary_base
        self.base = float(base)
        self.hook_rot_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, n_heads, d_head]

    def forward(  # type: ignore[override]
        self,
        x: Resid,
        additive_mask: Float[Tensor, "batch 1 1 pos"],
        position_ids: Int[Tensor, "batch pos"],
    ) -> Resid:
        q, k, v = self.qkv(x)
        cos, sin = rotary_cos_sin(position_ids, self.cfg.d_head, self.base)
        q, k = self.hook_rot_q(rotate(q, cos, sin)), self.hook_rot_k(rotate(k, cos, sin))
        if self.local:
            half = int(self.cfg.window_size or 0) // 2
            far = (position_ids[:, :, None] - position_ids[:, None, :]).abs() > half  # [batch, q, k]
            additive_mask = additive_mask.masked_fill(far[:, None], torch.finfo(additive_mask.dtype).min)
        return self.attend(q, k, v, additive_mask)


class GatedMLP(nn.Module):
    """GeGLU feed-forward block: ``W_out (act(x W_gate) * (x W_in))``.

    Stored fused as Hugging Face's ``Wi`` (``W_in_lin`` ``[2 d_mlp, d_model]``: the activation's input
    rows, then the gate rows). TransformerLens views: ``W_gate`` (the activated half) and ``W_in`` (the
    linear half), each ``[d_model, d_mlp]``; ``W_out`` ``[d_mlp, d_model]``. Hooks ``[batch, pos, d_mlp]``:
    ``hook_pre`` (the activation's input), ``hook_pre_linear`` (the gate factor), ``hook_post``
    (their product: each MLP neuron, the input of ``W_out``).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_in_lin = nn.Parameter(torch.empty(2 * cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(2 * cfg.d_mlp, dtype=cfg.dtype))
        self.W_out_lin = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.act = activation(cfg.act_fn)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.W_in_lin[: self.cfg.d_mlp], "f m -> m f")

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.W_in_lin[self.cfg.d_mlp :], "f m -> m f")

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return rearrange(self.W_out_lin, "m f -> f m")

    def forward(self, x: Resid) -> Resid:
        pre, linear = F.linear(x, self.W_in_lin, self.b_in).chunk(2, dim=-1)
        pre, linear = self.hook_pre(pre), self.hook_pre_linear(linear)
        post = self.hook_post(self.act(pre) * linear)
        return F.linear(post, self.W_out_lin, self.b_out)


class PreLNBlock(nn.Module):
    """Pre-LN block: ``resid_mid = resid_pre + attn(ln1(resid_pre))``,
    ``resid_post = resid_mid + mlp(ln2(resid_mid))``; ``ln1`` is the identity in layer 0 (as Hugging
    Face's ``attn_norm``: the embedding is already normalised). Local or global attention by
    ``cfg.attn_types[layer]``. ``hook_mlp_in`` (opt-in, ``cfg.use_hook_mlp_in``) is ``resid_mid``
    before ``ln2``, as in TransformerLens.
    """

    def __init__(self, cfg: EncoderConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.ln1: nn.Module = LayerNorm(cfg) if layer > 0 else nn.Identity()
        local = bool(cfg.attn_types) and cfg.attn_types[layer] == "local"  # type: ignore[index]
        self.attn = RotaryAttention(cfg, local=local)
        self.ln2 = LayerNorm(cfg)
        self.mlp = GatedMLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]  (only with cfg.use_hook_mlp_in)
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]  (the block's output)

    def forward(
        self,
        resid_pre: Resid,
        additive_mask: Float[Tensor, "batch 1 1 pos"],
        position_ids: Int[Tensor, "batch pos"] | None = None,
    ) -> Resid:
        if position_ids is None:
            b, p = resid_pre.shape[:2]
            position_ids = torch.arange(p, device=resid_pre.device).expand(b, p)
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), additive_mask, position_ids))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)


class FinalNorm(LayerNorm):
    """The LayerNorm after the last block (``ln_final``): ``ln_final.hook_scale`` ``[batch, pos, 1]`` and
    ``ln_final.hook_normalized`` ``[batch, pos, d_model]`` as every :class:`LayerNorm`."""


class PoolingHead(Pooler):
    """ModernBERT's head before the classifier: pool (``cfg.classifier_pooling``: the first token, or
    the mean over attended tokens), then ``ln(act(W h + b))``; ``hook_pooler_out`` ``[batch, d_model]``."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__(cfg)
        self.pooling = cfg.classifier_pooling
        self.ln = LayerNorm(cfg)

    def pool(self, resid: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The first token of ``resid`` ``[..., pos, d_model]``, or (``pooling="mean"``) the mean over its
        attended tokens (``attention_mask`` ``[batch, pos]``; ``None``: every token)."""
        if self.pooling == "cls":
            return super().pool(resid, attention_mask)
        m = torch.ones(resid.shape[-2], device=resid.device) if attention_mask is None else attention_mask
        m = m.to(resid.dtype).unsqueeze(-1)
        return (resid * m).sum(-2) / m.sum(-2)

    def forward(self, resid: Resid, attention_mask: Tensor | None = None) -> Embeddings:
        return self.hook_pooler_out(
            self.ln(self.act(F.linear(self.pool(resid, attention_mask), self.W, self.b)))
        )
