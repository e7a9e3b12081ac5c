"""The classification layer of a cross-encoder (after the pooler)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Embeddings, Logits
from mechir_nig.models.config import EncoderConfig


class ClassifierHead(nn.Module):
    """Linear classifier on the pooler output; ``hook_logits`` [batch, n_labels]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.n_labels, cfg.d_model, dtype=cfg.dtype))  # nn.Linear layout
        self.b = nn.Parameter(torch.zeros(cfg.n_labels, dtype=cfg.dtype))
        self.hook_logits = HookPoint()  # [batch, n_labels]

    def forward(self, pooled: Embeddings) -> Logits:
        return self.hook_logits(F.linear(pooled, self.W, self.b))
