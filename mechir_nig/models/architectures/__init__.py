"""Encoder families, one module each; ``architecture_for`` picks one from ``config.json``'s ``model_type``.

Supported: BERT, ELECTRA, RoBERTa / XLM-RoBERTa, DistilBERT, ModernBERT, DeBERTa-v2/v3. To add a family, write one module with
``config`` (HF config -> ``EncoderConfig`` keywords), ``convert_body`` (weights -> hooked names) and an
``ARCHITECTURE`` record (see ``base.py``), and add it to ``ARCHITECTURES`` below.
"""

from __future__ import annotations

from typing import Any

from mechir_nig.errors import UnsupportedArchitectureError
from mechir_nig.models.architectures import bert, deberta, distilbert, electra, modernbert, roberta
from mechir_nig.models.architectures.base import Architecture, Weights

ARCHITECTURES: tuple[Architecture, ...] = (
    bert.ARCHITECTURE,
    electra.ARCHITECTURE,
    roberta.ARCHITECTURE,
    distilbert.ARCHITECTURE,
    modernbert.ARCHITECTURE,
    deberta.ARCHITECTURE,
)
_BY_TYPE = {t: a for a in ARCHITECTURES for t in a.model_types}
_BY_NAME = {a.name: a for a in ARCHITECTURES}
SUPPORTED_MODEL_TYPES = tuple(_BY_TYPE)


def supported_summary() -> str:
    """One line listing what loads, for error messages."""
    return "; ".join(
        f"{a.name} ({', '.join(a.cross_encoder_classes)} as HookedCrossEncoder, "
        f"{', '.join(a.bi_encoder_classes)} as HookedBiEncoder)"
        for a in ARCHITECTURES
    )


def architecture_for(hf_config: dict[str, Any], source: str = "config.json") -> Architecture:
    """The adapter for a HF config dict, or ``UnsupportedArchitectureError`` listing what is supported."""
    model_type = hf_config.get("model_type")
    arch = _BY_TYPE.get(model_type)  # type: ignore[arg-type]
    if arch is None:
        found = hf_config.get("architectures") or [model_type]
        raise UnsupportedArchitectureError(
            f"{source} holds a {found} checkpoint (model_type={model_type!r}), which mechir_nig does not "
            f"implement; supported model_type values: {', '.join(SUPPORTED_MODEL_TYPES)} — "
            + supported_summary()
        )
    if arch.check is not None:
        try:
            arch.check(hf_config)
        except UnsupportedArchitectureError as exc:
            raise UnsupportedArchitectureError(f"{source}: {exc}") from None
    return arch


def architecture_named(name: str) -> Architecture:
    """The adapter whose ``name`` is ``EncoderConfig.architecture``; BERT's for a name no family has (a
    config built by hand), so its components are the BERT ones."""
    return _BY_NAME.get(name, bert.ARCHITECTURE)


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "SUPPORTED_MODEL_TYPES",
    "Weights",
    "architecture_for",
    "architecture_named",
]
