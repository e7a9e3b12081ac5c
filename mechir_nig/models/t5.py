"""``HookedMonoT5``: a monoT5 reranker (``T5ForConditionalGeneration``, T5 v1.0 and v1.1 / gated), hooked.

The input is the template's text (``"Query: {query} Document: {doc} Relevant:"`` and T5's ``</s>``);
the encoder reads it, the decoder runs ONE step from ``decoder_start_token_id`` (self-attention over that
one position with its own relative bias, cross-attention to the encoder output), then the final norm
(the ``d_model ** -0.5`` rescale of T5 v1.0's tied head) and the LM head. The score is
``log_softmax([logit_false, logit_true])[1]`` at that step, as castorini's monoT5.

Hook names: ``encoder.blocks.{l}.<hook>`` and ``decoder.blocks.{l}.<hook>`` with ``<hook>`` one of
``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post``,
``attn.hook_q/k/v/z``, ``attn.hook_attn_scores``, ``attn.hook_pattern``, ``mlp.hook_pre``,
``mlp.hook_pre_linear`` (gated), ``mlp.hook_post`` (the input of ``wo``), and in the decoder
``cross_attn.hook_*``, ``hook_cross_attn_out`` and ``hook_resid_mid_cross``.

**Which stack the generic features address.** NIG, ablation, patching and the engine name sites
``blocks.{l}...`` (:func:`mechir_nig.sites.hook_name`). The model's ``stack`` (``"encoder"`` by default,
``model.set_stack("decoder")``) is the stack those plain names reach: its hook points are *named*
``blocks.{l}...`` (so ``hook.name``, cache keys and ``start_at_layer`` / ``stop_at_layer`` follow it)
and stay reachable by their full names ``encoder.blocks.{l}...`` in ``run_with_hooks`` and in the cache.
``cfg.n_layers`` is the selected stack's depth.

Example:
    >>> mt5 = load_model("castorini/monot5-base-msmarco")  # doctest: +SKIP
    >>> import tempfile  # offline: a tiny seeded monoT5 (d_mlp 24) with a tokenizer trained here
    >>> from mechir_nig import load_model
    >>> from mechir_nig.testing import make_t5, t5_tokenizer
    >>> mt5 = load_model(make_t5(tempfile.mkdtemp(), t5_tokenizer(["what is a neuron", "A neuron is a cell."])))
    >>> scores, cache = mt5.run_with_cache(mt5.tokenize(["what is a neuron"], ["A neuron is a cell."]))
    >>> cache["encoder.blocks.0.mlp.hook_post"].shape[-1]  # [batch, pos, d_mlp]
    24
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from mechir_nig._types import Scores
from mechir_nig.errors import InputError, ModelLoadError, UnsupportedArchitectureError
from mechir_nig.models import loading
from mechir_nig.models.checkpointing import run_block
from mechir_nig.models.precision import check_dtype
from mechir_nig.models.protocol import forward_context
from mechir_nig.models.reranker import PairReranker
from mechir_nig.models.templates import RerankTemplate, answer_token_ids, get_template, tokenize_template
from mechir_nig.models.tokenization import PairBatch

STACKS = ("encoder", "decoder")
_ACTS = {"relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "silu": F.silu}


@dataclass
class T5Config:
    """Shape of a T5 encoder-decoder (TransformerLens field names; ``n_layers``: the selected stack's depth).

    Example:
        >>> T5Config(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=40).d_embed
        16
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_encoder_layers: int = 0
    n_decoder_layers: int = 0
    n_buckets: int = 32
    max_distance: int = 128
    gated: bool = False
    act_fn: str = "relu"
    eps: float = 1e-6
    scale_decoder_outputs: bool = True
    pad_token_id: int = 0
    decoder_start_token_id: int = 0
    n_ctx: int = 512
    n_token_types: int = 0
    n_labels: int = 2
    model_name: str = "t5"
    architecture: str = "t5"
    stack: str = "encoder"  # the stack plain blocks.{l} names address (HookedMonoT5.set_stack)
    template: str = ""  # the rerank template's prompt and answer ids (set by HookedMonoT5)
    answer_ids: tuple[int, int] | None = None
    d_embed: int = field(init=False)
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        self.d_embed = self.d_model
        self.n_encoder_layers = self.n_encoder_layers or self.n_layers
        self.n_decoder_layers = self.n_decoder_layers or self.n_encoder_layers
        if self.act_fn not in _ACTS:
            raise UnsupportedArchitectureError(
                f"T5 activation {self.act_fn!r} is not supported; use one of {sorted(_ACTS)}"
            )

    @property
    def acc_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (dtype as its name), e.g. for ``model_fingerprint``."""
        out = asdict(self)
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        return out

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, model_name: str = "t5", source: str = "config.json") -> T5Config:
        """From a ``T5Config`` dict (``config.json``); an unknown ``feed_forward_proj`` is refused."""
        proj = str(hf.get("feed_forward_proj", "relu"))
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise UnsupportedArchitectureError(
                f"{source}: feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT'"
            )
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]
        scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
        n_enc = int(hf.get("num_layers", 6))
        return cls(
            n_layers=n_enc,
            n_heads=int(hf["num_heads"]),
            d_model=int(hf["d_model"]),
            d_head=int(hf["d_kv"]),
            d_mlp=int(hf["d_ff"]),
            d_vocab=int(hf["vocab_size"]),
            n_encoder_layers=n_enc,
            n_decoder_layers=int(hf.get("num_decoder_layers") or n_enc),
            n_buckets=int(hf.get("relative_attention_num_buckets", 32)),
            max_distance=int(hf.get("relative_attention_max_distance", 128)),
            gated=len(parts) == 2,
            act_fn=act,
            eps=float(hf.get("layer_norm_epsilon", 1e-6)),
            scale_decoder_outputs=bool(scale),
            pad_token_id=int(hf.get("pad_token_id") or 0),
            decoder_start_token_id=int(hf.get("decoder_start_token_id") or 0),
            model_name=model_name,
        )


def relative_buckets(rel: Tensor, *, bidirectional: bool, n_buckets: int, max_distance: int) -> Tensor:
    """T5's relative position bucket of ``rel = key_pos - query_pos`` (as HF ``_relative_position_bucket``).

    Example:
        >>> relative_buckets(torch.tensor([-2, 0, 3]), bidirectional=True, n_buckets=8, max_distance=16).tolist()
        [2, 0, 6]
    """
    out = torch.zeros_like(rel)
    if bidirectional:
        n_buckets //= 2
        out += (rel > 0).long() * n_buckets
        rel = rel.abs()
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = n_buckets // 2
    large = (
        max_exact
        + (
            torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (n_buckets - max_exact)
        ).long()
    )
    large = torch.min(large, torch.full_like(large, n_buckets - 1))
    return out + torch.where(rel < max_exact, rel, large)


class RMSNorm(nn.Module):
    """T5LayerNorm: ``w * x / sqrt(mean(x²) + eps)``, the mean of squares in float32 as HF computes it."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.eps = cfg.eps
        self.hook_scale = HookPoint()  # [batch, pos, 1]  1/sqrt(mean(x²) + eps)
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]  the output

    def forward(self, x: Tensor) -> Tensor:
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * self.hook_scale(torch.rsqrt(var + self.eps))
        if self.w.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.w.dtype)
        return self.hook_normalized(self.w * x)


