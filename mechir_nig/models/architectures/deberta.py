"""DeBERTa-v2/v3 (``deberta-v2``: mxbai-rerank-base-v1 and other DeBERTa-v3 cross-encoders).

Post-LN blocks as BERT's (same hook names) with disentangled attention (``DisentangledAttention``:
content, content-to-position and position-to-content terms over log-bucketed relative positions), no
absolute positions unless ``position_biased_input``, the embedding output multiplied by the attention
mask, and the ``ContextPooler`` head (dense on ``[CLS]``, ``pooler_hidden_act``, then the classifier).
DeBERTa-v3 has no token types (``type_vocab_size`` 0). Pairs: ``[CLS] q [SEP] d [SEP]``.

Refused at load, naming ``config.json`` and the fix: the ``ConvLayer`` (``conv_kernel_size`` > 0), an
embedding narrower than the hidden size (``embedding_size``), ``attention_head_size`` other than
``hidden_size / num_attention_heads``, a ``pooler_hidden_size`` other than ``hidden_size``, relative
attention terms other than ``c2p``/``p2c`` and ``norm_rel_ebd`` other than ``none``/``layer_norm``.
"""

from __future__ import annotations

from typing import Any

from mechir_nig.errors import UnsupportedArchitectureError
from mechir_nig.models.architectures.base import Architecture, StateDict, Weights, body_prefix, convert_layers
from mechir_nig.models.components import EncoderBlock
from mechir_nig.models.components.deberta import DebertaEmbed, DisentangledAttention
from mechir_nig.models.config import EncoderConfig

DEBERTA_LAYER_NAMES = {
    "layers": "encoder.layer",
    "q": "attention.self.query_proj",
    "k": "attention.self.key_proj",
    "v": "attention.self.value_proj",
    "o": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
    "ln2": "output.LayerNorm",
}
_FIX = "this DeBERTa variant is not implemented; use a DeBERTa-v2/v3 checkpoint without it (e.g. deberta-v3-base)"


def _pos_att_type(d: dict[str, Any]) -> tuple[str, ...]:
    t = d.get("pos_att_type") or []
    if isinstance(t, str):  # older configs: "p2c|c2p"
        t = [x.strip() for x in t.lower().split("|")]
    return tuple(t)


def check(d: dict[str, Any]) -> None:
    """Refuse the options the hooked port does not implement (``UnsupportedArchitectureError``)."""
    problems = []
    if (d.get("conv_kernel_size") or 0) > 0:
        problems.append(f"conv_kernel_size={d['conv_kernel_size']} (the ConvLayer after the first block)")
    hidden, heads = d.get("hidden_size"), d.get("num_attention_heads")
    if d.get("embedding_size") not in (None, hidden):
        problems.append(f"embedding_size={d['embedding_size']} != hidden_size={hidden} (embed_proj)")
    if hidden and heads and d.get("attention_head_size") not in (None, hidden // heads):
        problems.append(
            f"attention_head_size={d['attention_head_size']} != hidden_size / num_attention_heads"
        )
    if d.get("pooler_hidden_size") not in (None, hidden):
        problems.append(f"pooler_hidden_size={d['pooler_hidden_size']} != hidden_size={hidden}")
    unknown = [t for t in _pos_att_type(d) if t not in ("c2p", "p2c")]
    if unknown:
        problems.append(f"pos_att_type entries {unknown} (only 'c2p' and 'p2c' are implemented)")
    norm = {x.strip() for x in str(d.get("norm_rel_ebd") or "none").lower().split("|")} - {
        "none",
        "layer_norm",
    }
    if norm:
        problems.append(f"norm_rel_ebd={d['norm_rel_ebd']!r} (only 'none' and 'layer_norm')")
    if problems:
        raise UnsupportedArchitectureError(f"it sets {'; '.join(problems)}: {_FIX}")


def config(d: dict[str, Any]) -> dict[str, Any]:
    check(d)
    pad = d.get("pad_token_id")
    n_ctx = d.get("max_position_embeddings", 512)
    max_rel = d.get("max_relative_positions", -1)
    return dict(
        n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"],
        d_model=d["hidden_size"],
        d_mlp=d["intermediate_size"],
        d_vocab=d["vocab_size"],
        n_ctx=n_ctx,
        n_token_types=d.get("type_vocab_size", 0),
        act_fn=d.get("hidden_act", "gelu"),
        eps=d.get("layer_norm_eps", 1e-7),
        pad_token_id=0 if pad is None else pad,
        pooler_act=d.get("pooler_hidden_act", "gelu"),
        position_biased_input=d.get("position_biased_input", True),
        mask_embeddings=True,
        relative_attention=bool(d.get("relative_attention", False)),
        pos_att_type=_pos_att_type(d),
        position_buckets=d.get("position_buckets", -1),
        max_relative_positions=max_rel if max_rel >= 1 else n_ctx,
        share_att_key=bool(d.get("share_att_key", False)),
        norm_rel_ebd="layer_norm" in str(d.get("norm_rel_ebd") or "none").lower(),
    )


def convert_body(w: Weights, cfg: EncoderConfig) -> StateDict:
    p = body_prefix(w, "deberta.")
    e = p + "embeddings."
    out: StateDict = {"embed.W_E": w.take(e + "word_embeddings.weight")}
    out["embed.ln.w"], out["embed.ln.b"] = w.linear(e + "LayerNorm")
    if cfg.position_biased_input:
        out["embed.W_pos"] = w.take(e + "position_embeddings.weight")
    else:  # some v3 checkpoints carry an unused table; HF ignores it too (_keys_to_ignore_on_load_unexpected)
        w.sd.pop(e + "position_embeddings.weight", None)
    if cfg.n_token_types:
        out["embed.W_token_type"] = w.take(e + "token_type_embeddings.weight")
    else:
        out["embed.W_token_type"] = out["embed.W_E"].new_zeros(1, cfg.d_model)
    w.sd.pop(e + "position_ids", None)
    if cfg.relative_attention:
        out["embed.W_rel"] = w.take(p + "encoder.rel_embeddings.weight")
        if cfg.norm_rel_ebd:
            out["embed.rel_ln.w"], out["embed.rel_ln.b"] = w.linear(p + "encoder.LayerNorm")
        if not cfg.share_att_key:
            for layer in range(cfg.n_layers):
                src, b = f"{p}encoder.layer.{layer}.attention.self.", f"blocks.{layer}.attn."
                for term, proj, name in (("c2p", "pos_key_proj", "K"), ("p2c", "pos_query_proj", "Q")):
                    if term in cfg.pos_att_type:
                        out[b + f"W_pos_{name}"], out[b + f"b_pos_{name}"] = w.linear(src + proj)
    return out | convert_layers(w, p, cfg.n_layers, DEBERTA_LAYER_NAMES)


def block(cfg: EncoderConfig, layer: int) -> EncoderBlock:
    """BERT's post-LN block with the disentangled attention."""
    return EncoderBlock(cfg, layer, DisentangledAttention)


ARCHITECTURE = Architecture(
    name="deberta-v2",
    model_types=("deberta-v2",),
    prefix="deberta.",
    cross_encoder_classes=("DebertaV2ForSequenceClassification",),
    bi_encoder_classes=("DebertaV2Model",),
    head=("pooler.dense", "classifier"),
    config=config,
    convert_body=convert_body,
    embed=DebertaEmbed,
    block=block,
    check=check,
)
