"""LayerNorm with TransformerLens parameter and hook names (``w``, ``b``; ``hook_scale``, ``hook_normalized``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig.models.config import EncoderConfig


class LayerNorm(nn.Module):
    """``w * (x − mean(x)) * scale + b`` with ``scale = 1/sqrt(var(x) + eps)``, TransformerLens names.

    Hooks: ``hook_scale`` ``[*batch, 1]``: the multiplier ``1/sqrt(var + eps)`` of each vector (as the
    decoder's and monoT5's RMSNorm; TransformerLens' own ``hook_scale`` holds its inverse, the divisor
    ``sqrt(var + eps)``); ``hook_normalized`` ``[*batch, d]``: the output (after ``w`` and ``b``, as in
    TransformerLens). Writing ``hook_scale`` (patching it, freezing it at another run's value) makes the
    LayerNorm the affine map ``w * (x − mean(x)) * scale + b`` of its input.

    Without a hook on ``hook_scale`` the LayerNorm is ``torch.nn.functional.layer_norm`` (one fused
    kernel); with one it is computed step by step (in at least float32, as the fused kernel does) so the
    hook can read and write the scale. Both agree to float rounding (1e-7 in float32, 1e-16 in float64).

    An input of a wider float dtype than the weights (float32 into a bf16 model) is normalised in the
    input's dtype: the embedding LayerNorm of NIG's interpolated inputs keeps full precision.

    Example:
        >>> from mechir_nig.models.config import EncoderConfig
        >>> ln = LayerNorm(EncoderConfig(n_layers=1, n_heads=1, d_model=4, d_mlp=4, d_vocab=4, dtype=torch.float64))
        >>> x = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]], dtype=torch.float64)  # [batch, pos, d_model]
        >>> scales = []
        >>> h = ln.hook_scale.add_hook(lambda s, hook: scales.append(s))
        >>> y = ln(x)
        >>> round(float(scales[0]), 6) == round(1 / float(x.var(-1, unbiased=False) + 1e-12) ** 0.5, 6)
        True
        >>> torch.allclose(y, torch.nn.functional.layer_norm(x, (4,), eps=1e-12))
        True
    """

    def __init__(self, cfg: EncoderConfig, width: int | None = None):
        super().__init__()
        n = width or cfg.d_model
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(n, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(n, dtype=cfg.dtype))
        self.hook_scale = HookPoint()  # [*batch, 1]  1/sqrt(var + eps)
        self.hook_normalized = HookPoint()  # [*batch, d]  the output

    def forward(self, x: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch d"]:
        w: Tensor = self.w
        b: Tensor = self.b
        if x.dtype != w.dtype:
            w, b = w.to(x.dtype), b.to(x.dtype)
        if not self.hook_scale.has_hooks():
            return self.hook_normalized(F.layer_norm(x, (x.shape[-1],), w, b, self.eps))
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        centred = wide - wide.mean(-1, keepdim=True)
        scale = self.hook_scale(torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps))
        out = centred * scale.to(wide.dtype) * w.to(wide.dtype) + b.to(wide.dtype)
        return self.hook_normalized(out.to(x.dtype))
