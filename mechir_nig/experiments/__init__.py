"""Experiments composed from the toolkit (orchestration; the only users of ``runtime.Context.map``):
collection attribution, pruning studies, faithfulness, sharded patching and re-ranking, stability, the
interaction study (attention between token groups blocked per layer).

``faithfulness`` is imported from ``mechir_nig`` or ``mechir_nig.experiments.faithfulness`` (a package
attribute of that name would hide the module)."""

from mechir_nig.experiments.attribute import attribute_collection
from mechir_nig.experiments.collection import rerank_sharded, rerank_study, split_half_stability
from mechir_nig.experiments.interaction import interaction_study
from mechir_nig.experiments.patching import patch_study
from mechir_nig.experiments.pruning import pruning_study

__all__ = [
    "attribute_collection",
    "interaction_study",
    "patch_study",
    "pruning_study",
    "rerank_sharded",
    "rerank_study",
    "split_half_stability",
]
