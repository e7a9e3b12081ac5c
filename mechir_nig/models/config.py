"""Configuration of a hooked post-LN encoder (TransformerLens field names).

One config serves every supported family (BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT, DeBERTa-v2/v3); the family's
adapter in ``mechir_nig.models.architectures`` maps the Hugging Face ``config.json`` onto it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from mechir_nig.errors import InputError, UnsupportedArchitectureError

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
ATTENTION_IMPLS = ("auto", "sdpa", "explicit")
"""``auto``: ``scaled_dot_product_attention`` unless ``hook_attn_scores``/``hook_pattern`` is hooked;
``sdpa``: always (a pattern hook is an error); ``explicit``: always materialise the pattern."""
POOLER_ACTIVATIONS = ("tanh", "gelu", "relu")


@dataclass
class EncoderConfig:
    """Shape and numerics of a post-LN transformer encoder.

    Field names follow TransformerLens (``n_layers``, ``d_model``, ``d_mlp`` ...), so code written for
    ``HookedTransformerConfig`` reads the same. Family-specific fields:

    - ``d_embed``: width of the embedding tables (ELECTRA's ``embedding_size``; projected to
      ``d_model`` after the embedding LayerNorm). ``None`` means ``d_model``.
    - ``position_offset``: first position id of a sequence (RoBERTa/XLM-R: ``padding_idx + 1``);
      ``n_ctx`` counts usable positions, the table holds ``n_ctx + position_offset`` rows.
    - ``n_token_types``: rows of the token-type table; ``0`` for families without token types
      (DistilBERT), whose inputs' token types are ignored.
    - ``pooler_act``: activation of the classification head's dense layer (BERT's pooler and
      RoBERTa: ``tanh``; ELECTRA: ``gelu``; DistilBERT: ``relu``).
    - ``position_biased_input`` / ``mask_embeddings``: whether the absolute position table is added to the
      embedding (BERT: yes; DeBERTa-v3: no) and whether the embedding output is multiplied by the
      attention mask (DeBERTa).
    - ``relative_attention``, ``pos_att_type``, ``position_buckets``, ``max_relative_positions``,
      ``share_att_key``, ``norm_rel_ebd``: DeBERTa-v2/v3 disentangled attention, as in its
      ``config.json`` (``max_relative_positions`` resolved: ``max_position_embeddings`` where the file
      says ``-1``; ``norm_rel_ebd``: whether the relative embeddings pass a LayerNorm). The defaults are
      BERT's absolute positions.
    - ``use_attn_result`` / ``use_hook_mlp_in``: opt-in hooks, as in TransformerLens.
    - Pre-LN families with rotary positions (ModernBERT), named as in TransformerLens:
      ``positional_embedding_type`` (``"standard"``: a learned position table, BERT's; ``"rotary"``:
      no table, rotary queries and keys), ``rotary_base`` (global layers' theta), ``rotary_base_local``
      (local layers' theta), ``attn_types`` (``"global"`` / ``"local"`` per layer), ``window_size``
      (a local layer's query attends keys whose position differs by at most ``window_size // 2``),
      ``gated_mlp`` (GeGLU: neuron = ``act(pre) * pre_linear``). ``classifier_pooling`` (``"cls"`` or
      ``"mean"``, Hugging Face's name) is what the ModernBERT head pools. The defaults are BERT's.
    - ``attn_impl``: how attention is computed (``ATTENTION_IMPLS``; set it with
      ``model.set_attention_impl``). A runtime switch, not part of the model: ``to_dict`` leaves it out.

    Example:
        >>> cfg = EncoderConfig(n_layers=6, n_heads=12, d_model=384, d_mlp=1536, d_vocab=30522)
        >>> cfg.d_head, cfg.d_embed, cfg.n_positions  # d_embed defaults to d_model
        (32, 384, 512)
        >>> cfg.to_dict()["dtype"]
        'float32'
        >>> from transformers import AutoConfig
        >>> EncoderConfig.from_hf(AutoConfig.from_pretrained(minilm_path()), n_labels=1).d_mlp
        1536
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
    architecture: str = "bert"
    d_embed: int | None = None
    position_offset: int = 0
    pooler_act: str = "tanh"
    # positions: absolute (BERT) by default; DeBERTa-v2/v3 relative attention
    position_biased_input: bool = True
    mask_embeddings: bool = False
    relative_attention: bool = False
    pos_att_type: tuple[str, ...] = ()
    position_buckets: int = -1
    max_relative_positions: int = -1
    share_att_key: bool = False
    norm_rel_ebd: bool = False
    use_attn_result: bool = False
    use_hook_mlp_in: bool = False
    attn_impl: str = "auto"
    dtype: torch.dtype = torch.float32
    positional_embedding_type: str = "standard"
    rotary_base: float = 10000.0
    rotary_base_local: float | None = None
    window_size: int | None = None
    attn_types: list[str] | None = None
    gated_mlp: bool = False
    classifier_pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.d_embed is None:
            self.d_embed = self.d_model
        if self.d_model % self.n_heads != 0:
            raise UnsupportedArchitectureError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "check hidden_size and num_attention_heads in config.json"
            )
        if self.act_fn not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"hidden_act={self.act_fn!r} is not supported; use one of {SUPPORTED_ACTIVATIONS}"
            )
        if self.attn_impl not in ATTENTION_IMPLS:
            raise InputError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {self.attn_impl!r}")
        if self.pooler_act not in POOLER_ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"pooler_act={self.pooler_act!r} is not supported; use one of {POOLER_ACTIVATIONS}"
            )

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_positions(self) -> int:
        """Rows of the position table (usable positions plus the family's offset)."""
        return self.n_ctx + self.position_offset

    @property
    def acc_dtype(self) -> torch.dtype:
        """Dtype of outputs and accumulators: float64 for float64 models, else float32 (bf16/fp16 too)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @classmethod
    def from_hf(cls, hf: Any, *, model_name: str | None = None, n_labels: int = 0) -> EncoderConfig:
        """Build from a Hugging Face config (object or ``to_dict()``) of any supported family."""
        from mechir_nig.models.architectures import architecture_for

        d = hf if isinstance(hf, dict) else hf.to_dict()
        arch = architecture_for(d)
        kwargs = arch.config(d)
        return cls(
            **kwargs,
            n_labels=n_labels,
            model_name=model_name or arch.name,
            architecture=arch.name,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("attn_impl")  # how attention is computed, not what the model is (see the class docstring)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        return out