class T5Attention(nn.Module):
    """Unscaled attention with an additive bias (relative positions and mask); hooks as TransformerLens."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        inner = cfg.n_heads * cfg.d_head
        self.cfg = cfg
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.hook_q = HookPoint()  # [batch, q, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, k, n_heads, d_head]
        self.hook_v = HookPoint()  # [batch, k, n_heads, d_head]
        self.hook_z = HookPoint()  # [batch, q, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, q, k]  with the bias and the mask
        self.hook_pattern = HookPoint()  # [batch, n_heads, q, k]

    def forward(self, x: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
        h, d = self.cfg.n_heads, self.cfg.d_head
        q = self.hook_q(self.q(x).unflatten(-1, (h, d)))  # [batch, q, n_heads, d_head]
        k = self.hook_k(self.k(kv).unflatten(-1, (h, d)))
        v = self.hook_v(self.v(kv).unflatten(-1, (h, d)))
        scores = self.hook_attn_scores(torch.einsum("bqhd,bkhd->bhqk", q, k) + bias)
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return self.o(z.flatten(-2))


class T5MLP(nn.Module):
    """``wo(act(wi x))`` or, gated, ``wo(act(wi_0 x) * wi_1 x)``; ``hook_post`` is the input of ``wo``."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.gated
        self.act = _ACTS[cfg.act_fn]
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
            self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]  wi_1 x
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.wo = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]  wi x (gated: wi_0 x)
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]  the neurons: the input of wo

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            post = self.act(self.hook_pre(self.wi_0(x))) * self.hook_pre_linear(self.wi_1(x))
        else:
            post = self.act(self.hook_pre(self.wi(x)))
        return self.wo(self.hook_post(post))


