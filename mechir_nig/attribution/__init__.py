"""Neuron Integrated Gradients (Vast et al., ICTIR 2024): its options (``NIGSettings``), targets and result."""

from mechir_nig.attribution.baselines import BASELINES, baseline_embeddings
from mechir_nig.attribution.nig import (
    REDUCE,
    ConvergenceWarning,
    NeuronIntegratedGradients,
    neuron_integrated_gradients,
)
from mechir_nig.attribution.result import NeuronAttribution
from mechir_nig.attribution.rules import RULES, alphas
from mechir_nig.attribution.settings import NIGSettings
from mechir_nig.attribution.target import TargetArgs

__all__ = [
    "BASELINES",
    "REDUCE",
    "ConvergenceWarning",
    "NeuronAttribution",
    "NeuronIntegratedGradients",
    "NIGSettings",
    "RULES",
    "TargetArgs",
    "alphas",
    "baseline_embeddings",
    "neuron_integrated_gradients",
]
