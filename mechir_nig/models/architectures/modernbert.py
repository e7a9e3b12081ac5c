"""ModernBERT (``gte-reranker-modernbert-base`` and other ModernBERT cross-encoders and bodies).

Pre-LN blocks (``attn_norm`` is the identity in layer 0), rotary queries and keys (theta
``global_rope_theta`` on global layers, ``local_rope_theta`` on local ones, or the ``rope_parameters``
of newer configs), a global layer every ``global_attn_every_n_layers`` (or ``layer_types``) and a
sliding window of ``local_attention`` tokens on the others, the GeGLU MLP (``Wi`` = [input, gate]), the
embedding norm and the final norm. No token types. Head: pool (``classifier_pooling`` cls / mean) ->
``head.dense`` -> ``classifier_activation`` -> ``head.norm`` -> ``classifier``. Biases are read where
the checkpoint has them (``attention_bias``, ``mlp_bias``, ``norm_bias``, ``classifier_bias``), zero
elsewhere. Options that change the computation and are not implemented (a RoPE scaling type, another
layer type or pooling, an unknown attention implementation) are refused at load.
"""

from __future__ import annotations

from typing import Any

import torch

from mechir_nig.errors import UnsupportedArchitectureError
from mechir_nig.models.architectures.base import Architecture, StateDict, Weights, body_prefix
from mechir_nig.models.components.modernbert import FinalNorm, NormedEmbed, PoolingHead, PreLNBlock
from mechir_nig.models.config import EncoderConfig

LAYER_TYPES = {"full_attention": "global", "sliding_attention": "local"}
ATTENTION_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2", "flex_attention")
"""Hugging Face attention implementations a config may name: all compute the same attention."""


def _refuse(what: str, fix: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"config.json (model_type 'modernbert') has {what}, which mechir_nig's ModernBERT does not "
        f"implement; {fix}"
    )


def _theta(d: dict[str, Any], kind: str, legacy: str, default: float) -> float:
    """The rotary theta of ``kind`` layers (``full_attention`` / ``sliding_attention``)."""
    params = (d.get("rope_parameters") or {}).get(kind) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise _refuse(
            f"rope_parameters[{kind!r}].rope_type={rope_type!r}",
            "only the default rotary embedding is; remove the RoPE scaling from config.json",
        )
    return float(params.get("rope_theta", d.get(legacy, default)))


