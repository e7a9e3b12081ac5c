"""``HookedCrossEncoder``: a BERT sequence-classification re-ranker with TransformerLens hooks.

The relevance score ``F(q, d)`` is the logit for 1-label checkpoints (``cross-encoder/ms-marco-*``)
and ``log_softmax(logits)[:, 1]`` for 2-label checkpoints (castorini MonoBERT), rank-equal to
MonoBERT's softmax.

Example:
    >>> ce = HookedCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
    >>> batch = ce.tokenize(["what is a neuron"], ["A neuron is a cell of the nervous system."])
    >>> scores, cache = ce.run_with_cache(batch)
    >>> cache["blocks.0.mlp.hook_post"].shape  # [batch, pos, d_mlp]
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig.errors import InputError, ModelLoadError, UnsupportedArchitectureError
from mechir_nig.models import loading
from mechir_nig.models.config import EncoderConfig
from mechir_nig.models.encoder import HookedBertBase
from mechir_nig.models.tokenization import PairBatch, tokenize_pairs


class ClassifierHead(nn.Module):
    """Linear classifier on the pooler output; ``hook_logits`` [batch, n_labels]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.n_labels, cfg.d_model, dtype=cfg.dtype))  # nn.Linear layout
        self.b = nn.Parameter(torch.zeros(cfg.n_labels, dtype=cfg.dtype))
        self.hook_logits = HookPoint()  # [batch, n_labels]

    def forward(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch n_labels"]:
        return self.hook_logits(F.linear(pooled, self.W, self.b))


class HookedCrossEncoder(HookedBertBase):
    """BERT cross-encoder (``BertForSequenceClassification``, 1 or 2 labels) with hooks.

    Call it on a ``PairBatch`` (from :meth:`tokenize`) to get ``Float[Tensor, "batch"]`` scores.
    """

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
        dtype: torch.dtype = torch.float32,
    ) -> HookedCrossEncoder:
        """Load a ``BertForSequenceClassification`` checkpoint from a local folder or a hub id."""
        folder = loading.resolve_checkpoint(name_or_path)
        hf_cfg = loading.read_config(folder)
        archs = hf_cfg.get("architectures") or []
        if archs and "BertForSequenceClassification" not in archs:
            raise UnsupportedArchitectureError(
                f"{folder} holds a {archs} checkpoint, which has no relevance head; HookedCrossEncoder "
                "loads BertForSequenceClassification (1 or 2 labels). For a BertModel use HookedBiEncoder."
            )
        weights = loading.load_state_dict(folder)
        head_w = weights.get("classifier.weight")
        if head_w is None:
            raise UnsupportedArchitectureError(
                f"{folder} has no classifier weights; HookedCrossEncoder needs a trained "
                "BertForSequenceClassification head (use HookedBiEncoder for a bare BertModel)"
            )
        n_labels = head_w.shape[0]  # the head's own shape, whatever config.json says
        cfg = EncoderConfig.from_hf(hf_cfg, model_name=str(name_or_path), n_labels=n_labels)
        cfg.dtype = dtype
        sd, head = loading.convert_bert_state_dict(weights, cfg.n_layers)
        if "pooler.W" not in sd:
            raise ModelLoadError(
                f"{folder} has no pooler weights (bert.pooler.dense.*); the classifier reads them"
            )
        sd["classifier.W"], sd["classifier.b"] = head["classifier.weight"], head["classifier.bias"]
        model = cls(cfg, loading.load_tokenizer(folder, tokenizer), max_length=max_length)
        model.load_state_dict(sd, strict=True)
        return model.to(device=device, dtype=dtype).freeze()

    # -- tokenization and scoring ------------------------------------------------------------------
    def tokenize(self, queries: Any, docs: Any, *, max_length: int | None = None) -> PairBatch:
        """Tokenize pairs ``[CLS] q [SEP] d [SEP]``; overlong documents are truncated and reported."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass tokenizer= to from_pretrained")
        batch = tokenize_pairs(
            self.tokenizer, queries, docs, max_length=max_length or self.max_length, n_ctx=self.cfg.n_ctx
        )
        return batch.to(self.device)

    def score_from_logits(self, logits: Float[Tensor, "batch n_labels"]) -> Float[Tensor, " batch"]:
        if self.cfg.n_labels == 1:
            return logits[:, 0]
        return torch.log_softmax(logits, dim=-1)[:, 1]

    def forward(
        self,
        batch: PairBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        return_type: str = "score",
    ) -> Tensor:
        """Relevance scores ``[batch]`` (or logits / the residual stream when ``stop_at_layer`` is set).

        Args:
            batch: a ``PairBatch`` or ``input_ids`` ``[batch, pos]`` (then pass token types and mask).
            input_embeds: word embeddings ``[batch, pos, d_model]`` used instead of ``W_E[input_ids]``.
            residual: with ``start_at_layer=k``, the residual stream before block ``k``.
            stop_at_layer: return the residual stream before this block instead of scores.
        """
        if isinstance(batch, PairBatch):
            input_ids, token_type_ids, attention_mask = (
                batch.input_ids,
                batch.token_type_ids,
                batch.attention_mask,
            )
        else:
            input_ids = batch
        if return_type not in ("score", "logits"):
            raise InputError(f"return_type must be 'score' or 'logits', got {return_type!r}")
        resid = self.encoder_forward(
            input_ids,
            token_type_ids,
            attention_mask,
            input_embeds=input_embeds,
            residual=residual,
            start_at_layer=start_at_layer,
            stop_at_layer=stop_at_layer,
        )
        if stop_at_layer is not None:
            return resid
        logits = self.classifier(self.pooler(resid))
        if return_type == "logits":
            return logits
        return self.hook_score(self.score_from_logits(logits))

    @torch.no_grad()
    def score(
        self, queries: Any, docs: Any, *, batch_size: int = 32, max_length: int | None = None
    ) -> Tensor:
        """Scores of many pairs, batched by length internally, in input order (on CPU)."""
        batch = self.tokenize(queries, docs, max_length=max_length)
        return self.score_batch(batch, batch_size=batch_size)

    @torch.no_grad()
    def score_batch(self, batch: PairBatch, *, batch_size: int = 32) -> Tensor:
        return self.run_sorted(batch, batch_size=batch_size)
