"""``HookedCrossEncoder``: a sequence-classification re-ranker of any supported family, with hooks.

Families: BERT (MonoBERT, MiniLM/TinyBERT), ELECTRA, RoBERTa/XLM-R (bge-reranker), DistilBERT; the
adapter is picked from ``config.json``'s ``model_type`` and hook names are the same for all. The
relevance score ``F(q, d)`` is the logit for 1-label checkpoints (``cross-encoder/ms-marco-*``) and
``log_softmax(logits)[:, 1]`` for 2-label checkpoints (castorini MonoBERT), rank-equal to MonoBERT's
softmax.

Example:
    >>> ce = HookedCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
    >>> batch = ce.tokenize(["what is a neuron"], ["A neuron is a cell of the nervous system."])
    >>> scores, cache = ce.run_with_cache(batch)
    >>> cache["blocks.0.mlp.hook_post"].shape  # [batch, pos, d_mlp]
    torch.Size([1, 19, 1536])
"""

from __future__ import annotations

import os
from typing import Any, Literal, overload

import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Logits, Resid, Scores
from mechir_nig.errors import InputError, ModelLoadError, UnsupportedArchitectureError
from mechir_nig.models import loading
from mechir_nig.models.components import ClassifierHead, Pooler
from mechir_nig.models.config import EncoderConfig
from mechir_nig.models.encoder import HookedEncoderBase
from mechir_nig.models.precision import check_dtype
from mechir_nig.models.reranker import PairReranker
from mechir_nig.models.tokenization import PairBatch, tokenize_pairs

ReturnType = Literal["score", "logits"] | None


