"""Interventions through hooks: ablation (this package's ``ablation``), patching and perturbations.

Names are imported lazily, so ``import mechir_nig.interventions`` is cheap and a module that is not
installed yet (``patching``, ``perturb``) does not break the others.
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
    "replace_components": "hooks",
    "bind_batches": "hooks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
