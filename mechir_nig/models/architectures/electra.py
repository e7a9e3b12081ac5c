"""ELECTRA (``cross-encoder/ms-marco-electra-base`` and other discriminator re-rankers).

Embeddings are ``embedding_size`` wide and projected to ``hidden_size`` after their LayerNorm when
the two differ (``embeddings_project``); NIG interpolates in the ``embedding_size`` space. Head:
``classifier.dense`` -> GELU -> ``classifier.out_proj`` on the first token (no pooler). Pairs:
``[CLS] q [SEP] d [SEP]`` with token types 0/1.
"""

from __future__ import annotations

from typing import Any

from mechir_nig.models.architectures.base import Architecture, bert_like_config, bert_named_body


def config(d: dict[str, Any]) -> dict[str, Any]:
    return dict(bert_like_config(d), d_embed=d.get("embedding_size") or d["hidden_size"], pooler_act="gelu")


ARCHITECTURE = Architecture(
    name="electra",
    model_types=("electra",),
    prefix="electra.",
    cross_encoder_classes=("ElectraForSequenceClassification",),
    bi_encoder_classes=("ElectraModel",),
    head=("classifier.dense", "classifier.out_proj"),
    config=config,
    convert_body=bert_named_body("electra."),
)
