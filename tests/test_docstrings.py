"""Every public function and class has a docstring with an example, and shapes where tensors are involved.

The public API is the ``__all__`` of the package and of each public subpackage/module listed in
:data:`PUBLIC_MODULES`; a module without ``__all__`` contributes the public (non-underscore)
functions and classes defined in it. Exceptions and warnings need a docstring but no example.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator

import pytest

PUBLIC_MODULES = [
    "mechir_nig",
    "mechir_nig.models",
    "mechir_nig.attribution",
    "mechir_nig.attribution.stats",
    "mechir_nig.attribution.settings",
    "mechir_nig.sets",
    "mechir_nig.interventions",
    "mechir_nig.interventions.ablation",
    "mechir_nig.interventions.patching",
    "mechir_nig.interventions.perturb",
    "mechir_nig.interventions.directions",
    "mechir_nig.analysis",
    "mechir_nig.analysis.features",
    "mechir_nig.analysis.probes",
    "mechir_nig.analysis.embedding",
    "mechir_nig.analysis.weights",
    "mechir_nig.data",
    "mechir_nig.evaluation",
    "mechir_nig.experiments",
    "mechir_nig.experiments.attribute",
    "mechir_nig.experiments.collection",
    "mechir_nig.experiments.pruning",
    "mechir_nig.experiments.faithfulness",
    "mechir_nig.plotting",
    "mechir_nig.report",
    "mechir_nig.statistics",
    "mechir_nig.findings",
    "mechir_nig.runtime.distributed",
    "mechir_nig.errors",
]

# defined outside the documented surface: CLI internals, test helpers, model building blocks
EXCLUDED_MODULE_PREFIXES = (
    "mechir_nig.cli",
    "mechir_nig.testing",
    "mechir_nig.models.architectures",
    "mechir_nig.models.components",
)

# names that take or return tensors (or tensor-holding results) without saying so in a
# ``Tensor``/``Float[...]``/``Int[...]`` annotation: their docstrings must state shapes too
TENSOR_NAMES = {
    "HookedCrossEncoder",
    "HookedBiEncoder",
    "PairBatch",
    "TextBatch",
    "NeuronAttribution",
    "NeuronIntegratedGradients",
    "neuron_integrated_gradients",
    "CollectionAttribution",
    "NeuronSet",
    "ComponentSet",
    "attribute_collection",
}

_TENSOR_ANNOTATION = re.compile(r"\b(?:Tensor|Float|Int|Bool)\b")
# a shape: ``Float[...]``/``Int[...]``, a bracketed list of dims such as ``[batch, pos]`` (not an
# indexing ``x[0]``, a generic ``list[str]`` or a token ``[CLS]``), or the word shape(s)
_SHAPE = re.compile(r"\b(?:Float|Int|Bool)\[|(?<![\w\]\)])\[(?![A-Z]+\])[^\[\]\n]+\]|\b[Ss]hapes?\b")


def _module_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module_name
    ]


def public_api() -> Iterator[tuple[str, object]]:
    """Yield ``(qualified name, object)`` for every public function and class, once each."""
    seen: set[int] = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in _module_names(module_name):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants (GROUPS, __version__), type aliases
            defined_in = getattr(obj, "__module__", "") or ""
            if defined_in.startswith(EXCLUDED_MODULE_PREFIXES) or name.startswith("check_"):
                continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{defined_in}.{obj.__qualname__}", obj


def _annotations(obj: object) -> list[str]:
    targets = [obj]
    if inspect.isclass(obj):
        targets = [*inspect.getmro(obj)[:-1], obj.__init__]
    texts: list[str] = []
    for target in targets:
        try:
            annotations = inspect.get_annotations(target)
        except TypeError:
            continue
        texts += [a if isinstance(a, str) else repr(a) for a in annotations.values()]
    return texts


def _without_doctest_output(doc: str) -> str:
    """``doc`` without the expected output of its doctests (a printed ``[2.0, 2.0]`` is not a shape);
    the example lines themselves stay (their comments often give shapes)."""
    kept, in_output = [], False
    for line in doc.splitlines():
        text = line.strip()
        if text.startswith((">>>", "...")):
            kept.append(line)
            in_output = True
        elif not text:
            kept.append(line)
            in_output = False
        elif not in_output:
            kept.append(line)
    return "\n".join(kept)


def _takes_tensors(name: str, obj: object) -> bool:
    if name.rsplit(".", 1)[-1] in TENSOR_NAMES:
        return True
    return any(_TENSOR_ANNOTATION.search(a) for a in _annotations(obj))


def _is_error(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, (BaseException, Warning))


def _problems(name: str, obj: object) -> list[str]:
    doc = obj.__doc__ if inspect.isfunction(obj) else obj.__dict__.get("__doc__")  # type: ignore[attr-defined]
    doc = inspect.cleandoc(doc) if doc else ""
    if not doc.strip():
        return ["no docstring"]
    if _is_error(obj):
        return []
    problems = []
    if ">>>" not in doc:
        problems.append("no example (>>>)")
    if _takes_tensors(name, obj) and not _SHAPE.search(_without_doctest_output(doc)):
        problems.append("tensors but no shapes")
    return problems


def test_public_api_is_found() -> None:
    names = [name for name, _ in public_api()]
    assert len(names) > 50, names
    assert "mechir_nig.attribution.nig.api.neuron_integrated_gradients" in names


def test_public_api_has_docstrings_with_examples_and_shapes() -> None:
    offenders = [
        f"{name}: {', '.join(problems)}" for name, obj in public_api() if (problems := _problems(name, obj))
    ]
    if offenders:
        pytest.fail(
            f"{len(offenders)} public names need docstring work:\n  " + "\n  ".join(offenders),
            pytrace=False,
        )


def test_checker_flags_what_is_missing() -> None:
    import torch

    def bare(x: torch.Tensor) -> torch.Tensor:
        return x

    def no_example(x: torch.Tensor) -> torch.Tensor:
        """Doubles ``x`` ``[batch, pos]``."""
        return 2 * x

    def no_shape(x: torch.Tensor) -> torch.Tensor:
        """Doubles ``x``.

        Example:
            >>> no_shape(torch.ones(2)).tolist()
            [2.0, 2.0]
        """
        return 2 * x

    def fine(x: torch.Tensor) -> torch.Tensor:
        """Doubles ``x`` (any shape: ``[*]``).

        Example:
            >>> fine(torch.ones(2)).tolist()
            [2.0, 2.0]
        """
        return 2 * x

    class Oops(Exception):
        """Raised for nothing."""

    assert _problems("bare", bare) == ["no docstring"]
    assert _problems("no_example", no_example) == ["no example (>>>)"]
    assert _problems("no_shape", no_shape) == ["tensors but no shapes"]
    assert _problems("fine", fine) == []
    assert _problems("Oops", Oops) == []
    assert not _SHAPE.search("``list[str]`` of ``[CLS]`` tokens, ``x[0]``")
