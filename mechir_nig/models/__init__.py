"""Hooked BERT encoders (cross- and bi-encoders) on TransformerLens' ``HookedRootModule``."""

from mechir_nig.models.auto import load_model
from mechir_nig.models.bi_encoder import HookedBiEncoder
from mechir_nig.models.config import EncoderConfig
from mechir_nig.models.cross_encoder import HookedCrossEncoder
from mechir_nig.models.encoder import HookedBertBase
from mechir_nig.models.tokenization import GROUPS, PairBatch, TextBatch

__all__ = [
    "EncoderConfig",
    "GROUPS",
    "HookedBertBase",
    "HookedBiEncoder",
    "HookedCrossEncoder",
    "PairBatch",
    "TextBatch",
    "load_model",
]