def config(d: dict[str, Any]) -> dict[str, Any]:
    n_layers = d["num_hidden_layers"]
    if d.get("rope_scaling"):
        raise _refuse(f"rope_scaling={d['rope_scaling']!r}", "remove the RoPE scaling from config.json")
    impl = d.get("_attn_implementation", d.get("attn_implementation"))
    if impl not in ATTENTION_IMPLEMENTATIONS:
        raise _refuse(
            f"attention implementation {impl!r}",
            f"set it to one of {[i for i in ATTENTION_IMPLEMENTATIONS if i]} or remove it "
            "(the hooked model computes attention itself)",
        )
    types = d.get("layer_types")
    if types is None:
        every = int(d.get("global_attn_every_n_layers", 3))
        types = ["sliding_attention" if i % every else "full_attention" for i in range(n_layers)]
    unknown = sorted({t for t in types if t not in LAYER_TYPES})
    if unknown or len(types) != n_layers:
        raise _refuse(
            f"layer_types={types!r}",
            f"each of the {n_layers} layers must be one of {sorted(LAYER_TYPES)}",
        )
    pooling = d.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise _refuse(f"classifier_pooling={pooling!r}", "use 'cls' or 'mean'")
    d_model, n_heads = d["hidden_size"], d["num_attention_heads"]
    if d.get("head_dim") not in (None, d_model // n_heads):
        raise _refuse(f"head_dim={d['head_dim']}", "head_dim must be hidden_size // num_attention_heads")
    pad = d.get("pad_token_id")
    return dict(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_mlp=d["intermediate_size"],
        d_vocab=d["vocab_size"],
        n_ctx=d.get("max_position_embeddings", 8192),
        n_token_types=0,
        act_fn=d.get("hidden_activation", "gelu"),
        eps=d.get("norm_eps", 1e-5),
        pad_token_id=0 if pad is None else pad,
        pooler_act=d.get("classifier_activation", "gelu"),
        positional_embedding_type="rotary",
        rotary_base=_theta(d, "full_attention", "global_rope_theta", 160_000.0),
        rotary_base_local=_theta(d, "sliding_attention", "local_rope_theta", 10_000.0),
        window_size=int(d.get("local_attention", 128)),
        attn_types=[LAYER_TYPES[t] for t in types],
        gated_mlp=True,
        classifier_pooling=pooling,
    )


def _linear(w: Weights, key: str, n_out: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``key`` (a zero bias where the checkpoint has none: ``*_bias: false``)."""
    weight = w.take(key + ".weight")
    bias = w.take(key + ".bias") if key + ".bias" in w else torch.zeros(n_out, dtype=like.dtype)
    return weight, bias


def convert_body(w: Weights, cfg: EncoderConfig) -> StateDict:
    p = body_prefix(w, "model.")
    emb = w.take(p + "embeddings.tok_embeddings.weight")
    d = cfg.d_model
    out: StateDict = {"embed.W_E": emb}
    out["embed.ln.w"], out["embed.ln.b"] = _linear(w, p + "embeddings.norm", d, emb)
    for layer in range(cfg.n_layers):
        src, b = f"{p}layers.{layer}.", f"blocks.{layer}."
        if layer > 0:
            out[b + "ln1.w"], out[b + "ln1.b"] = _linear(w, src + "attn_norm", d, emb)
        out[b + "attn.W_QKV"], out[b + "attn.b_QKV"] = _linear(w, src + "attn.Wqkv", 3 * d, emb)
        out[b + "attn.W_O_lin"], out[b + "attn.b_O"] = _linear(w, src + "attn.Wo", d, emb)
        out[b + "ln2.w"], out[b + "ln2.b"] = _linear(w, src + "mlp_norm", d, emb)
        out[b + "mlp.W_in_lin"], out[b + "mlp.b_in"] = _linear(w, src + "mlp.Wi", 2 * cfg.d_mlp, emb)
        out[b + "mlp.W_out_lin"], out[b + "mlp.b_out"] = _linear(w, src + "mlp.Wo", d, emb)
    out["ln_final.w"], out["ln_final.b"] = _linear(w, p + "final_norm", d, emb)
    return out


class ModernBertArchitecture(Architecture):
    """ModernBERT's head: ``head.dense`` (the hooked ``pooler``), ``head.norm`` (``pooler.ln``) and
    ``classifier``."""

    def convert_head(self, w: Weights) -> StateDict:
        dense = w.sd.get("head.dense.weight")
        if dense is None:
            return super().convert_head(w)  # the missing-head error
        d = dense.shape[0]
        sd: StateDict = {}
        sd["pooler.W"], sd["pooler.b"] = _linear(w, "head.dense", d, dense)
        sd["pooler.ln.w"], sd["pooler.ln.b"] = _linear(w, "head.norm", d, dense)
        sd["classifier.W"], sd["classifier.b"] = w.linear("classifier")
        return sd


ARCHITECTURE = ModernBertArchitecture(
    name="modernbert",
    model_types=("modernbert",),
    prefix="model.",
    cross_encoder_classes=("ModernBertForSequenceClassification",),
    bi_encoder_classes=("ModernBertModel",),
    head=("head.dense", "classifier"),
    config=config,
    convert_body=convert_body,
    embed=NormedEmbed,
    block=PreLNBlock,
    pooler=PoolingHead,
    final_norm=FinalNorm,
    pre_ln=True,
)
