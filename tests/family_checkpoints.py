"""The non-BERT family checkpoints of ``mechir_nig.testing`` bound to the test texts, for
test_every_family (the family tests call the same builders with their own texts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import DOCS, QUERIES

from mechir_nig import testing
from mechir_nig.testing import DEBERTA_V3, T5_VARIANTS, make_deberta, make_modernbert, make_t5

T5_QUERIES = ["what is a neuron", "how do cells fire", "where is the brain"]
T5_DOCS = [
    "a neuron is a cell of the nervous system that fires signals",
    "cells fire",
    "the brain is in the head and holds many neurons that fire",
]
DEBERTA_VARIANTS = {"v3": DEBERTA_V3}
TEXTS = QUERIES + DOCS + T5_QUERIES + T5_DOCS


def wordpiece_tokenizer() -> Any:
    return testing.wordpiece_tokenizer(TEXTS + ["the relevance of a document to a query"])


def deberta_tokenizer() -> Any:
    return testing.unigram_deberta_tokenizer(TEXTS)


def t5_tokenizer() -> Any:
    return testing.t5_tokenizer(
        [f"Query: {q} Document: {d} Relevant: true false" for q in T5_QUERIES for d in T5_DOCS] * 20
    )


def decoder_tokenizer(folder: Path) -> tuple[Path, Any]:
    """The decoder tokenizer (template specials, "yes"/"no" whole) saved in ``folder``."""
    tok = testing.decoder_tokenizer(
        TEXTS + ["yes no yes no", "yes", "no", "Judge whether the Document meets the requirements"] * 5
    )
    tok.save_pretrained(folder)
    return folder, tok


def make_decoder(folder: Path, tok: Any, kind: str, n_labels: int = 1, *, pad_row: bool = False) -> Path:
    """``testing.make_decoder``; ``pad_row``: keep the pad token's embedding row random (HF's init zeroes it,
    and the NIG ``pad`` baseline then starts at a zero input where RMSNorm's gradient is sharp)."""
    return testing.make_decoder(folder, tok, kind, n_labels=n_labels, zero_pad_row=not pad_row)


__all__ = [
    "DEBERTA_VARIANTS",
    "T5_DOCS",
    "T5_QUERIES",
    "T5_VARIANTS",
    "decoder_tokenizer",
    "deberta_tokenizer",
    "make_deberta",
    "make_decoder",
    "make_modernbert",
    "make_t5",
    "t5_tokenizer",
    "wordpiece_tokenizer",
]
