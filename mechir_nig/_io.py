"""Atomic writes of result objects: tensors in safetensors, the rest in a JSON sidecar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor


def save_with_sidecar(path: str | Path, tensors: dict[str, Tensor], side: dict[str, Any]) -> Path:
    """Write ``path`` (safetensors) and ``path.json`` (``side``), each to a temporary name then renamed,
    so neither is ever half-written."""
    from safetensors.torch import save_file

    path = Path(path)
    json_path = path.with_suffix(path.suffix + ".json")
    for target, write in (
        (json_path, lambda tmp: tmp.write_text(json.dumps(side))),
        (path, lambda tmp: save_file(tensors, str(tmp))),
    ):
        tmp = target.with_name(target.name + ".tmp")
        write(tmp)
        os.replace(tmp, target)
    return path
