"""Which dtypes a hooked model runs in, and the check that turns an overflow into an error, not garbage.

``from_pretrained(..., dtype=...)`` takes float32 (default), float64 (exact reference work),
bfloat16 or float16 (as a ``torch.dtype`` or a name such as ``"bf16"``). Scores, embeddings and NIG
results are returned in ``cfg.acc_dtype`` (float32, float64 for a float64 model) whatever the model's
dtype. A float16 model (or ``torch.autocast(dtype=torch.float16)``) can overflow: a NaN or infinite
score, embedding, patched score or attribution raises :class:`~mechir_nig.errors.PrecisionError`
naming the fix. See docs/nig.md ("Low precision") for the measured error of each dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mechir_nig.errors import InputError, PrecisionError
from mechir_nig.models.protocol import Configured

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
"""Names accepted for ``dtype=`` and the dtype each stands for."""

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` as a supported ``torch.dtype`` (a dtype or a name in ``DTYPES``); else ``InputError``."""
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype.lower().removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"dtype must be one of torch.float32, torch.float64, torch.bfloat16, torch.float16 (or a name: "
            f"{', '.join(DTYPES)}), got {dtype!r}"
        )
    return dtype


def _compute_dtype(model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the blocks really ran in: the autocast dtype when autocast is on, else the model's."""
    kind = device.type if device.type in ("cpu", "cuda", "xpu", "mps") else "cpu"
    try:
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
    except (RuntimeError, TypeError, AttributeError):  # a device type without autocast
        pass
    return model_dtype


def check_finite(model: Configured, what: str, *tensors: Tensor | None) -> None:
    """Raise ``PrecisionError`` if any of ``tensors`` holds a NaN or an infinity (``what`` names them)."""
    bad = [
        t for t in tensors if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if not bad:
        return
    cfg = model.cfg
    ran = _compute_dtype(cfg.dtype, model.device)
    if ran == torch.float16:
        how = "float16 under torch.autocast" if ran != cfg.dtype else "a float16 model"
        fix = (
            "activations overflowed float16's range (largest value 65504); run in bfloat16 "
            "(dtype=torch.bfloat16 or autocast(dtype=torch.bfloat16): float32's range, fewer mantissa bits) "
            "or float32"
        )
    else:
        how = f"a {str(ran).removeprefix('torch.')} model"
        fix = "check the weights and inputs for NaN or infinite values (e.g. a corrupted checkpoint)"
    raise PrecisionError(f"{what} came out NaN or infinite with {how}: {fix}")
