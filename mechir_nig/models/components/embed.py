"""Embedding tables: word, position and token type, the embedding LayerNorm and ELECTRA's projection."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from mechir_nig._types import Resid
from mechir_nig.models.components.layer_norm import LayerNorm
from mechir_nig.models.config import EncoderConfig


class Embed(nn.Module):
    """Word, position and token-type tables (``d_embed`` wide) and the embedding LayerNorm.

    When ``d_embed != d_model`` (ELECTRA's ``embedding_size``) the normalised embedding is projected
    to ``d_model`` by ``W_proj`` / ``b_proj`` (HF ``embeddings_project``). Families without token
    types (``n_token_types == 0``) hold a single zero row, so the sum is unchanged. Without absolute
    positions (``cfg.position_biased_input`` false) there is no ``W_pos``.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        dt, de = cfg.dtype, int(cfg.d_embed or cfg.d_model)
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, de, dtype=dt))
        self.W_pos: nn.Parameter | None = (  # None: no absolute positions (DeBERTa-v3)
            nn.Parameter(torch.empty(cfg.n_positions, de, dtype=dt)) if cfg.position_biased_input else None
        )
        self.W_token_type = nn.Parameter(torch.empty(max(cfg.n_token_types, 1), de, dtype=dt))
        self.ln = LayerNorm(cfg, width=de)
        self.W_proj: nn.Parameter | None = None
        self.b_proj: nn.Parameter | None = None
        if de != cfg.d_model:
            self.W_proj = nn.Parameter(torch.empty(cfg.d_model, de, dtype=dt))  # nn.Linear layout
            self.b_proj = nn.Parameter(torch.zeros(cfg.d_model, dtype=dt))

    def project(self, x: Float[Tensor, "batch pos d_embed"]) -> Resid:
        """Normalise the summed embeddings and project them to ``d_model`` where the family does."""
        x = self.ln(x)
        if self.W_proj is not None:
            w: Tensor = self.W_proj
            b: Tensor | None = self.b_proj
            if x.dtype != w.dtype and b is not None:
                w, b = w.to(x.dtype), b.to(x.dtype)
            x = F.linear(x, w, b)
        return x

    def positions(self, n_pos: int, offset: int) -> Float[Tensor, "pos d_embed"]:
        if self.W_pos is None:
            return self.W_E.new_zeros(n_pos, self.W_E.shape[1])
        return self.W_pos[offset : offset + n_pos]

    def block_inputs(
        self, attention_mask: Tensor | None, position_ids: Tensor | None, resid: Resid
    ) -> dict[str, Any]:
        """Extra keyword inputs every block's attention takes (none for absolute positions; relative
        positions for DeBERTa-v2, see ``DebertaEmbed``), computed once per forward."""
        return {}

    @property
    def device(self) -> torch.device:
        return self.W_E.device