class T5Block(nn.Module):
    """Pre-norm block: self-attention, (decoder) cross-attention, MLP, each added to the residual."""

    def __init__(self, cfg: T5Config, decoder: bool):
        super().__init__()
        self.ln1 = RMSNorm(cfg)
        self.attn = T5Attention(cfg)
        self.cross_attn: T5Attention | None = None
        if decoder:
            self.ln_cross = RMSNorm(cfg)
            self.cross_attn = T5Attention(cfg)
            self.hook_cross_attn_out = HookPoint()
            self.hook_resid_mid_cross = HookPoint()
        self.ln2 = RMSNorm(cfg)
        self.mlp = T5MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self, x: Tensor, bias: Tensor, enc: Tensor | None = None, enc_bias: Tensor | None = None
    ) -> Tensor:
        x = self.hook_resid_pre(x)
        h = self.ln1(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(h, h, bias)))
        if self.cross_attn is not None:
            assert enc is not None and enc_bias is not None
            out = self.cross_attn(self.ln_cross(x), enc, enc_bias)
            x = self.hook_resid_mid_cross(x + self.hook_cross_attn_out(out))
        x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class T5Stack(nn.Module):
    """Blocks sharing one relative-position bias table (T5's first layer's), then the final norm."""

    def __init__(self, cfg: T5Config, decoder: bool):
        super().__init__()
        self.cfg = cfg
        self.decoder = decoder
        n = cfg.n_decoder_layers if decoder else cfg.n_encoder_layers
        self.rel_bias = nn.Embedding(cfg.n_buckets, cfg.n_heads)
        self.blocks = nn.ModuleList([T5Block(cfg, decoder) for _ in range(n)])
        self.ln_final = RMSNorm(cfg)
        self.hook_resid_final = HookPoint()  # [batch, pos, d_model]  after the final norm

    def position_bias(self, position_ids: Tensor) -> Float[Tensor, "batch n_heads pos pos"]:
        """The relative bias from position ids ``[batch, pos]`` (so aligned inputs keep positions)."""
        rel = position_ids[:, None, :] - position_ids[:, :, None]  # key - query
        c = self.cfg
        b = relative_buckets(
            rel, bidirectional=not self.decoder, n_buckets=c.n_buckets, max_distance=c.max_distance
        )
        return self.rel_bias(b).permute(0, 3, 1, 2)

    def run(
        self,
        x: Tensor,
        bias: Tensor,
        start: int,
        stop: int,
        enc: Tensor | None = None,
        enc_bias: Tensor | None = None,
        *,
        owner: nn.Module | None = None,
        offset: int = 0,
    ) -> Tensor:
        """Blocks ``start`` to ``stop``; block ``l`` runs through ``run_block(owner, offset + l, ...)``, so
        ``checkpointed_blocks(owner, after=k)`` checkpoints those with ``offset + l > k``."""
        for layer in range(start, stop):
            block = self.blocks[layer]
            if owner is None:
                x = block(x, bias, enc, enc_bias)
            else:
                x = run_block(owner, offset + layer, block, x, bias, enc, enc_bias)
        return x


def additive_mask(attention_mask: Tensor | None, like: Tensor) -> Tensor:
    """``[batch, 1, 1, key]``: ``0`` where attended, the dtype's minimum where padded (as HF)."""
    if attention_mask is None:
        return torch.zeros(like.shape[0], 1, 1, like.shape[1], dtype=like.dtype, device=like.device)
    m = attention_mask[:, None, None, :].to(like.dtype)
    return (1.0 - m) * torch.finfo(like.dtype).min


