"""Integrated-gradients baselines ``x'`` in word-embedding space.

Only the word embeddings are replaced; position and token-type embeddings and the attention mask are
those of the input. Names:

- ``pad``: query and document tokens -> ``[PAD]``; ``[CLS]``/``[SEP]`` kept (the paper's default).
- ``pad_all``: every attended token, ``[CLS]``/``[SEP]`` included, -> ``[PAD]``.
- ``doc``: only document tokens -> ``[PAD]`` (attribution conditional on the query).
- ``mask``: query and document tokens -> ``[MASK]``.
- ``zero``: zero word embeddings for every attended token.
- a tensor ``[batch, pos, d_embed]`` (or ``[pos, d_embed]``, broadcast over the batch) of word
  embeddings shaped like the tokenized batch.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.protocol import AttributionModel
from mechir_nig.models.tokenization import DOC, PAD, QUERY

BASELINES = ("pad", "pad_all", "doc", "mask", "zero")


def check_baseline(baseline: str | Tensor) -> str | Tensor:
    if isinstance(baseline, Tensor):
        return baseline
    if baseline not in BASELINES:
        raise InputError(
            f"unknown baseline {baseline!r}; use one of {BASELINES} or a [batch, pos, d_model] tensor"
        )
    return baseline


def baseline_embeddings(
    model: AttributionModel,
    input_ids: Int[Tensor, "batch pos"],
    groups: Int[Tensor, "batch pos"],
    baseline: str | Tensor,
) -> Float[Tensor, "batch pos d_embed"]:
    """Word embeddings of the baseline for a tokenized batch.

    Args:
        model (HookedEncoderBase): a hooked encoder (its ``word_embeddings``, tokenizer and
            ``cfg.pad_token_id``).
        input_ids: ``[batch, pos]`` token ids of the input.
        groups: ``[batch, pos]`` token groups (``PairBatch.groups``).
        baseline: a name of ``BASELINES`` or word embeddings ``[batch, pos, d_embed]`` /
            ``[pos, d_embed]`` (broadcast over the batch).

    Returns:
        ``[batch, pos, d_embed]`` word embeddings of the baseline ``x'``.

    Example:
        >>> batch = ce.tokenize(["what is a neuron"], ["A neuron is a cell."])
        >>> x0 = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")
        >>> x0.shape  # [batch, pos, d_embed]
        torch.Size([1, 15, 384])
    """
    check_baseline(baseline)
    b, p = input_ids.shape
    d = model.cfg.d_embed or model.cfg.d_model  # set in EncoderConfig.__post_init__
    if isinstance(baseline, Tensor):
        t = baseline.to(model.device, model.cfg.dtype)
        if t.shape == (p, d):
            t = t.expand(b, p, d)
        if t.shape != (b, p, d):
            raise InputError(
                f"baseline tensor has shape {tuple(baseline.shape)}; expected word embeddings shaped like the "
                f"tokenized batch: ({b}, {p}, {d}) or ({p}, {d})"
            )
        return t
    replace = baseline_replaced(groups, baseline)
    if baseline == "zero":
        return model.word_embeddings(input_ids) * (~replace).unsqueeze(-1)
    tok = model.tokenizer
    if baseline == "mask":
        if tok is None or tok.mask_token_id is None:
            raise InputError("baseline='mask' needs a tokenizer with a [MASK] token; use 'pad'")
        new_id = tok.mask_token_id
    else:
        new_id = model.cfg.pad_token_id
    ids = torch.where(replace, torch.full_like(input_ids, new_id), input_ids)
    return model.word_embeddings(ids)


def baseline_replaced(groups: Int[Tensor, "batch pos"], baseline: str) -> Tensor:
    """Bool ``[batch, pos]``: the positions whose word embedding the named ``baseline`` replaces (the
    others keep the input's token). Two rows with the same kept tokens, groups and mask have the same
    baseline input."""
    check_baseline(baseline)
    if baseline in ("pad", "mask"):
        return (groups == QUERY) | (groups == DOC)
    if baseline == "doc":
        return groups == DOC
    return groups != PAD  # pad_all, zero
