"""Post-LN transformer block (BERT, ELECTRA, RoBERTa/XLM-R and DistilBERT share it)."""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Resid
from mechir_nig.models.components.attention import Attention
from mechir_nig.models.components.layer_norm import LayerNorm
from mechir_nig.models.components.mlp import MLP
from mechir_nig.models.config import EncoderConfig


class EncoderBlock(nn.Module):
    """Post-LN block, hook names as in TransformerLens' BERT block.

    ``hook_mlp_in`` (opt-in, ``cfg.use_hook_mlp_in``) sits where TransformerLens puts it in its BERT
    block: on ``resid_mid`` before ``ln1``, so editing it edits what ``ln1`` normalises.

    ``attention`` is the family's attention class (BERT's ``Attention``, DeBERTa-v2's
    ``DisentangledAttention``); ``attn_inputs`` (what the family's ``Embed.block_inputs`` gives, e.g.
    relative positions) are passed on to it. ``layer`` is the block's index (the signature of
    ``Architecture.block``; families whose blocks differ by layer use it).
    """

    def __init__(self, cfg: EncoderConfig, layer: int = 0, attention: type[Attention] = Attention):
        super().__init__()
        self.cfg = cfg
        self.attn = attention(cfg)
        self.ln1 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]  (resid_pre + attn_out, before ln1)
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]  (only with cfg.use_hook_mlp_in)
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]  (before ln2)
        self.hook_normalized_resid_post = HookPoint()  # [batch, pos, d_model]  (block output)

    def forward(
        self, resid_pre: Resid, additive_mask: Float[Tensor, "batch 1 1 pos"], **attn_inputs: Any
    ) -> Resid:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(resid_pre, additive_mask, **attn_inputs))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        if self.cfg.use_hook_mlp_in:
            resid_mid = self.hook_mlp_in(resid_mid.clone())
        normalized_mid = self.ln1(resid_mid)
        mlp_out = self.hook_mlp_out(self.mlp(normalized_mid))
        resid_post = self.hook_resid_post(normalized_mid + mlp_out)
        return self.hook_normalized_resid_post(self.ln2(resid_post))
