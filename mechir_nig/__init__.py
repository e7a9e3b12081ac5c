"""mechir_nig: mechanistic interpretability for neural IR models.

Hooked BERT cross-/bi-encoders on TransformerLens' ``HookedRootModule`` and Neuron Integrated
Gradients (Vast et al., ICTIR 2024, arXiv:2406.19309). Public names are imported lazily, so
``import mechir_nig`` is fast; ``from mechir_nig import HookedCrossEncoder`` loads torch and
TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mechir_nig.errors import (
    CheckpointError,
    CheckpointLockedError,
    DistributedError,
    InputError,
    MechirNigError,
    ModelLoadError,
    PrecisionError,
    TruncationWarning,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

_LAZY = {
    "GROUPS": "mechir_nig.models",
    "EncoderConfig": "mechir_nig.models",
    "HookedBiEncoder": "mechir_nig.models",
    "HookedCrossEncoder": "mechir_nig.models",
    "PairBatch": "mechir_nig.models",
    "TextBatch": "mechir_nig.models",
    "load_model": "mechir_nig.models",
    "NeuronAttribution": "mechir_nig.attribution",
    "NeuronIntegratedGradients": "mechir_nig.attribution",
    "neuron_integrated_gradients": "mechir_nig.attribution",
    "CollectionAttribution": "mechir_nig.attribution.stats",
    "NIGSettings": "mechir_nig.attribution.settings",
    "ComponentSet": "mechir_nig.sets",
    "NeuronSet": "mechir_nig.sets",
    "select_top": "mechir_nig.sets",
    "ablate": "mechir_nig.interventions",
    "patch": "mechir_nig.interventions",
    "path_patch": "mechir_nig.interventions",
    "align": "mechir_nig.interventions",
    "probe": "mechir_nig.analysis",
    "attribute_collection": "mechir_nig.experiments.attribute",
    "pruning_study": "mechir_nig.experiments.pruning",
    "faithfulness": "mechir_nig.experiments.faithfulness",
    "load_collection": "mechir_nig.data",
    "judged_pairs": "mechir_nig.data",
    "bm25_candidates": "mechir_nig.data",
    "rerank": "mechir_nig.evaluation",
    "evaluate": "mechir_nig.evaluation",
}

if TYPE_CHECKING:  # pragma: no cover
    from mechir_nig.analysis import probe
    from mechir_nig.attribution import (
        NeuronAttribution,
        NeuronIntegratedGradients,
        neuron_integrated_gradients,
    )
    from mechir_nig.attribution.settings import NIGSettings
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
    from mechir_nig.evaluation import evaluate, rerank
    from mechir_nig.experiments.attribute import attribute_collection
    from mechir_nig.experiments.faithfulness import faithfulness
    from mechir_nig.experiments.pruning import pruning_study
    from mechir_nig.interventions import ablate, align, patch, path_patch
    from mechir_nig.models import (
        GROUPS,
        EncoderConfig,
        HookedBiEncoder,
        HookedCrossEncoder,
        PairBatch,
        TextBatch,
        load_model,
    )
    from mechir_nig.sets import ComponentSet, NeuronSet, select_top


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mechir_nig' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "GROUPS",
    "EncoderConfig",
    "HookedBiEncoder",
    "HookedCrossEncoder",
    "PairBatch",
    "TextBatch",
    "load_model",
    "NeuronAttribution",
    "NeuronIntegratedGradients",
    "neuron_integrated_gradients",
    "CollectionAttribution",
    "NIGSettings",
    "ComponentSet",
    "NeuronSet",
    "select_top",
    "ablate",
    "patch",
    "path_patch",
    "align",
    "probe",
    "attribute_collection",
    "pruning_study",
    "faithfulness",
    "load_collection",
    "judged_pairs",
    "bm25_candidates",
    "rerank",
    "evaluate",
    "CheckpointError",
    "CheckpointLockedError",
    "DistributedError",
    "PrecisionError",
    "InputError",
    "MechirNigError",
    "ModelLoadError",
    "TruncationWarning",
    "UnsupportedArchitectureError",
    "__version__",
]
