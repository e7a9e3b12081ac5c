"""BERT (MonoBERT, MiniLM/TinyBERT re-rankers, BERT bi-encoders).

Head: the pooler (``tanh(W h_[CLS] + b)``) then a linear classifier. Pairs: ``[CLS] q [SEP] d [SEP]``
with token types 0/1.
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
    return dict(bert_like_config(d), pooler_act="tanh")


def convert_body(w: Weights, cfg: EncoderConfig) -> StateDict:
    p = "bert." if any(k.startswith("bert.") for k in w.sd) else ""
    return bert_embeddings(w, p, cfg) | bert_layers(w, p, cfg.n_layers)


ARCHITECTURE = Architecture(
    name="bert",
    model_types=("bert",),
    prefix="bert.",
    cross_encoder_classes=("BertForSequenceClassification",),
    bi_encoder_classes=("BertModel",),
    head=(None, "classifier"),
    config=config,
    convert_body=convert_body,
)
