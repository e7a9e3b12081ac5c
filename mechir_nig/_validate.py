"""Argument checks shared by the whole package: each raises ``InputError`` saying what to fix.

One place for the integer, choice and fraction checks that every public function needs, so messages
read the same everywhere.

Example:
    >>> check_int(8, "batch_size", minimum=1)
    8
    >>> check_choice("mean", "pooling", ("mean", "cls"))
    'mean'
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from mechir_nig.errors import InputError

T = TypeVar("T")


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False
) -> Any:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]`` (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    want = "an int" + (" " + " and ".join(bounds) if bounds else "") + (" (or None)" if allow_none else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be {want}, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputError(f"{name} must be {want}, got {value!r}")
    return value


def check_choice(value: T, name: str, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise InputError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_fraction(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a float in ``(0, 1]`` (``[0, 1]`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{name} must be a number in (0, 1], got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise InputError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
    return float(value)
