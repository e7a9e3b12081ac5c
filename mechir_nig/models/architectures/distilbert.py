"""DistilBERT (TAS-B and other bi-encoders, SPLADE bodies, DistilBERT re-rankers).

No token types (the inputs' token types are ignored). Blocks: ``q_lin/k_lin/v_lin/out_lin``,
``sa_layer_norm``, ``ffn.lin1/lin2``, ``output_layer_norm``; LayerNorm eps is 1e-12 as in HF. Head:
``pre_classifier`` -> ReLU -> ``classifier`` on ``[CLS]``. Pairs: ``[CLS] q [SEP] d [SEP]``.
"""

from __future__ import annotations

from typing import Any

import torch

from mechir_nig.models.architectures.base import Architecture, StateDict, Weights, body_prefix, convert_layers
from mechir_nig.models.config import EncoderConfig


def config(d: dict[str, Any]) -> dict[str, Any]:
    pad = d.get("pad_token_id")
    return dict(
        n_layers=d["n_layers"],
        n_heads=d["n_heads"],
        d_model=d["dim"],
        d_mlp=d["hidden_dim"],
        d_vocab=d["vocab_size"],
        n_ctx=d.get("max_position_embeddings", 512),
        n_token_types=0,
        act_fn=d.get("activation", "gelu"),
        eps=1e-12,
        pad_token_id=0 if pad is None else pad,
        pooler_act="relu",
    )


DISTILBERT_LAYER_NAMES = {
    "layers": "transformer.layer",
    "q": "attention.q_lin",
    "k": "attention.k_lin",
    "v": "attention.v_lin",
    "o": "attention.out_lin",
    "ln1": "sa_layer_norm",
    "mlp_in": "ffn.lin1",
    "mlp_out": "ffn.lin2",
    "ln2": "output_layer_norm",
}


def convert_body(w: Weights, cfg: EncoderConfig) -> StateDict:
    p = body_prefix(w, "distilbert.")
    e = p + "embeddings."
    out: StateDict = {
        "embed.W_E": w.take(e + "word_embeddings.weight"),
        "embed.W_pos": w.take(e + "position_embeddings.weight"),
    }
    out["embed.ln.w"], out["embed.ln.b"] = w.linear(e + "LayerNorm")
    out["embed.W_token_type"] = torch.zeros(1, cfg.d_model, dtype=out["embed.W_E"].dtype)
    w.sd.pop(e + "position_ids", None)
    return out | convert_layers(w, p, cfg.n_layers, DISTILBERT_LAYER_NAMES)


ARCHITECTURE = Architecture(
    name="distilbert",
    model_types=("distilbert",),
    prefix="distilbert.",
    cross_encoder_classes=("DistilBertForSequenceClassification",),
    bi_encoder_classes=("DistilBertModel",),
    head=("pre_classifier", "classifier"),
    config=config,
    convert_body=convert_body,
)
