"""``NIGSettings``: the NIG options of a collection run, in one place, and the fingerprint of a run.

The same object configures ``attribute_collection``, ``split_half_stability`` and the CLI, is recorded
in a checkpoint, and decides whether a checkpoint may be resumed: a run continues only with the same
settings, the same pairs and the same model — identified by a hash of its config and weights, not by
its name, so a different model saved under the same name is refused and the same weights under another
path are accepted.

Example:
    >>> s = NIGSettings(n_steps=32, layers=[4, 5])
    >>> s.nig_kwargs()["n_steps"]
    32
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from mechir_nig.errors import InputError


@dataclass(frozen=True)
class NIGSettings:
    """NIG options shared by collection runs (see ``neuron_integrated_gradients`` for each one).

    Attributes:
        n_steps: intervals of the integration rule (``n_steps + 1`` points).
        baseline: a baseline name (``baselines.BASELINES``); tensors are per batch and belong to the
            NIG API, not to a collection run.
        method: the integration rule (``rules.RULES``).
        layers: layers to attribute (``None``: all).
        side: bi-encoders only: the interpolated side (``"doc"`` or ``"query"``).
        max_length: tokens per input (``None``: the model's).
        internal_batch_size: points per forward/backward (memory only: never changes results, so it is
            not part of the fingerprint).

    Example:
        >>> s = NIGSettings(n_steps=16, layers=[4, 5], internal_batch_size=64)
        >>> s.layers  # stored as a tuple (hashable)
        (4, 5)
        >>> sorted(s.record())  # what identifies the results: no internal_batch_size
        ['baseline', 'layers', 'max_length', 'method', 'n_steps', 'side']
        >>> s.resolved(ce).max_length  # validated for a model  # doctest: +SKIP
        512
    """

    n_steps: int = 32
    baseline: str = "pad"
    method: str = "riemann_trapezoid"
    layers: Sequence[int] | None = None
    side: str | None = None
    max_length: int | None = None
    internal_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.layers is not None and not isinstance(self.layers, tuple):  # hashable, and JSON as a list
            object.__setattr__(self, "layers", tuple(self.layers))

    def resolved(self, model: Any) -> NIGSettings:
        """Validated, with ``layers`` and ``max_length`` made explicit for ``model``."""
        from mechir_nig._validate import check_layers
        from mechir_nig.attribution.baselines import check_baseline
        from mechir_nig.attribution.rules import check_n_steps, check_rule

        if not isinstance(self.baseline, str):
            raise InputError(
                "a collection run takes a baseline name; tensors are per batch (use the NIG API)"
            )
        check_baseline(self.baseline)
        check_rule(self.method)
        check_n_steps(self.n_steps)
        if self.side is not None and model.pairwise:
            raise InputError(
                "side= is for bi-encoders; a cross-encoder interpolates query and document together"
            )
        if self.side not in (None, "doc", "query"):
            raise InputError(f"side must be 'doc' or 'query', got {self.side!r}")
        if self.internal_batch_size is not None and (
            isinstance(self.internal_batch_size, bool)
            or not isinstance(self.internal_batch_size, int)
            or self.internal_batch_size < 1
        ):
            raise InputError(
                f"internal_batch_size must be None or an int >= 1, got {self.internal_batch_size!r}"
            )
        layers = tuple(
            check_layers(list(self.layers) if self.layers is not None else None, model.cfg.n_layers)
        )
        return replace(self, layers=layers, max_length=self.max_length or model.max_length)

    def nig_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``neuron_integrated_gradients``."""
        kw = asdict(self)
        kw["layers"] = list(self.layers) if self.layers is not None else None
        return kw

    def record(self) -> dict[str, Any]:
        """What identifies the results (everything but ``internal_batch_size``), JSON-ready."""
        out = self.nig_kwargs()
        out.pop("internal_batch_size")
        return out


def model_fingerprint(model: Any) -> str:
    """SHA-256 of the model's config (without its name) and of every weight.

    Two loads of the same weights (from any path) give the same fingerprint; any changed weight,
    dtype or shape gives another. Computed afresh each call (weights can be edited in place); about
    0.2 s for a 22M-parameter model.

    Returns:
        64 hexadecimal characters.

    Example:
        >>> a = model_fingerprint(HookedCrossEncoder.from_pretrained(path))  # doctest: +SKIP
        >>> a == model_fingerprint(HookedCrossEncoder.from_pretrained(copy_of_path))  # doctest: +SKIP
        True
    """
    h = hashlib.sha256()
    cfg = model.cfg.to_dict()
    cfg.pop("model_name", None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
