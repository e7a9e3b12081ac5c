"""The interfaces attribution, interventions and experiments use, instead of ``isinstance`` on model classes.

:class:`AttributionModel` is what NIG needs; :class:`HookedModel` adds tokenizing, scoring and
TransformerLens' hooking API (what ablation, patching, the engine and the studies need);
:class:`BiEncoderModel` adds a bi-encoder's ``encode`` / ``similarity_fn``. ``HookedCrossEncoder`` and
``HookedBiEncoder`` implement them; a new model kind (e.g. a late-interaction scorer) does so by providing
these members. :class:`Scorer` is what re-ranking needs of a per-side scorer (an ``Ablation``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.ActivationCache import ActivationCache

from mechir_nig._types import Mask, Resid, Scores, Tokens
from mechir_nig.models.config import EncoderConfig
from mechir_nig.models.tokenization import PairBatch, TextBatch


@runtime_checkable
class Configured(Protocol):
    """A model's config and device: what a precision check (``models.precision.check_finite``) reads."""

    cfg: EncoderConfig

    @property
    def device(self) -> torch.device: ...


@runtime_checkable
class BatchRunner(Configured, Protocol):
    """A model run on a tokenized batch: ``model(batch)`` gives one row per input (``reranker.run_sorted``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


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

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The weights (``torch.nn.Module.parameters``; frozen while attributing)."""
        ...


#: A forward hook as TransformerLens calls it: ``hook(activation, hook=HookPoint)``.
HookFn = Callable[..., Any]
#: ``(hook name or name filter, hook)`` pairs, as ``run_with_hooks(fwd_hooks=...)`` takes them.
FwdHooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]


@runtime_checkable
class HookedModel(AttributionModel, Protocol):
    """What the interventions, experiments and settings need of a hooked model: :class:`AttributionModel`
    plus tokenizing, scoring and TransformerLens' hooking API.

    ``HookedCrossEncoder`` and ``HookedBiEncoder`` implement it. Members only one kind has (a
    bi-encoder's ``encode`` and ``similarity_fn``) are read after checking ``pairwise``.

    Attributes:
        max_length: the default tokenization length (``tokenize`` truncates to it).

    Example:
        >>> from mechir_nig.models import EncoderConfig, HookedCrossEncoder
        >>> ce = HookedCrossEncoder(EncoderConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=16, d_vocab=50, n_labels=1))
        >>> isinstance(ce, HookedModel), ce.pairwise
        (True, True)
    """

    max_length: int

    def tokenize(self, *args: Any, **kwargs: Any) -> PairBatch | TextBatch:
        """A ``PairBatch`` of (queries, docs) for a cross-encoder, a ``TextBatch`` of texts for a bi-encoder."""
        ...

    def score(
        self, queries: Any, docs: Any, *, batch_size: int = 32, max_length: int | None = None
    ) -> Float[Tensor, " n"]:
        """Scores of ``n`` (query, doc) pairs, in input order (on CPU)."""
        ...

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Scores (cross-encoder) or embeddings (bi-encoder); the residual stream with ``stop_at_layer``."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def encoder_forward(
        self,
        input_ids: Tokens | None = None,
        token_type_ids: Tokens | None = None,
        attention_mask: Mask | None = None,
        *,
        input_embeds: Float[Tensor, "batch pos d_embed"] | None = None,
        residual: Resid | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        position_ids: Tokens | None = None,
    ) -> Resid:
        """The residual stream after the requested blocks (``HookedEncoderBase.encoder_forward``)."""
        ...

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: FwdHooks = (),
        bwd_hooks: FwdHooks = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """``forward`` with temporary hooks (TransformerLens' ``run_with_hooks``)."""
        ...

    @overload
    def run_with_cache(
        self, *model_args: Any, return_cache_object: Literal[True] = True, **kwargs: Any
    ) -> tuple[Any, ActivationCache]: ...

    @overload
    def run_with_cache(
        self, *model_args: Any, return_cache_object: Literal[False], **kwargs: Any
    ) -> tuple[Any, dict[str, Tensor]]: ...

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any
    ) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """``forward`` and the activations it cached (TransformerLens' ``run_with_cache``)."""
        ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...


