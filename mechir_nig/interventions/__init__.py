"""Interventions through hooks, all written by one engine (``engine``): ablation, patching, path
patching, attribution patching, attention blocking, direction edits and perturbations.

Names are imported lazily, so ``import mechir_nig.interventions`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ablate": "ablation",
    "ablation_hooks": "ablation",
    "Ablation": "ablation",
    "AblationReference": "ablation",
    "BaselineActivity": "ablation",
    "baseline_active": "ablation",
    "Engine": "engine",
    "Intervention": "engine",
    "Zero": "engine",
    "Mean": "engine",
    "Resample": "engine",
    "Baseline": "engine",
    "Source": "engine",
    "Function": "engine",
    "patch": "patching",
    "PatchingResult": "patching",
    "NoScoreChangeWarning": "patching",
    "SITES": "patching",
    "attribution_patch": "attribution_patching",
    "path_patch": "path_patching",
    "path_patch_heads_to_score": "path_patching",
    "path_patch_into_heads": "path_patching",
    "top_direct_heads": "path_patching",
    "PathPatchingResult": "path_patching",
    "block_attention": "attention",
    "attention_block_hooks": "attention",
    "direction_intervention": "directions",
    "direction_hooks": "directions",
    "attention_by_group": "attention",
    "AttentionGroups": "attention",
    "Alignment": "perturb",
    "align": "perturb",
    "tfc1": "perturb",
    "tdc": "perturb",
    "remove_term": "perturb",
    "random_term": "perturb",
    "term_idf": "perturb",
    "perturb_docs": "perturb",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
