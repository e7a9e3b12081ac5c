"""Experiments composed from the toolkit: re-ranking studies and neuron-ranking stability."""

from mechir_nig.experiments.collection import rerank_sharded, rerank_study, split_half_stability
from mechir_nig.experiments.patching import patch_study

__all__ = ["patch_study", "rerank_sharded", "rerank_study", "split_half_stability"]
