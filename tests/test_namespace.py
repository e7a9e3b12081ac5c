"""The top-level namespace: every public name imports from ``mechir_nig``, and ``import mechir_nig`` stays lazy."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import mechir_nig

#: The names users import from ``mechir_nig`` and the module that defines each.
HOMES = {
    "ablate": "mechir_nig.interventions.ablation",
    "patch": "mechir_nig.interventions.patching",
    "align": "mechir_nig.interventions.perturb",
    "select_top": "mechir_nig.sets.selection",
    "pruning_study": "mechir_nig.experiments.pruning",
    "faithfulness": "mechir_nig.experiments.faithfulness",
    "attribute_collection": "mechir_nig.experiments.attribute",
    "probe": "mechir_nig.analysis.probes",
}


@pytest.mark.parametrize("name", sorted(HOMES))
def test_public_function_imports_from_the_package(name):
    namespace: dict[str, object] = {}
    exec(f"from mechir_nig import {name}", namespace)
    assert namespace[name] is getattr(importlib.import_module(HOMES[name]), name)
    assert name in mechir_nig.__all__ and name in dir(mechir_nig)


def test_every_lazy_name_resolves():
    for name in mechir_nig._LAZY:
        assert getattr(mechir_nig, name) is not None
    assert set(mechir_nig._LAZY) <= set(mechir_nig.__all__)


def test_import_is_lazy():
    code = (
        "import sys, mechir_nig; mechir_nig.InputError; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'HookedBertBase'"):
        mechir_nig.HookedBertBase  # noqa: B018 - removed before 0.1.0
