"""Dense layer on the first token (BERT pooler, the first half of RoBERTa/ELECTRA/DistilBERT heads)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Embeddings, Resid
from mechir_nig.models.components.mlp import activation
from mechir_nig.models.config import EncoderConfig


class Pooler(nn.Module):
    """``act(W h_0 + b)`` on the first token; ``act`` is ``cfg.pooler_act``.

    BERT's pooler (``tanh``), RoBERTa/XLM-R ``classifier.dense`` (``tanh``), ELECTRA
    ``classifier.dense`` (``gelu``) and DistilBERT ``pre_classifier`` (``relu``) are all this layer,
    so every family's head fires ``pooler.hook_pooler_out``.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_model, cfg.d_model, dtype=cfg.dtype))  # nn.Linear layout
        self.b = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.act = activation(cfg.pooler_act)
        self.hook_pooler_out = HookPoint()  # [batch, d_model]

    def pool(self, resid: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """What the head reads of ``resid`` ``[..., pos, d_model]``: the first token (``attention_mask`` is
        unused here; heads that pool over tokens read it). Leading axes are kept (``[..., d_model]``)."""
        return resid[..., 0, :]

    def forward(self, resid: Resid, attention_mask: Tensor | None = None) -> Embeddings:
        return self.hook_pooler_out(self.act(F.linear(self.pool(resid, attention_mask), self.W, self.b)))
