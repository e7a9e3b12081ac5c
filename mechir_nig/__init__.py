"""mechir_nig: mechanistic interpretability for neural IR models.

Hooked BERT cross-/bi-encoders on TransformerLens' ``HookedRootModule`` and Neuron Integrated
Gradients (Vast et al., ICTIR 2024, arXiv:2406.19309).
"""

from mechir_nig.errors import (
    InputError,
    MechirNigError,
    ModelLoadError,
    TruncationWarning,
    UnsupportedArchitectureError,
)
from mechir_nig.models import GROUPS, EncoderConfig, HookedBiEncoder, HookedCrossEncoder, PairBatch, TextBatch

__version__ = "0.1.0"

__all__ = [
    "GROUPS",
    "EncoderConfig",
    "HookedBiEncoder",
    "HookedCrossEncoder",
    "InputError",
    "MechirNigError",
    "ModelLoadError",
    "PairBatch",
    "TextBatch",
    "TruncationWarning",
    "UnsupportedArchitectureError",
    "__version__",
]
