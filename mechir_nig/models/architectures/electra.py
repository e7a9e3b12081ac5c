"""ELECTRA (``cross-encoder/ms-marco-electra-base`` and other discriminator re-rankers).

Embeddings are ``embedding_size`` wide and projected to ``hidden_size`` after their LayerNorm when
the two differ (``embeddings_project``); NIG interpolates in the ``embedding_size`` space. Head:
``classifier.dense`` -> GELU -> ``classifier.out_proj`` on the first token (no pooler). Pairs:
``[CLS] q [SEP] d [SEP]`` with token types 0/1.
"""

from __future__ import annotations

from typing import Any

from mechir_nig.models.architectures.base import (
    Architecture,
    StateDict,
    Weights,
    bert_embeddings,
    bert_layers,
    bert_like_config,
)
from mechir_nig.models.config import EncoderConfig


def config(d: dict[str, Any]) -> dict[str, Any]:
    return dict(bert_like_config(d), d_embed=d.get("embedding_size") or d["hidden_size"], pooler_act="gelu")


def convert_body(w: Weights, cfg: EncoderConfig) -> StateDict:
    p = "electra." if any(k.startswith("electra.") for k in w.sd) else ""
    out = bert_embeddings(w, p, cfg)
    if cfg.d_embed != cfg.d_model:
        out["embed.W_proj"], out["embed.b_proj"] = w.linear(p + "embeddings_project")
    return out | bert_layers(w, p, cfg.n_layers)


ARCHITECTURE = Architecture(
    name="electra",
    model_types=("electra",),
    prefix="electra.",
    cross_encoder_classes=("ElectraForSequenceClassification",),
    bi_encoder_classes=("ElectraModel",),
    head=("classifier.dense", "classifier.out_proj"),
    config=config,
    convert_body=convert_body,
)
