"""Feed-forward block; ``hook_post`` holds every MLP neuron."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Resid
from mechir_nig.models.config import EncoderConfig


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function named in a config (``gelu`` exact, ``gelu_new``/tanh, ``relu``, ``tanh``)."""
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "tanh":
        return torch.tanh
    return F.relu


class MLP(nn.Module):
    """Feed-forward block; ``hook_post`` holds every MLP neuron (after the activation)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.W_in_lin = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out_lin = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.act = activation(cfg.act_fn)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return rearrange(self.W_in_lin, "f m -> m f")

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return rearrange(self.W_out_lin, "m f -> f m")

    def forward(self, x: Resid) -> Resid:
        pre = self.hook_pre(F.linear(x, self.W_in_lin, self.b_in))
        post = self.hook_post(self.act(pre))
        return F.linear(post, self.W_out_lin, self.b_out)
