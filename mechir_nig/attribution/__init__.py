"""Neuron Integrated Gradients (Vast et al., ICTIR 2024) and its result object."""

from mechir_nig.attribution.baselines import BASELINES, baseline_embeddings
from mechir_nig.attribution.nig import (
    REDUCE,
    ConvergenceWarning,
    NeuronIntegratedGradients,
    neuron_integrated_gradients,
)
from mechir_nig.attribution.result import NeuronAttribution
from mechir_nig.attribution.rules import RULES, alphas

__all__ = [
    "BASELINES",
    "REDUCE",
    "ConvergenceWarning",
    "NeuronAttribution",
    "NeuronIntegratedGradients",
    "RULES",
    "alphas",
    "baseline_embeddings",
    "neuron_integrated_gradients",
]