class HookedMonoT5(HookedRootModule, PairReranker):
    """monoT5 (``T5ForConditionalGeneration`` scored by ``"true"``/``"false"`` at the first decoder step).

    Call it on a ``PairBatch`` (from :meth:`tokenize`) for ``[batch]`` scores. See the module docstring for
    the hook names and :meth:`set_stack` for the stack the generic features address.

    Example:
        >>> import torch
        >>> cfg = T5Config(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=40)
        >>> mt5 = HookedMonoT5(cfg, answer_ids=(5, 6))
        >>> ids = torch.tensor([[7, 8, 9, 1]])  # [batch, pos]
        >>> mt5(ids, None, torch.ones_like(ids)).shape  # [batch]
        torch.Size([1])
        >>> "blocks.0.mlp.hook_post" in mt5.hook_dict, "decoder.blocks.0.cross_attn.hook_z" in mt5.hook_dict
        (True, True)
    """

    def __init__(
        self,
        cfg: T5Config,
        tokenizer: Any = None,
        *,
        template: str | RerankTemplate = "monot5",
        answer_ids: tuple[int, int] | None = None,
        max_length: int | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.template = get_template(template)
        if answer_ids is None:
            if tokenizer is None:
                raise InputError("pass answer_ids=(negative id, positive id) or a tokenizer")
            answer_ids = answer_token_ids(self.template, tokenizer, cfg.model_name)
        self.answer_ids = (int(answer_ids[0]), int(answer_ids[1]))
        cfg.answer_ids, cfg.template = self.answer_ids, self.template.prompt
        self.max_length = max_length or min(cfg.n_ctx, 512)
        self.W_E = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))
        self.W_U = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))  # lm_head.weight (tied: a copy of W_E)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]  encoder word embeddings
        self.encoder = T5Stack(cfg, decoder=False)
        self.decoder = T5Stack(cfg, decoder=True)
        self.hook_logits = HookPoint()  # [batch, d_vocab]  first decoder step
        self.hook_score = HookPoint()  # [batch]
        self.setup()

    # -- hook names: the selected stack answers to plain blocks.{l} names ------------------------
    def setup(self) -> None:
        super().setup()
        self._full_names = dict(self.hook_dict)  # full name -> hook point
        self._name_stack()

    @property
    def stack(self) -> str:
        """The stack plain ``blocks.{l}`` hook names address: ``"encoder"`` (default) or ``"decoder"``."""
        return self.cfg.stack

    def _name_stack(self) -> None:
        prefix = f"{self.stack}."
        self.hook_dict = {}
        for full, hp in self._full_names.items():
            name = full.removeprefix(prefix) if full.startswith(prefix + "blocks.") else full
            hp.name = name
            self.hook_dict[name] = hp
            self.mod_dict[name] = hp
            self.mod_dict[full] = hp

    def set_stack(self, stack: str) -> None:
        """Address the ``"encoder"`` (default) or ``"decoder"`` stack with plain ``blocks.{l}`` names.

        NIG, ablation, patching and component sets then act on that stack's blocks; ``cfg.n_layers``
        becomes its depth. Full names (``encoder.blocks.{l}...``) keep working either way.

        Example:
            >>> import tempfile
            >>> from mechir_nig import load_model
            >>> from mechir_nig.testing import make_t5, t5_tokenizer
            >>> mt5 = load_model(make_t5(tempfile.mkdtemp(), t5_tokenizer(["what is a neuron", "a cell"])))
            >>> mt5.set_stack("decoder"); mt5.hook_dict["blocks.0.mlp.hook_post"].name
            'blocks.0.mlp.hook_post'
        """
        if stack not in STACKS:
            raise InputError(f"stack must be one of {STACKS}, got {stack!r}")
        self.reset_hooks()
        self.cfg.stack = stack
        self.cfg.n_layers = self.cfg.n_decoder_layers if stack == "decoder" else self.cfg.n_encoder_layers
        self._name_stack()

    def run_with_cache(self, *model_args: Any, return_cache_object: bool = True, **kwargs: Any) -> Any:
        """Run and cache activations; the selected stack's are cached under both names
        (``blocks.{l}...`` and ``encoder.blocks.{l}...``)."""
        names = kwargs.get("names_filter")
        if isinstance(names, str | list | tuple):  # full names of the selected stack -> its hook names
            listed = [names] if isinstance(names, str) else list(names)
            kwargs["names_filter"] = [self.canonical_name(n) for n in listed]
        out, cache = super().run_with_cache(*model_args, **kwargs)
        for full, hp in self._full_names.items():
            if hp.name in cache and full != hp.name:
                cache[full] = cache[hp.name]
        if return_cache_object:
            from transformer_lens.ActivationCache import ActivationCache

            return out, ActivationCache(cache, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache

    def canonical_name(self, name: str) -> str:
        """The hook name of ``name`` (a full ``encoder.blocks.{l}...`` name of the selected stack -> ``blocks.{l}...``)."""
        hp = self.mod_dict.get(name)
        return hp.name if isinstance(hp, HookPoint) and hp.name is not None else name

    # -- basics ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.W_E.device

    def freeze(self) -> HookedMonoT5:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def word_embeddings(self, input_ids: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """``W_E[input_ids]`` (the input NIG interpolates)."""
        return F.embedding(input_ids, self.W_E)

    def tokenize(self, queries: Any, docs: Any, *, max_length: int | None = None) -> PairBatch:
        """The template's text per pair (``Query: q Document: d Relevant:</s>``), right-padded with ``<pad>``."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass tokenizer= to from_pretrained")
        batch = tokenize_template(
            self.tokenizer,
            self.template,
            queries,
            docs,
            max_length=max_length or self.max_length,
            n_ctx=self.cfg.n_ctx,
        )
        return batch.to(self.device)

    def _block_offset(self, stack: str) -> int:
        """Where ``stack``'s block 0 sits among the selected stack's layer numbers, for gradient
        checkpointing (``checkpointed_blocks(model, after=k)`` checkpoints the blocks numbered above
        ``k``): the selected stack is numbered ``0 .. n - 1``; with the encoder selected the decoder
        follows it (every decoder block lies between an encoder layer and the score); with the decoder
        selected the encoder comes before decoder block 0 and is never checkpointed."""
        if stack == self.stack:
            return 0
        if stack == "decoder":
            return self.cfg.n_encoder_layers
        return -self.cfg.n_encoder_layers - 1

    def _layer_range(self, start: int | None, stop: int | None) -> tuple[int, int]:
        n = self.cfg.n_layers
        a = 0 if start is None else start + (n if start < 0 else 0)
        b = n if stop is None else stop + (n if stop < 0 else 0)
        if not 0 <= a <= b <= n:
            raise InputError(
                f"start_at_layer={start}, stop_at_layer={stop} do not give 0 <= start <= stop <= {n}"
            )
        return a, b

    def encoder_forward(
        self,
        input_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        residual: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """The encoder's residual stream before block ``stop_at_layer`` (all blocks and the final norm
        when ``None``); ``start_at_layer=k`` starts from ``residual`` (the resid_pre of block ``k``)."""
        n = self.cfg.n_encoder_layers
        start = 0 if start_at_layer is None else start_at_layer
        stop = n if stop_at_layer is None else stop_at_layer
        if not 0 <= start <= stop <= n:
            raise InputError(
                f"encoder layers start={start}, stop={stop} do not give 0 <= start <= stop <= {n}"
            )
        if start > 0 or residual is not None:
            if residual is None:
                raise InputError(f"start_at_layer={start} needs residual=[batch, pos, d_model] (resid_pre)")
            x = residual
        else:
            if input_embeds is None:
                if input_ids is None:
                    raise InputError("pass input_ids (or a batch) or input_embeds")
                input_embeds = self.word_embeddings(input_ids)
            x = self.hook_embed(input_embeds.to(self.cfg.dtype))
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        elif position_ids.shape != x.shape[:2]:
            raise InputError(
                f"position_ids has shape {tuple(position_ids.shape)}; expected {tuple(x.shape[:2])}"
            )
        bias = self.encoder.position_bias(position_ids).to(x.dtype) + additive_mask(attention_mask, x)
        x = self.encoder.run(x, bias, start, stop, owner=self, offset=self._block_offset("encoder"))
        if stop_at_layer is None:
            x = self.encoder.hook_resid_final(self.encoder.ln_final(x))
        return x

    def decoder_forward(
        self,
        enc: Tensor,
        attention_mask: Tensor | None,
        *,
        residual: Tensor | None = None,
        start_at_layer: int = 0,
        stop_at_layer: int | None = None,
    ) -> Tensor:
        """First decoder step over the encoder output ``enc``: ``[batch, d_vocab]`` logits, or the decoder's
        residual stream ``[batch, 1, d_model]`` before block ``stop_at_layer``."""
        c = self.cfg
        if residual is None:
            start_ids = torch.full(
                (enc.shape[0], 1), c.decoder_start_token_id, dtype=torch.long, device=enc.device
            )
            residual = self.word_embeddings(start_ids).to(enc.dtype)
        pos = torch.zeros(enc.shape[0], 1, dtype=torch.long, device=enc.device)
        bias = self.decoder.position_bias(pos).to(enc.dtype)
        enc_bias = additive_mask(attention_mask, enc)
        stop = c.n_decoder_layers if stop_at_layer is None else stop_at_layer
        x = self.decoder.run(
            residual,
            bias,
            start_at_layer,
            stop,
            enc,
            enc_bias,
            owner=self,
            offset=self._block_offset("decoder"),
        )
        if stop_at_layer is not None:
            return x
        x = self.decoder.hook_resid_final(self.decoder.ln_final(x))[:, 0]
        if c.scale_decoder_outputs:
            x = x * c.d_model**-0.5
        return self.hook_logits(x @ self.W_U.T)

    def score_from_logits(self, logits: Tensor) -> Scores:
        """``log_softmax([logit_neg, logit_pos])[1]`` of ``[batch, d_vocab]`` logits."""
        return torch.log_softmax(logits[:, list(self.answer_ids)], dim=-1)[:, 1]

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
        position_ids: Tensor | None = None,
        return_type: str | None = "score",
    ) -> Tensor | None:
        """Scores ``[batch]``, logits (``return_type="logits"``: ``[batch, d_vocab]``), nothing, or the
        selected stack's residual stream before block ``stop_at_layer``.

        Args:
            batch: a ``PairBatch`` or ``input_ids`` ``[batch, pos]`` (then pass the mask).
            token_type_ids: ignored (T5 has none); accepted for the shared signature.
            attention_mask: ``[batch, pos]``, 1 = attended.
            input_embeds: word embeddings ``[batch, pos, d_model]`` instead of ``W_E[input_ids]``.
            residual: with ``start_at_layer=k``, the selected stack's residual stream before block ``k``
                (the decoder stack also needs ``input_ids`` / ``input_embeds`` for the encoder).
            start_at_layer: the first block of the selected stack to run.
            stop_at_layer: return the selected stack's residual stream before this block.
            position_ids: explicit encoder positions ``[batch, pos]`` (aligned inputs).
            return_type: ``"score"``, ``"logits"`` or ``None``.
        """
        if return_type not in ("score", "logits", None):
            raise InputError(f"return_type must be 'score', 'logits' or None, got {return_type!r}")
        input_ids: Tensor | None = batch if not isinstance(batch, PairBatch) else None
        if isinstance(batch, PairBatch):
            input_ids, attention_mask = batch.input_ids, batch.attention_mask
            if position_ids is None:
                position_ids = batch.position_ids
        with forward_context(self, batch if isinstance(batch, PairBatch) else None):
            if self.stack == "encoder":
                self._layer_range(start_at_layer, stop_at_layer)
                enc = self.encoder_forward(
                    input_ids,
                    None,
                    attention_mask,
                    input_embeds=input_embeds,
                    residual=residual,
                    start_at_layer=start_at_layer,
                    stop_at_layer=stop_at_layer,
                    position_ids=position_ids,
                )
                if stop_at_layer is not None:
                    return enc
                logits = self.decoder_forward(enc, attention_mask)
            else:
                start, _ = self._layer_range(start_at_layer, stop_at_layer)
                if start > 0 and residual is None:
                    raise InputError(
                        f"start_at_layer={start} needs residual=[batch, 1, d_model] (decoder resid_pre)"
                    )
                if input_ids is None and input_embeds is None:
                    raise InputError(
                        "the decoder stack runs the encoder first: pass input_ids or input_embeds (patching "
                        "from a cached residual, start_at_layer without input, is for the encoder stack: "
                        "model.set_stack('encoder'))"
                    )
                enc = self.encoder_forward(
                    input_ids, None, attention_mask, input_embeds=input_embeds, position_ids=position_ids
                )
                logits = self.decoder_forward(
                    enc, attention_mask, residual=residual, start_at_layer=start, stop_at_layer=stop_at_layer
                )
                if stop_at_layer is not None:
                    return logits
        if return_type == "logits":
            return logits
        score = self.hook_score(self.score_from_logits(logits))
        return None if return_type is None else score

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        tokenizer: Any = None,
        template: str | RerankTemplate = "monot5",
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        name: str | None = None,
    ) -> HookedMonoT5:
        """Load a ``T5ForConditionalGeneration`` checkpoint (a folder saved with ``save_pretrained`` or a hub id)."""
        dtype = check_dtype(dtype)
        folder = loading.resolve_checkpoint(name_or_path)
        hf = loading.read_config(folder)
        source = str(folder / "config.json")
        if hf.get("model_type") != "t5":
            raise UnsupportedArchitectureError(f"{source} has model_type={hf.get('model_type')!r}, not 't5'")
        listed = hf.get("architectures") or ["T5ForConditionalGeneration"]
        if "T5ForConditionalGeneration" not in listed:
            from mechir_nig.models.architectures import supported_summary

            raise UnsupportedArchitectureError(
                f"{source} lists architectures={listed}; a t5 checkpoint loads as monoT5 "
                "(T5ForConditionalGeneration: the LM head scores the 'true'/'false' tokens), so save the reranker "
                "with its LM head; other supported checkpoints: " + supported_summary()
            )
        cfg = T5Config.from_hf(hf, model_name=name or str(name_or_path), source=source)
        cfg.dtype = dtype
        tok = loading.load_tokenizer(folder, tokenizer)
        if tok.pad_token_id is None or len(tok) > cfg.d_vocab:
            raise ModelLoadError(
                f"the tokenizer for {folder} does not fit the model (pad token {tok.pad_token_id}, {len(tok)} tokens "
                f"for {cfg.d_vocab} embedding rows); use the tokenizer saved with the reranker"
            )
        if not getattr(tok, "is_fast", False):
            raise ModelLoadError(
                f"the tokenizer for {folder} is not a fast tokenizer; the template needs offsets"
            )
        ids = answer_token_ids(template, tok, str(folder))
        sd = convert_t5_weights(loading.load_state_dict(folder), cfg, str(folder))
        model = cls(cfg, tok, template=template, answer_ids=ids, max_length=max_length)
        model.load_state_dict(sd, strict=True)
        return model.to(device=device, dtype=dtype).freeze()


_ATTN = ("q", "k", "v", "o")


def convert_t5_weights(hf: dict[str, Tensor], cfg: T5Config, source: str) -> dict[str, Tensor]:
    """HF ``T5ForConditionalGeneration`` weights -> ``HookedMonoT5``'s; unused or missing weights are errors."""
    left = dict(hf)

    def take(key: str) -> Tensor:
        if key not in left:
            raise ModelLoadError(f"{source} has no weight {key!r}; the config does not match the weights")
        return left.pop(key)

    shared = take("shared.weight")
    sd = {"W_E": shared}
    sd["W_U"] = left.pop("lm_head.weight", shared)
    for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        left.pop(k, None)
    for stack, n in (("encoder", cfg.n_encoder_layers), ("decoder", cfg.n_decoder_layers)):
        sd[f"{stack}.rel_bias.weight"] = take(
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        )
        sd[f"{stack}.ln_final.w"] = take(f"{stack}.final_layer_norm.weight")
        for layer in range(n):
            src, dst = f"{stack}.block.{layer}.layer.", f"{stack}.blocks.{layer}."
            parts = [("0.SelfAttention", "attn", "0.layer_norm", "ln1")]
            if stack == "decoder":
                parts.append(("1.EncDecAttention", "cross_attn", "1.layer_norm", "ln_cross"))
                left.pop(f"{src}1.EncDecAttention.relative_attention_bias.weight", None)
            for a_src, a_dst, n_src, n_dst in parts:
                for p in _ATTN:
                    sd[f"{dst}{a_dst}.{p}.weight"] = take(f"{src}{a_src}.{p}.weight")
                sd[f"{dst}{n_dst}.w"] = take(f"{src}{n_src}.weight")
            ff = f"{src}{2 if stack == 'decoder' else 1}."
            sd[f"{dst}ln2.w"] = take(ff + "layer_norm.weight")
            for w in ("wi_0", "wi_1", "wo") if cfg.gated else ("wi", "wo"):
                sd[f"{dst}mlp.{w}.weight"] = take(f"{ff}DenseReluDense.{w}.weight")
    if left:
        raise ModelLoadError(
            f"{source} holds {len(left)} weights the config does not account for (e.g. {sorted(left)[:3]}); "
            "check num_layers / num_decoder_layers / feed_forward_proj in config.json"
        )
    return sd


def t5_checkpoint(folder: Path) -> bool:
    """Whether ``folder``'s ``config.json`` is a T5 model (``load_model`` routes it to ``HookedMonoT5``)."""
    return loading.read_config(folder).get("model_type") == "t5"


__all__ = ["HookedMonoT5", "T5Config", "convert_t5_weights", "relative_buckets", "t5_checkpoint"]