@runtime_checkable
class BiEncoderModel(HookedModel, Protocol):
    """A :class:`HookedModel` that encodes queries and documents apart (``pairwise`` false), as
    ``HookedBiEncoder`` does; code holding a ``HookedModel`` reads these members after checking
    ``not model.pairwise``.

    Example:
        >>> from mechir_nig.models import EncoderConfig, HookedBiEncoder, HookedCrossEncoder
        >>> cfg = EncoderConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=16, d_vocab=50, n_labels=1)
        >>> isinstance(HookedBiEncoder(cfg), BiEncoderModel), isinstance(HookedCrossEncoder(cfg), BiEncoderModel)
        (True, False)
    """

    def encode(
        self, texts: Any, *, batch_size: int = 32, max_length: int | None = None
    ) -> Float[Tensor, "n d_model"]:
        """Embeddings of ``n`` texts, in input order (on CPU)."""
        ...

    def similarity_fn(
        self, q: Float[Tensor, "n d_model"], d: Float[Tensor, "n d_model"]
    ) -> Float[Tensor, " n"]:
        """Row-wise similarity of encoded embeddings."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """What re-ranking (``evaluation.rerank``) and the studies need of a scorer that encodes per side.

    An :class:`~mechir_nig.interventions.ablation.Ablation` implements it: its ``encode`` ablates only the
    sides it covers. ``sides`` declares the sides ``encode(texts, side=...)`` tells apart; a plain model
    (``encode(texts, batch_size=...)`` without sides) is not a ``Scorer`` and is called without ``side``.

    Example:
        >>> from mechir_nig.interventions.ablation import Ablation
        >>> all(hasattr(Ablation, m) for m in ("sides", "score", "encode", "similarity_fn"))
        True
    """

    pairwise: bool
    sides: tuple[str, ...]

    def score(
        self, queries: Sequence[str], docs: Sequence[str], *, batch_size: int = 32
    ) -> Float[Tensor, " n"]:
        """Scores of ``n`` (query, doc) pairs."""
        ...

    def encode(
        self, texts: Sequence[str], *, side: str = "doc", batch_size: int = 32
    ) -> Float[Tensor, "n d_model"]:
        """Embeddings of ``n`` texts encoded as ``side`` (bi-encoders)."""
        ...

    def similarity_fn(
        self, q: Float[Tensor, "n d_model"], d: Float[Tensor, "n d_model"]
    ) -> Float[Tensor, " n"]:
        """Similarity of encoded rows (bi-encoders)."""
        ...


@dataclass(eq=False)
class Forward:
    """One forward pass of a model: the batch it reads (``None`` for raw tensors). Hooks that need the
    batch (token groups, a baseline input, per-forward draws) read it with :func:`current_forward`;
    a new object per pass, so ``is`` tells passes apart."""

    model: AttributionModel | None
    batch: Any


_FORWARD: ContextVar[Forward | None] = ContextVar("mechir_nig_forward", default=None)


@contextmanager
def forward_context(model: AttributionModel | None, batch: Any) -> Iterator[Forward]:
    """Declare the batch of the forward pass run inside the block (models do this in ``forward``).

    Example:
        >>> with forward_context(None, "batch") as fwd:
        ...     current_forward() is fwd, current_forward().batch
        (True, 'batch')
        >>> current_forward() is None
        True
    """
    fwd = Forward(model, batch)
    token = _FORWARD.set(fwd)
    try:
        yield fwd
    finally:
        _FORWARD.reset(token)


def current_forward() -> Forward | None:
    """The innermost :class:`Forward` being run (``None`` outside a model's forward)."""
    return _FORWARD.get()
