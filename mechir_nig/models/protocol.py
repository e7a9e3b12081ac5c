"""The interface attribution (and later interventions) use, instead of ``isinstance`` on model classes.

``HookedCrossEncoder`` and ``HookedBiEncoder`` implement it; a new model kind (e.g. a late-interaction
scorer) does so by providing these members.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._types import Scores, Tokens
from mechir_nig.models.config import EncoderConfig


@runtime_checkable
class AttributionModel(Protocol):
    """What NIG needs of a model.

    Attributes:
        cfg: the encoder config (``d_embed``, ``d_mlp``, ``n_layers`` ...).
        tokenizer: the model's tokenizer (``None`` allowed: no display tokens).
        pairwise: ``True`` when the score reads a (query, doc) pair in one input (cross-encoder);
            ``False`` when one side is interpolated against the other side's fixed embedding.

    Example:
        >>> from mechir_nig.models import EncoderConfig, HookedBiEncoder
        >>> be = HookedBiEncoder(EncoderConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=16, d_vocab=50))
        >>> isinstance(be, AttributionModel), be.pairwise
        (True, False)
    """

    cfg: EncoderConfig
    tokenizer: Any
    pairwise: bool

    @property
    def device(self) -> torch.device: ...

    def word_embeddings(self, input_ids: Tokens) -> Float[Tensor, "batch pos d_embed"]:
        """Word embeddings of token ids (the space the path is drawn in)."""
        ...

    def attribution_inputs(
        self, queries: Any, docs: Any, *, side: str | None = None, max_length: int | None = None
    ) -> tuple[Any, Tensor | None]:
        """(batch to interpolate, the fixed side's embeddings or ``None``) for (query, doc) pairs;
        the batch has ``input_ids``, ``token_type_ids``, ``attention_mask``, ``groups``, ``lengths``."""
        ...

    def check_attribution_batch(self, batch: Any, other: Tensor | None) -> None:
        """Raise ``InputError`` saying what to fix when ``(batch, other)`` cannot be attributed."""
        ...

    def score_embeds(
        self,
        input_embeds: Float[Tensor, "batch pos d_embed"],
        token_type_ids: Tensor,
        attention_mask: Tensor,
        other: Tensor | None = None,
    ) -> Scores:
        """The score ``F`` from word embeddings (and the fixed side's embeddings ``other``)."""
        ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any:
        """TransformerLens' scoped hook context (``HookedRootModule.hooks``)."""
        ...
