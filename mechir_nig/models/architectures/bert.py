"""BERT (MonoBERT, MiniLM/TinyBERT re-rankers, BERT bi-encoders).

Head: the pooler (``tanh(W h_[CLS] + b)``) then a linear classifier. Pairs: ``[CLS] q [SEP] d [SEP]``
with token types 0/1.
"""

from __future__ import annotations

from typing import Any

from mechir_nig.models.architectures.base import Architecture, bert_like_config, bert_named_body


def config(d: dict[str, Any]) -> dict[str, Any]:
    return dict(bert_like_config(d), pooler_act="tanh")


ARCHITECTURE = Architecture(
    name="bert",
    model_types=("bert",),
    prefix="bert.",
    cross_encoder_classes=("BertForSequenceClassification",),
    bi_encoder_classes=("BertModel",),
    head=(None, "classifier"),
    config=config,
    convert_body=bert_named_body("bert."),
)
