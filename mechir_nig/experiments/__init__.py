"""Experiments composed from the toolkit: re-ranking studies and neuron-ranking stability."""

from mechir_nig.experiments.collection import rerank_study, split_half_stability

__all__ = ["rerank_study", "split_half_stability"]
