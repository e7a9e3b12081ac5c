"""Argument checks shared by the whole package: each raises ``InputError`` saying what to fix.

One place for the integer, choice, fraction and layer-list checks that every public function needs, so
messages read the same everywhere.

Example:
    >>> check_int(8, "batch_size", minimum=1)
    8
    >>> check_choice("mean", "pooling", ("mean", "cls"))
    'mean'
    >>> check_layers([3, 1], n_layers=6), check_layers(None, n_layers=2)
    ([1, 3], [0, 1])
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from mechir_nig.errors import InputError

T = TypeVar("T")


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
    hint: str = "",
    alternative: str = "",
) -> Any:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]`` (or ``None`` when allowed).

    ``hint``, when given, ends the message (what the value means or how to fix it); ``alternative``
    names what else is accepted (the caller checks it first), e.g. ``"'auto'"``.
    """
    if value is None and allow_none:
        return None
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    want = ("None or " if allow_none else "") + "an int" + (" " + " and ".join(bounds) if bounds else "")
    want += f" or {alternative}" if alternative else ""
    end = f"; {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be {want}, got {value!r} ({type(value).__name__}){end}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputError(f"{name} must be {want}, got {value!r}{end}")
    return value


def check_bool(value: Any, name: str, *, allow_none: bool = False) -> Any:
    """``value`` if it is ``True`` or ``False`` (or ``None`` when allowed); never a truthy stand-in.

    Example:
        >>> check_bool(True, "per_query")
        True
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, bool):
        want = "True, False or None" if allow_none else "a bool (True or False)"
        raise InputError(f"{name} must be {want}, got {value!r}")
    return value


def check_choice(value: T, name: str, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise InputError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_fraction(value: Any, name: str, *, allow_zero: bool = False, hint: str = "") -> float:
    """``value`` as a float in ``(0, 1]`` (``[0, 1]`` with ``allow_zero``); ``hint`` as in :func:`check_int`.

    Example:
        >>> check_fraction(0.25, "fraction")
        0.25
    """
    interval = f"{'[0' if allow_zero else '(0'}, 1]"
    end = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a real number in {interval}{end}, got {value!r}")
    share = float(value)
    if not ((share >= 0 if allow_zero else share > 0) and share <= 1):
        raise InputError(f"{name} must be in {interval}{end}, got {value!r}")
    return share


def check_number(
    value: Any,
    name: str,
    *,
    minimum: int | float,
    strict: bool = False,
    finite: bool = True,
    hint: str = "",
    noun: str = "a number",
) -> float:
    """``value`` as a float: a real number (not a bool) ``>= minimum`` (``> minimum`` when ``strict``),
    finite unless ``finite=False``. The message reads "``name`` must be ``noun`` >= ``minimum``
    (``hint``)".

    Example:
        >>> check_number(0.01, "tol", minimum=0, strict=True)
        0.01
        >>> check_number(-1, "rrf_k", minimum=0, hint="60 is the usual constant", noun="a finite number")
        Traceback (most recent call last):
        ...
        mechir_nig.errors.InputError: rrf_k must be a finite number >= 0 (60 is the usual constant), got -1
    """
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if (
        math.isnan(number)
        or (finite and math.isinf(number))
        or not (number > minimum or (not strict and number == minimum))
    ):
        end = f" ({hint})" if hint else ""
        raise InputError(f"{name} must be {noun} {'>' if strict else '>='} {minimum:g}{end}, got {value!r}")
    return number


def as_int(value: Any, what: str) -> int:
    """An integer (Python, numpy or 0-d torch), never a bool or a float."""
    if isinstance(value, bool):
        raise InputError(f"{what} must be an integer, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None


def check_layers(layers: Any, n_layers: int, what: str = "layers") -> list[int]:
    """Sorted, distinct, in-range layer indices; ``None`` means every layer, one integer one layer.

    Args:
        layers: ``None``, a layer index, or an iterable of layer indices (Python, numpy or 0-d torch ints).
        n_layers: the model's layer count; valid layers are ``0 .. n_layers - 1``.
        what: the argument's name, for messages.

    Raises:
        InputError: for a non-integer, out-of-range or repeated layer, or an empty list.
    """
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers,)
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        raise InputError(f"{what} must be an iterable of layer indices, got {type(layers).__name__}")
    out = [as_int(layer, f"each of {what}" if what != "layers" else "each layer") for layer in layers]
    if not out:
        raise InputError(f"{what} is empty; give at least one layer index or None for all layers")
    bad = [layer for layer in out if not 0 <= layer < n_layers]
    if bad:
        raise InputError(
            f"{what} {bad} are out of range for a model with {n_layers} layers: layer {bad[0]} is out of "
            f"range; layers must be ints in 0..{n_layers - 1}"
        )
    if len(set(out)) != len(out):
        raise InputError(f"{what} has duplicates: {out}; list each layer once (do not repeat a layer)")
    return sorted(out)
