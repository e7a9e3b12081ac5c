"""RoBERTa and XLM-RoBERTa (``BAAI/bge-reranker-base/-large`` and RoBERTa re-rankers).

Position ids start at ``padding_idx + 1`` (HF ``create_position_ids_from_input_ids``), so a model
with ``max_position_embeddings=514`` takes 512 tokens. Head: ``classifier.dense`` -> tanh ->
``classifier.out_proj`` on ``<s>``. Pairs: ``<s> q </s></s> d </s>`` from the tokenizer's template;
token types are all 0 (``type_vocab_size`` is 1 in released checkpoints).
"""

from __future__ import annotations

from typing import Any

from mechir_nig.models.architectures.base import Architecture, bert_like_config, bert_named_body


def config(d: dict[str, Any]) -> dict[str, Any]:
    pad = d.get("pad_token_id")
    pad = 1 if pad is None else pad
    return dict(bert_like_config(d, position_offset=pad + 1), pooler_act="tanh")


ARCHITECTURE = Architecture(
    name="roberta",
    model_types=("roberta", "xlm-roberta"),
    prefix="roberta.",
    cross_encoder_classes=("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification"),
    bi_encoder_classes=("RobertaModel", "XLMRobertaModel"),
    head=("classifier.dense", "classifier.out_proj"),
    config=config,
    convert_body=bert_named_body("roberta."),
)
