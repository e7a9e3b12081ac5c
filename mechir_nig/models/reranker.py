"""What every pair reranker shares: scoring in length-sorted chunks and the attribution protocol.

A pair reranker (``HookedCrossEncoder``, ``HookedDecoderReranker``, ``HookedMonoT5``) reads a query and
a document as one input (``tokenize`` gives a ``PairBatch``) and returns one score per pair from
``forward``; NIG interpolates the word embeddings of the whole input. The classes differ in their
tokenization and forward pass only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from jaxtyping import Float
from torch import Tensor

from mechir_nig._types import Scores
from mechir_nig.errors import InputError
from mechir_nig.models.precision import check_finite
from mechir_nig.models.protocol import BatchRunner
from mechir_nig.models.tokenization import PairBatch


@torch.no_grad()
def run_sorted(model: BatchRunner, batch: Any, *, batch_size: int, trailing: tuple[int, ...] = ()) -> Tensor:
    """``model(batch)`` in chunks of ``batch_size`` rows, longest first, returned in input order (CPU,
    in the model's accumulation dtype); a non-finite output (float16 overflow) is an error."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    order = torch.argsort(batch.lengths.cpu(), descending=True)
    out = torch.empty(len(batch), *trailing, dtype=model.cfg.acc_dtype)
    for i in range(0, len(batch), batch_size):
        idx = order[i : i + batch_size]
        out[idx] = model(batch.select(idx)).to(out.dtype).cpu()
    check_finite(model, "embeddings" if trailing else "scores", out)
    return out


class PairReranker:
    """Scoring and the attribution protocol (``mechir_nig.models.protocol``) of a pair reranker; the
    class mixing it in gives ``tokenize`` and ``forward``."""

    pairwise = True

    if TYPE_CHECKING:  # given by the class mixing this in (an nn.Module)

        def tokenize(self, queries: Any, docs: Any, *, max_length: int | None = None) -> PairBatch: ...

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def attribution_inputs(
        self, queries: Any, docs: Any, *, side: str | None = None, max_length: int | None = None
    ) -> tuple[PairBatch, None]:
        """The batch NIG interpolates: the whole pair (``side`` must be ``None``)."""
        if side is not None:
            raise InputError("side= is for bi-encoders; a reranker interpolates query and document together")
        return self.tokenize(queries, docs, max_length=max_length), None

    def check_attribution_batch(self, batch: Any, other: Tensor | None) -> None:
        if not isinstance(batch, PairBatch):
            raise InputError("a reranker attributes a PairBatch: batch = model.tokenize(queries, docs)")
        if other is not None:
            raise InputError("other= is for bi-encoders only")

    def score_embeds(
        self,
        input_embeds: Float[Tensor, "batch pos d_embed"],
        token_type_ids: Tensor,
        attention_mask: Tensor,
        other: Tensor | None = None,
    ) -> Scores:
        """``F`` of word embeddings (the input Integrated Gradients interpolates)."""
        out: Scores = self(None, token_type_ids, attention_mask, input_embeds=input_embeds)
        return out

    @torch.no_grad()
    def score(
        self, queries: Any, docs: Any, *, batch_size: int = 32, max_length: int | None = None
    ) -> Float[Tensor, " n"]:
        """Scores of ``n`` pairs, batched by length internally, in input order (on CPU)."""
        return self.score_batch(self.tokenize(queries, docs, max_length=max_length), batch_size=batch_size)

    @torch.no_grad()
    def score_batch(self, batch: PairBatch, *, batch_size: int = 32) -> Float[Tensor, " n"]:
        """Scores of a tokenized batch, in its row order (on CPU)."""
        return run_sorted(cast(BatchRunner, self), batch, batch_size=batch_size)  # the mixing class's cfg
