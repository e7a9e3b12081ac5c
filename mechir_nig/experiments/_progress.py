"""Progress of a long call at the granularity of its batches: a tqdm bar and/or a callback.

Example:
    >>> seen = []
    >>> with Progress(3, "demo", "batch", show=False, callback=seen.append) as p:
    ...     for _ in range(3):
    ...         p.update()
    >>> seen
    [1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Counts units of work (forward batches): ``update(n)`` moves the bar (when ``show``) and calls
    ``callback`` with the units done so far; :meth:`hook` is a forward hook that counts one unit per
    forward pass through the hook point it is put on (``model.hooks(fwd_hooks=[(name, p.hook)])``).

    Example:
        >>> with Progress(2, "demo", "batch", show=False) as p:
        ...     p.update(2)
        >>> p.done
        2
    """

    def __init__(
        self, total: int, desc: str, unit: str, show: bool, callback: Callable[[int], None] | None = None
    ) -> None:
        self.total, self.done, self.callback = total, 0, callback
        self.bar: Any = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done)

    def hook(self, act: Any, hook: Any) -> None:
        """A forward hook (TransformerLens' ``fn(act, hook)``) counting one unit; the activation is kept."""
        self.update(1)
