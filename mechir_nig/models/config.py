"""Configuration of the hooked BERT encoder (TransformerLens field names)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mechir_nig.errors import UnsupportedArchitectureError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass
class EncoderConfig:
    """Shape and numerics of a post-LN BERT encoder.

    Field names follow TransformerLens (``n_layers``, ``d_model``, ``d_mlp`` ...), so code written for
    ``HookedTransformerConfig`` reads the same.
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    d_vocab: int
    n_ctx: int = 512
    n_token_types: int = 2
    act_fn: str = "gelu"
    eps: float = 1e-12
    pad_token_id: int = 0
    n_labels: int = 0  # 0 for a bare encoder (bi-encoder), 1 or 2 for a cross-encoder head
    model_name: str = "bert"
    attn_only: bool = False
    dtype: torch.dtype = torch.float32
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads != 0:
            raise UnsupportedArchitectureError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "check hidden_size and num_attention_heads in config.json"
            )
        if self.act_fn not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"hidden_act={self.act_fn!r} is not supported; use one of {SUPPORTED_ACTIVATIONS}"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def acc_dtype(self) -> torch.dtype:
        """Dtype of outputs and accumulators: float64 for float64 models, else float32 (bf16/fp16 too)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @classmethod
    def from_hf(cls, hf: Any, *, model_name: str = "bert", n_labels: int = 0) -> EncoderConfig:
        """Build from a ``transformers.BertConfig`` (or its ``to_dict()``)."""
        d = hf if isinstance(hf, dict) else hf.to_dict()
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise UnsupportedArchitectureError(
                f"model_type={model_type!r} is not supported; mechir_nig loads BERT checkpoints "
                "(BertForSequenceClassification cross-encoders, BertModel bi-encoders)"
            )
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise UnsupportedArchitectureError(
                f"position_embedding_type={pos_type!r} is not supported; only 'absolute' BERT positions are"
            )
        return cls(
            n_layers=d["num_hidden_layers"],
            n_heads=d["num_attention_heads"],
            d_model=d["hidden_size"],
            d_mlp=d["intermediate_size"],
            d_vocab=d["vocab_size"],
            n_ctx=d.get("max_position_embeddings", 512),
            n_token_types=d.get("type_vocab_size", 2),
            act_fn=d.get("hidden_act", "gelu"),
            eps=d.get("layer_norm_eps", 1e-12),
            pad_token_id=d.get("pad_token_id") or 0,
            n_labels=n_labels,
            model_name=model_name,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        return out