class HookedCrossEncoder(HookedEncoderBase, PairReranker):
    """Cross-encoder (``...ForSequenceClassification``, 1 or 2 labels) of any supported family.

    Call it on a ``PairBatch`` (from :meth:`tokenize`) to get ``Float[Tensor, "batch"]`` scores.

    Example:
        >>> import torch
        >>> cfg = EncoderConfig(n_layers=2, n_heads=2, d_model=8, d_mlp=16, d_vocab=50, n_labels=1)
        >>> ce = HookedCrossEncoder(cfg)
        >>> ce.init_weights(seed=0)  # a tiny random model; real ones come from from_pretrained
        >>> ids = torch.tensor([[1, 5, 2, 7, 8, 2]])  # [batch, pos]: [CLS] q [SEP] d d [SEP]
        >>> types = torch.tensor([[0, 0, 0, 1, 1, 1]])
        >>> ce(ids, types, torch.ones_like(ids)).shape  # [batch]
        torch.Size([1])
        >>> ce = HookedCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> import tempfile  # offline: MiniLM's body under a seeded relevance head, saved here
        >>> from mechir_nig.testing import minilm_cross_encoder
        >>> ce = HookedCrossEncoder.from_pretrained(minilm_cross_encoder(tempfile.mkdtemp()))
        >>> ce.score(["what is a neuron"], ["A neuron is a cell."]).shape  # [n]
        torch.Size([1])
    """

    pooler: Pooler  # a cross-encoder always has its head's dense layer

    def __init__(self, cfg: EncoderConfig, tokenizer: Any = None, *, max_length: int | None = None):
        if cfg.n_labels not in (1, 2):
            raise UnsupportedArchitectureError(
                f"a cross-encoder needs 1 or 2 labels, got n_labels={cfg.n_labels}; "
                "1 = score is the logit, 2 = MonoBERT (score is log_softmax(logits)[:, 1])"
            )
        super().__init__(cfg, tokenizer, with_pooler=True)
        self.classifier = ClassifierHead(cfg)
        self.hook_score = HookPoint()  # [batch]
        self.max_length = max_length or min(cfg.n_ctx, 512)
        self.setup()

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        tokenizer: Any = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
    ) -> HookedCrossEncoder:
        """Load a ``...ForSequenceClassification`` checkpoint (BERT, ELECTRA, RoBERTa, XLM-R,
        DistilBERT) from a local folder or a hub id."""
        dtype = check_dtype(dtype)  # before reading the weights
        ckpt = loading.inspect_checkpoint(loading.resolve_checkpoint(name_or_path))
        return cls.from_checkpoint(
            ckpt,
            tokenizer=tokenizer,
            max_length=max_length,
            device=device,
            dtype=dtype,
            name=str(name_or_path),
        )

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: loading.Checkpoint,
        *,
        tokenizer: Any = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        name: str | None = None,
    ) -> HookedCrossEncoder:
        """Build from an inspected checkpoint (``loading.inspect_checkpoint``); see ``from_pretrained``."""
        folder = ckpt.folder
        if ckpt.kind == "bi":
            raise UnsupportedArchitectureError(
                f"{folder} holds a bare encoder ({ckpt.hf_config.get('architectures') or 'no head weights'}) "
                f"with no relevance head; HookedCrossEncoder loads {', '.join(ckpt.arch.cross_encoder_classes)} "
                "checkpoints (1 or 2 labels). For a bi-encoder use HookedBiEncoder."
            )
        if ckpt.kind == "other":
            raise ModelLoadError(
                f"{loading.describe_head(ckpt)}: a task head that is not a relevance head; "
                f"HookedCrossEncoder loads {', '.join(ckpt.arch.cross_encoder_classes)} re-rankers "
                "(fine-tune one, or load the bare encoder with HookedBiEncoder.from_pretrained(path, "
                "ignore_head=True))"
            )
        n_labels = ckpt.n_labels()  # the head's own shape, whatever config.json says
        if n_labels == 0:
            raise ModelLoadError(
                f"{ckpt.weights_file} has no classifier weights ({ckpt.arch.head[1]}.weight) although "
                f"{folder / 'config.json'} lists {ckpt.hf_config.get('architectures')}; the checkpoint is "
                "incomplete: save the trained re-ranker again (model.save_pretrained)"
            )
        if n_labels not in (1, 2):
            raise ModelLoadError(
                f"{ckpt.weights_file} has a classification head with {n_labels} labels; a relevance "
                "head has 1 (score = logit) or 2 (MonoBERT: score = log_softmax[:, 1]) labels; to study its "
                "encoder, load it with HookedBiEncoder.from_pretrained(path, ignore_head=True)"
            )
        cfg = EncoderConfig.from_hf(ckpt.hf_config, model_name=name or str(folder), n_labels=n_labels)
        cfg.dtype = dtype = check_dtype(dtype)
        sd = loading.convert_weights(ckpt, cfg, head=True)
        tok = loading.load_tokenizer(folder, tokenizer)
        loading.check_tokenizer(tok, cfg, str(folder), pairwise=True)
        model = cls(cfg, tok, max_length=max_length)
        loading.load_into(model, sd, ckpt)
        return model.to(device=device, dtype=dtype).freeze()

    # -- tokenization and scoring ------------------------------------------------------------------
    def tokenize(self, queries: Any, docs: Any, *, max_length: int | None = None) -> PairBatch:
        """Tokenize pairs with the tokenizer's template (BERT ``[CLS] q [SEP] d [SEP]``, RoBERTa
        ``<s> q </s></s> d </s>``); overlong documents are truncated and reported."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass tokenizer= to from_pretrained")
        batch = tokenize_pairs(
            self.tokenizer,
            queries,
            docs,
            max_length=max_length or self.max_length,
            n_ctx=self.cfg.n_ctx,
            use_token_types=self.cfg.n_token_types > 0,
        )
        return batch.to(self.device)

    def score_from_logits(self, logits: Logits) -> Scores:
        if self.cfg.n_labels == 1:
            return logits[:, 0]
        return torch.log_softmax(logits, dim=-1)[:, 1]

    @overload
    def forward(
        self,
        batch: PairBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: None = None,
        return_type: Literal["score"] = "score",
    ) -> Scores: ...

    @overload
    def forward(
        self,
        batch: PairBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: None = None,
        return_type: Literal["logits"],
    ) -> Logits: ...

    @overload
    def forward(
        self,
        batch: PairBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: None = None,
        return_type: None,
    ) -> None: ...

    @overload
    def forward(
        self,
        batch: PairBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: int,
        return_type: ReturnType = "score",
    ) -> Resid: ...

    def forward(
        self,
        batch: PairBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: int | None = None,
        return_type: ReturnType = "score",
    ) -> Tensor | None:
        """Relevance scores ``[batch]`` (or logits, nothing, or the residual stream).

        Args:
            batch: a ``PairBatch`` or ``input_ids`` ``[batch, pos]`` (then pass token types and mask).
            input_embeds: word embeddings ``[batch, pos, d_embed]`` used instead of ``W_E[input_ids]``.
            residual: with ``start_at_layer=k``, the residual stream before block ``k``.
            position_ids: explicit positions ``[batch, pos]`` (a batch's own are used by default);
                pass them with ``residual`` for an aligned batch of a rotary family.
            stop_at_layer: return the residual stream before this block instead of scores.
            position_ids: ``[batch, pos]`` position ids (default: the batch's, else ``0 .. pos-1``); with
                ``start_at_layer`` they reach the blocks, where relative positions (DeBERTa-v2) use them.
            return_type: ``"score"`` (``[batch]``), ``"logits"`` (``[batch, n_labels]``) or ``None``
                (run for the hooks only, as TransformerLens' ``return_type=None``).
        """
        if return_type not in ("score", "logits", None):
            raise InputError(f"return_type must be 'score', 'logits' or None, got {return_type!r}")
        resid, attention_mask = self._encode_batch(
            batch,
            PairBatch,
            token_type_ids,
            attention_mask,
            input_embeds=input_embeds,
            residual=residual,
            start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer,
            **({} if position_ids is None else {"position_ids": position_ids}),
        )
        if stop_at_layer is not None:
            return resid
        logits = self.classifier(self.pooler(resid, attention_mask))
        if return_type == "logits":
            return logits
        score = self.hook_score(self.score_from_logits(logits))
        return None if return_type is None else score
