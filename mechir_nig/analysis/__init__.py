"""Analyses of what a model represents: IR features per token and pair, cross-validated linear probes, and
directions of the token embedding matrix (Lu, Chen & Eickhoff, "Pathway to Relevance", EMNLP 2025), and the
residual stream decomposed with frozen LayerNorm scales (``decompose_resid``) and every family's score
attributed directly to its components with the head's nonlinearities frozen (``decompose_score``).

Names are imported lazily, so ``import mechir_nig.analysis`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IRFeatures": "features",
    "ir_features": "features",
    "collection_statistics": "features",
    "CollectionStatistics": "features",
    "probe": "probes",
    "ProbeResult": "probes",
    "embedding_directions": "embedding",
    "EmbeddingDirections": "embedding",
    "idf_edit": "embedding",
    "stacked_weights": "weights",
    "decompose_resid": "decomposition",
    "decompose_score": "decomposition",
    "ResidDecomposition": "decomposition",
    "ScoreDecomposition": "decomposition",
    "StackedWeights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
