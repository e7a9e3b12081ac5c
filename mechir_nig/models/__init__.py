"""Hooked encoders (cross- and bi-encoders) of every supported family on TransformerLens' ``HookedRootModule``."""

from mechir_nig.models.architectures import ARCHITECTURES, SUPPORTED_MODEL_TYPES
from mechir_nig.models.auto import load_model
from mechir_nig.models.bi_encoder import HookedBiEncoder
from mechir_nig.models.cache import EncoderActivationCache
from mechir_nig.models.config import EncoderConfig
from mechir_nig.models.cross_encoder import HookedCrossEncoder
from mechir_nig.models.decoder import HookedDecoderReranker
from mechir_nig.models.encoder import HookedEncoderBase
from mechir_nig.models.protocol import AttributionModel, BiEncoderModel, HookedModel
from mechir_nig.models.t5 import HookedMonoT5, T5Config
from mechir_nig.models.templates import TEMPLATES, RerankTemplate
from mechir_nig.models.tokenization import GROUPS, PairBatch, TextBatch

__all__ = [
    "ARCHITECTURES",
    "AttributionModel",
    "BiEncoderModel",
    "EncoderActivationCache",
    "EncoderConfig",
    "GROUPS",
    "HookedBiEncoder",
    "HookedCrossEncoder",
    "HookedDecoderReranker",
    "HookedEncoderBase",
    "HookedModel",
    "HookedMonoT5",
    "PairBatch",
    "RerankTemplate",
    "SUPPORTED_MODEL_TYPES",
    "T5Config",
    "TEMPLATES",
    "TextBatch",
    "load_model",
]
