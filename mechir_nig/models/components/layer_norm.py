"""LayerNorm with TransformerLens parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from mechir_nig.models.config import EncoderConfig


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens parameter names ``w`` and ``b``.

    An input of a wider float dtype than the weights (float32 into a bf16 model) is normalised in the
    input's dtype: the embedding LayerNorm of NIG's interpolated inputs keeps full precision.
    """

    def __init__(self, cfg: EncoderConfig, width: int | None = None):
        super().__init__()
        n = width or cfg.d_model
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(n, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(n, dtype=cfg.dtype))

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        w: Tensor = self.w
        b: Tensor = self.b
        if x.dtype != w.dtype:
            w, b = w.to(x.dtype), b.to(x.dtype)
        return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)
