"""``caller_stacklevel``: the ``stacklevel`` that makes a warning point at the user's line.

A warning raised deep inside the package (a loader called by ``load_collection``, called by the user)
names the first frame outside ``mechir_nig``, whatever the depth of the call inside it.
"""

from __future__ import annotations

import sys
from types import FrameType

# frames that are not the user's: the package, the runtime type checkers that wrap its functions (a
# jaxtyping import hook under pytest), and contextlib (a warning from a context manager's exit)
_INTERNAL = ("mechir_nig", "jaxtyping", "typeguard", "beartype", "contextlib")


def caller_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` called by the caller of this function: the first
    frame outside the package (the user's code; wrappers of type checkers and contextlib skipped), 1
    being the calling frame itself.

    Example:
        >>> import warnings
        >>> def f():
        ...     warnings.warn("x", UserWarning, stacklevel=caller_stacklevel())
        >>> caller_stacklevel() >= 1
        True
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _module(frame) != "mechir_nig":  # this function's own wrappers
        frame = frame.f_back
    level = 1  # the frame calling warnings.warn
    while frame is not None and _module(frame) in _INTERNAL:
        frame = frame.f_back
        level += 1
    return max(1, level - 1) if frame is None else level


def _module(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".")[0]
