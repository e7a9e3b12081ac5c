"""``HookedDecoderReranker``: a decoder LLM reranker (Qwen2/Qwen3/Llama/Mistral blocks) with hooks.

Two kinds of checkpoints load:

- ``Qwen2ForSequenceClassification`` / ``LlamaForSequenceClassification`` ... (RankLlama style): the
  score is the head's logit at the last non-padding token (1 label), or ``log_softmax[:, 1]`` (2 labels);
- ``Qwen3ForCausalLM`` / ``LlamaForCausalLM`` ... scored through a :class:`RerankTemplate`: the score is
  ``log_softmax([logit_no, logit_yes])[1]`` at the last non-padding token. Only the two answer rows of
  the LM head are kept (``head.W``: ``[2, d_model]``), which is all the score reads.

Blocks are pre-RMSNorm: ``resid_mid = resid_pre + attn(ln1(resid_pre))``, ``resid_post = resid_mid +
mlp(ln2(resid_mid))``; rotary positions (default RoPE only), grouped-query attention with ``hook_k`` /
``hook_v`` expanded to ``n_heads`` (each query head sees its KV head's copy), Qwen3's ``q_norm`` /
``k_norm`` (``attn.q_norm``/``attn.k_norm``), a causal mask combined with padding, and a SwiGLU MLP whose
neuron is ``act(gate) * up`` (``mlp.hook_post``, the input of ``down_proj``; ``mlp.hook_pre`` is the gate
pre-activation and ``mlp.hook_pre_linear`` the up factor, as TransformerLens names them).

Example:
    >>> rr = HookedDecoderReranker.from_pretrained("Qwen/Qwen3-Reranker-0.6B")  # doctest: +SKIP
    >>> import tempfile  # offline: a tiny seeded Qwen3 with a tokenizer trained here
    >>> from mechir_nig.testing import decoder_tokenizer, make_decoder
    >>> tok = decoder_tokenizer(["what is a neuron", "A neuron is a cell."])
    >>> rr = HookedDecoderReranker.from_pretrained(make_decoder(tempfile.mkdtemp(), tok), template="qwen3-reranker")
    >>> rr.score(["what is a neuron"], ["A neuron is a cell."]).shape
    torch.Size([1])
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechir_nig._types import Mask, Resid, Tokens
from mechir_nig.errors import InputError, ModelLoadError, UnsupportedArchitectureError
from mechir_nig.models import loading
from mechir_nig.models.checkpointing import run_block
from mechir_nig.models.components.attention import Attention
from mechir_nig.models.components.mlp import activation
from mechir_nig.models.config import ATTENTION_IMPLS, EncoderConfig
from mechir_nig.models.encoder import HookedEncoderBase
from mechir_nig.models.precision import check_dtype
from mechir_nig.models.reranker import PairReranker
from mechir_nig.models.templates import (
    RerankTemplate,
    answer_token_ids,
    get_template,
    template_for,
    tokenize_template,
)
from mechir_nig.models.tokenization import PairBatch, tokenize_pairs

DECODER_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
DECODER_ACTIVATIONS = ("silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass
class DecoderConfig(EncoderConfig):
    """An :class:`EncoderConfig` with the decoder's fields (TransformerLens names).

    ``n_key_value_heads`` (grouped-query attention), ``head_dim`` (Qwen3's explicit head width; 0:
    ``d_model // n_heads``), ``rope_theta``, ``qk_norm`` (Qwen3), ``n_labels`` (1 or 2: the score head).

    Example:
        >>> cfg = DecoderConfig(n_layers=2, n_heads=4, d_model=16, d_mlp=32, d_vocab=50, n_key_value_heads=2)
        >>> cfg.d_head, cfg.n_key_value_heads
        (4, 2)
    """

    n_key_value_heads: int = 0
    head_dim: int = 0
    rope_theta: float = 10000.0
    qk_norm: bool = False

    def __post_init__(self) -> None:
        self.act_fn = "silu" if self.act_fn == "swish" else self.act_fn
        if self.act_fn not in DECODER_ACTIVATIONS:
            raise UnsupportedArchitectureError(
                f"hidden_act={self.act_fn!r} is not supported; use one of {DECODER_ACTIVATIONS}"
            )
        if self.attn_impl not in ATTENTION_IMPLS:
            raise InputError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {self.attn_impl!r}")
        self.n_key_value_heads = self.n_key_value_heads or self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise UnsupportedArchitectureError(
                f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads="
                f"{self.n_key_value_heads}; check config.json"
            )
        self.d_embed = self.d_model
        self.n_token_types = 0

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


def _act(name: str) -> Any:
    return F.silu if name == "silu" else activation(name)


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x²) + eps)``, computed in float32 at least (as Hugging Face)."""

    def __init__(self, d: int, cfg: DecoderConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(d, dtype=cfg.dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: Tensor) -> Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        scale = self.hook_scale(torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps))
        return self.hook_normalized(self.w * (wide * scale).to(x.dtype))


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class DecoderAttention(Attention):
    """Causal grouped-query attention with rotary positions (and Qwen3's per-head ``q_norm``/``k_norm``).

    Hooks: ``hook_q``, ``hook_k``, ``hook_v`` (``[batch, pos, n_heads, d_head]``; keys and values expanded
    from the KV heads), ``hook_rot_q``/``hook_rot_k`` (after rotary), ``hook_attn_scores``, ``hook_pattern``
    (explicit path, as :class:`Attention`), ``hook_z``, ``hook_result`` (with ``cfg.use_attn_result``).
    """

    cfg: DecoderConfig

    def __init__(self, cfg: DecoderConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        d, h, nq, nkv, dt = cfg.d_model, cfg.d_head, cfg.n_heads, cfg.n_key_value_heads, cfg.dtype
        self.W_Q_lin = nn.Parameter(torch.empty(nq * h, d, dtype=dt))
        self.W_K_lin = nn.Parameter(torch.empty(nkv * h, d, dtype=dt))
        self.W_V_lin = nn.Parameter(torch.empty(nkv * h, d, dtype=dt))
        self.W_O_lin = nn.Parameter(torch.empty(d, nq * h, dtype=dt))
        self.b_Q_lin = nn.Parameter(torch.zeros(nq * h, dtype=dt))
        self.b_K_lin = nn.Parameter(torch.zeros(nkv * h, dtype=dt))
        self.b_V_lin = nn.Parameter(torch.zeros(nkv * h, dtype=dt))
        self.b_O = nn.Parameter(torch.zeros(d, dtype=dt))
        self.q_norm = RMSNorm(h, cfg) if cfg.qk_norm else None
        self.k_norm = RMSNorm(h, cfg) if cfg.qk_norm else None
        self.scale = 1.0 / math.sqrt(h)
        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_heads, d_head]  (expanded from the KV heads)
        self.hook_v = HookPoint()  # [batch, pos, n_heads, d_head]  (expanded from the KV heads)
        self.hook_rot_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model]  (only with cfg.use_attn_result)

    @property
    def W_Q(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_Q_lin.view(self.cfg.n_heads, self.cfg.d_head, -1).transpose(1, 2)

    @property
    def W_K(self) -> Float[Tensor, "n_key_value_heads d_model d_head"]:
        return self.W_K_lin.view(self.cfg.n_key_value_heads, self.cfg.d_head, -1).transpose(1, 2)

    @property
    def W_V(self) -> Float[Tensor, "n_key_value_heads d_model d_head"]:
        return self.W_V_lin.view(self.cfg.n_key_value_heads, self.cfg.d_head, -1).transpose(1, 2)

    @property
    def W_O(self) -> Float[Tensor, "n_heads d_head d_model"]:
        return self.W_O_lin.T.reshape(self.cfg.n_heads, self.cfg.d_head, -1)

    def forward(self, x: Resid, additive_mask: Tensor, rotary: tuple[Tensor, Tensor] | None = None) -> Resid:
        cfg = self.cfg
        b, p, _ = x.shape
        group = cfg.n_heads // cfg.n_key_value_heads
        q = F.linear(x, self.W_Q_lin, self.b_Q_lin).view(b, p, cfg.n_heads, cfg.d_head)
        k = F.linear(x, self.W_K_lin, self.b_K_lin).view(b, p, cfg.n_key_value_heads, cfg.d_head)
        v = F.linear(x, self.W_V_lin, self.b_V_lin).view(b, p, cfg.n_key_value_heads, cfg.d_head)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        assert rotary is not None
        cos, sin = rotary  # [batch, pos, 1, d_head]
        q = self.hook_rot_q(q * cos + _rotate_half(q) * sin)
        k = self.hook_rot_k(k * cos + _rotate_half(k) * sin)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        if self.explicit_path():
            scores = self.hook_attn_scores(
                torch.matmul(qh, kh.transpose(-1, -2)) * self.scale + additive_mask
            )
            z = torch.matmul(self.hook_pattern(torch.softmax(scores, dim=-1)), vh)
        else:
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=additive_mask, scale=self.scale)
        z = self.hook_z(z.transpose(1, 2))
        if cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bpnh,nhm->bpnm", z, self.W_O))
            return result.sum(2) + self.b_O
        return F.linear(z.reshape(b, p, -1), self.W_O_lin, self.b_O)


class GatedMLP(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``; ``hook_post`` (every neuron) is ``act(gate) * up``."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        d, m, dt = cfg.d_model, cfg.d_mlp, cfg.dtype
        self.W_gate_lin = nn.Parameter(torch.empty(m, d, dtype=dt))
        self.W_in_lin = nn.Parameter(torch.empty(m, d, dtype=dt))
        self.W_out_lin = nn.Parameter(torch.empty(d, m, dtype=dt))
        self.b_gate = nn.Parameter(torch.zeros(m, dtype=dt))
        self.b_in = nn.Parameter(torch.zeros(m, dtype=dt))
        self.b_out = nn.Parameter(torch.zeros(d, dtype=dt))
        self.act = _act(cfg.act_fn)
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]  gate pre-activation
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]  up factor
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]  act(gate) * up: the input of down_proj

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.W_in_lin.T

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.W_gate_lin.T

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.W_out_lin.T

    def forward(self, x: Resid) -> Resid:
        gate = self.hook_pre(F.linear(x, self.W_gate_lin, self.b_gate))
        up = self.hook_pre_linear(F.linear(x, self.W_in_lin, self.b_in))
        return F.linear(self.hook_post(self.act(gate) * up), self.W_out_lin, self.b_out)


class DecoderBlock(nn.Module):
    """Pre-RMSNorm block with TransformerLens' hook names (``hook_resid_pre`` ... ``hook_resid_post``)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = RMSNorm(cfg.d_model, cfg)
        self.attn = DecoderAttention(cfg)
        self.ln2 = RMSNorm(cfg.d_model, cfg)
        self.mlp = GatedMLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]  (only with cfg.use_hook_mlp_in)
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid_pre: Resid, mask: Tensor, rotary: tuple[Tensor, Tensor]) -> Resid:
        resid_pre = self.hook_resid_pre(resid_pre)
        resid_mid = self.hook_resid_mid(
            resid_pre + self.hook_attn_out(self.attn(self.ln1(resid_pre), mask, rotary))
        )
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        return self.hook_resid_post(resid_mid + self.hook_mlp_out(self.mlp(self.ln2(mlp_in))))


class ScoreHead(nn.Module):
    """``logits = W h`` at the scored token; ``W`` is ``[n_labels, d_model]`` (the seq-cls ``score`` layer,
    or the (no, yes) rows of a causal LM's head)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.n_labels, cfg.d_model, dtype=cfg.dtype))
        self.hook_logits = HookPoint()  # [batch, n_labels]

    def forward(self, h: Tensor) -> Tensor:
        return self.hook_logits(F.linear(h, self.W))


ReturnType = Literal["score", "logits"] | None


class TokenEmbed(nn.Module):
    """The token embedding table ``W_E`` ``[d_vocab, d_model]`` (no positions: rotary acts in attention)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))


class HookedDecoderReranker(HookedEncoderBase, PairReranker):
    """A decoder reranker (see the module docstring); the :class:`~mechir_nig.models.protocol.HookedModel`
    protocol as ``HookedCrossEncoder`` (``tokenize``, ``score``, ``forward`` with ``start_at_layer`` /
    ``stop_at_layer`` / ``residual``, NIG, ``run_with_cache`` / ``run_with_hooks``).

    Example:
        >>> import torch
        >>> cfg = DecoderConfig(n_layers=2, n_heads=4, d_model=16, d_mlp=32, d_vocab=50, n_labels=2,
        ...                     n_key_value_heads=2, act_fn="silu", eps=1e-6, qk_norm=True)
        >>> rr = HookedDecoderReranker(cfg)
        >>> rr.init_weights(seed=0)
        >>> ids = torch.tensor([[3, 5, 7, 9]])
        >>> rr(ids, None, torch.ones_like(ids)).shape  # [batch]
        torch.Size([1])
        >>> "blocks.1.mlp.hook_pre_linear" in rr.hook_dict
        True
    """

    cfg: DecoderConfig
    block_positions = True  # rotary: a run started at a block needs the batch's position_ids

    def __init__(
        self,
        cfg: DecoderConfig,
        tokenizer: Any = None,
        *,
        template: RerankTemplate | None = None,
        max_length: int | None = None,
    ):
        if cfg.n_labels not in (1, 2):
            raise UnsupportedArchitectureError(f"a decoder reranker needs 1 or 2 labels, got {cfg.n_labels}")
        nn.Module.__init__(self)
        from transformer_lens.HookedRootModule import HookedRootModule

        HookedRootModule.__init__(self)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.template = template
        self.embed = TokenEmbed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]  (= blocks.0.hook_resid_pre)
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.n_layers)])
        self.pooler = None
        self.ln_final: nn.Module = RMSNorm(cfg.d_model, cfg)
        self.head = ScoreHead(cfg)
        self.hook_score = HookPoint()  # [batch]
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.d_head, 2, dtype=torch.float64) / cfg.d_head))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.max_length = max_length or min(cfg.n_ctx, 512)
        self.setup()

    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, 0.02) weights, norms 1, biases 0 (a random model for tests and examples)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(".w"):
                    p.fill_(1.0)
                elif p.dim() == 1:
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        template: str | RerankTemplate | None = None,
        tokenizer: Any = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        name: str | None = None,
    ) -> HookedDecoderReranker:
        """Load a ``...ForCausalLM`` (with a template) or ``...ForSequenceClassification`` decoder.

        A known hub id (``Qwen/Qwen3-Reranker-*``) picks its template; a causal LM without one, or a
        template whose answer tokens are not single tokens, raises ``ModelLoadError``.
        """
        dtype = check_dtype(dtype)
        name = name or str(name_or_path)
        folder = loading.resolve_checkpoint(name_or_path)
        hf = loading.read_config(folder)
        src = folder / "config.json"
        listed = hf.get("architectures") or []
        causal = any(a.endswith("ForCausalLM") for a in listed)
        if not causal and not any(a.endswith("ForSequenceClassification") for a in listed):
            raise ModelLoadError(
                f"{src} lists architectures={listed}; a decoder reranker is a ...ForCausalLM (scored through a "
                "template) or a ...ForSequenceClassification checkpoint: save it with one of those classes"
            )
        if template is None:
            template = template_for(name)
        if causal and template is None:
            raise ModelLoadError(
                f"{src} lists {listed}: a causal LM is scored through a rerank template (the prompt and the "
                "yes/no answer tokens) and none is known for this checkpoint; pass template='qwen3-reranker' "
                "(or a RerankTemplate) to load_model / from_pretrained, or with the CLI --template NAME"
            )
        tmpl = get_template(template) if template is not None else None
        cfg = decoder_config(hf, str(src), n_labels=2 if causal else 0, name=name)
        cfg.dtype = dtype
        sd = loading.load_state_dict(folder)
        tok = loading.load_tokenizer(folder, tokenizer)
        if tok.pad_token_id is None:  # Llama: no pad token; padding is masked, its id only fills
            if tok.eos_token is None:
                raise ModelLoadError(
                    f"the tokenizer for {folder} has neither a pad nor an eos token; save one"
                )
            tok.pad_token = tok.eos_token
        cfg.pad_token_id = int(tok.pad_token_id)
        answers = answer_token_ids(tmpl, tok, str(folder)) if causal and tmpl is not None else None
        state = convert_decoder_weights(sd, cfg, str(loading._weights_source(folder)), answers)
        cfg.n_labels = int(state["head.W"].shape[0])
        loading.check_tokenizer(tok, cfg, str(folder), pairwise=False)
        model = cls(cfg, tok, template=tmpl, max_length=max_length)
        model.load_state_dict(state, strict=True)
        return model.to(device=device, dtype=dtype).freeze()

    # -- forward pieces --------------------------------------------------------------------------
    def word_embeddings(self, input_ids: Tokens) -> Float[Tensor, "batch pos d_embed"]:
        return F.embedding(input_ids, self.embed.W_E)

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    def _rotary(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        wide = torch.promote_types(dtype, torch.float32)
        freqs = position_ids[..., None].to(wide) * self.inv_freq.to(wide)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _mask(self, attention_mask: Tensor | None, like: Tensor) -> Tensor:
        b, p = like.shape[:2]
        causal = torch.ones(p, p, dtype=torch.bool, device=like.device).tril()
        keys = (
            torch.ones(b, p, dtype=torch.bool, device=like.device)
            if attention_mask is None
            else attention_mask.bool()
        )
        allowed = causal[None, None] & keys[:, None, None, :]
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        return torch.where(allowed, zero, torch.finfo(like.dtype).min)

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
        """Residual stream before block ``stop_at_layer`` (from ``residual`` before ``start_at_layer``)."""
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        if residual is not None:
            resid = residual
        elif start > 0:
            raise InputError(f"start_at_layer={start} needs residual=[batch, pos, d_model] (resid_pre)")
        else:
            if input_embeds is None:
                if input_ids is None:
                    raise InputError("pass input_ids (or a batch) or input_embeds")
                input_embeds = self.word_embeddings(input_ids)
            resid = self.hook_embed(input_embeds.to(self.cfg.dtype))
        b, p = resid.shape[:2]
        if p > self.cfg.n_ctx:
            raise InputError(f"input has {p} positions; the model has {self.cfg.n_ctx}: truncate it")
        if position_ids is None:
            position_ids = torch.arange(p, device=resid.device).expand(b, p)
        rotary = self._rotary(position_ids, resid.dtype)
        mask = self._mask(attention_mask, resid)
        for layer in range(start, stop):
            resid = run_block(self, layer, self.blocks[layer], resid, mask, rotary)
        return resid

    @staticmethod
    def last_positions(attention_mask: Tensor) -> Tensor:
        """Index of each row's last attended token (left or right padding)."""
        pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        return (attention_mask.bool() * (pos + 1)).argmax(-1)

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
        return_type: ReturnType = "score",
        position_ids: Tensor | None = None,
    ) -> Tensor | None:
        """Scores ``[batch]`` (or logits ``[batch, n_labels]``, nothing, or the residual stream).

        ``position_ids`` (default: the batch's, else ``0..pos-1``) set the rotary positions; pass them
        with ``start_at_layer`` for aligned inputs, whose real tokens keep their positions.
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
        h = self.ln_final(resid)
        if attention_mask is None:
            last = torch.full((h.shape[0],), h.shape[1] - 1, device=h.device)
        else:
            last = self.last_positions(attention_mask.to(h.device))
        logits = self.head(h[torch.arange(h.shape[0], device=h.device), last])
        if return_type == "logits":
            return logits
        score = logits[:, 0] if self.cfg.n_labels == 1 else torch.log_softmax(logits, dim=-1)[:, 1]
        score = self.hook_score(score)
        return None if return_type is None else score

    # -- tokenization, scoring, attribution protocol --------------------------------------------
    def tokenize(self, queries: Any, docs: Any, *, max_length: int | None = None) -> PairBatch:
        """The template's text around each pair (or, for a seq-cls checkpoint without a template, the
        tokenizer's pair encoding), right-padded; overlong documents are truncated and reported."""
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; pass tokenizer= to from_pretrained")
        ml = max_length or self.max_length
        if self.template is not None:
            batch = tokenize_template(
                self.tokenizer, self.template, queries, docs, max_length=ml, n_ctx=self.cfg.n_ctx
            )
        else:
            batch = tokenize_pairs(
                self.tokenizer, queries, docs, max_length=ml, n_ctx=self.cfg.n_ctx, use_token_types=False
            )
        return batch.to(self.device)

    def __repr__(self) -> str:
        c = self.cfg
        t = self.template.name if self.template is not None else None
        return (
            f"HookedDecoderReranker(architecture={c.architecture!r}, n_layers={c.n_layers}, n_heads={c.n_heads}, "
            f"n_key_value_heads={c.n_key_value_heads}, d_model={c.d_model}, d_mlp={c.d_mlp}, n_labels={c.n_labels}, "
            f"template={t!r})"
        )


def decoder_config(hf: dict[str, Any], source: str, *, n_labels: int, name: str) -> DecoderConfig:
    """A :class:`DecoderConfig` from a Hugging Face config dict; unsupported variants are refused."""
    mt = hf.get("model_type")
    if mt not in DECODER_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{source}: model_type={mt!r} is not a decoder family {DECODER_MODEL_TYPES}"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UnsupportedArchitectureError(
            f"{source} uses rope_type={rope_type!r}; only default rotary embeddings (rope_theta, no scaling) are "
            "implemented: use a checkpoint without rope scaling"
        )
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedArchitectureError(f"{source}: partial_rotary_factor != 1 is not implemented")
    if hf.get("use_sliding_window") or (mt == "mistral" and hf.get("sliding_window") is not None):
        raise UnsupportedArchitectureError(
            f"{source} uses sliding-window attention, which is not implemented; set use_sliding_window=false "
            "(or sliding_window=null for Mistral) if the window exceeds your inputs"
        )
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    return DecoderConfig(
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_model=hf["hidden_size"],
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf.get("max_position_embeddings", 2048),
        act_fn=hf.get("hidden_act", "silu"),
        eps=hf.get("rms_norm_eps", 1e-6),
        n_labels=n_labels or 1,
        model_name=name,
        architecture=mt,
        n_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or 0,
        rope_theta=float(theta),
        qk_norm=mt == "qwen3",
    )


_LAYER = {
    "input_layernorm.weight": "ln1.w",
    "post_attention_layernorm.weight": "ln2.w",
    "self_attn.q_norm.weight": "attn.q_norm.w",
    "self_attn.k_norm.weight": "attn.k_norm.w",
    "mlp.gate_proj.weight": "mlp.W_gate_lin",
    "mlp.up_proj.weight": "mlp.W_in_lin",
    "mlp.down_proj.weight": "mlp.W_out_lin",
    "mlp.gate_proj.bias": "mlp.b_gate",
    "mlp.up_proj.bias": "mlp.b_in",
    "mlp.down_proj.bias": "mlp.b_out",
    "self_attn.o_proj.bias": "attn.b_O",
    **{f"self_attn.{x}_proj.weight": f"attn.W_{x.upper()}_lin" for x in "qkvo"},
    **{f"self_attn.{x}_proj.bias": f"attn.b_{x.upper()}_lin" for x in "qkv"},
}


def convert_decoder_weights(
    sd: dict[str, Tensor], cfg: DecoderConfig, source: str, answers: tuple[int, int] | None
) -> dict[str, Tensor]:
    """Hugging Face decoder weights -> the hooked names; biases absent from the checkpoint are zero.
    ``answers`` (causal LM): the (no, yes) rows of ``lm_head`` (or of the tied embeddings) become the head."""
    out: dict[str, Tensor] = {}
    used = set()
    for k, v in sd.items():
        rest = k.removeprefix("model.")
        if rest == "embed_tokens.weight":
            out["embed.W_E"] = v
        elif rest == "norm.weight":
            out["ln_final.w"] = v
        elif rest.startswith("layers."):
            _, li, key = rest.split(".", 2)
            if key not in _LAYER:
                raise ModelLoadError(
                    f"{source} holds {k}, which this decoder port does not know; unsupported variant"
                )
            out[f"blocks.{li}.{_LAYER[key]}"] = v
        elif k in ("score.weight", "lm_head.weight"):
            continue
        else:
            raise ModelLoadError(
                f"{source} holds {k}, which this decoder port does not know; unsupported variant"
            )
        used.add(k)
    if answers is not None:
        table = sd.get("lm_head.weight", out.get("embed.W_E"))
        if table is None:
            raise ModelLoadError(f"{source} has neither lm_head.weight nor embed_tokens.weight")
        out["head.W"] = table[list(answers)].clone()
    elif "score.weight" in sd:
        out["head.W"] = sd["score.weight"]
    else:
        raise ModelLoadError(
            f"{source} has no score.weight (the sequence-classification head); save it again"
        )
    n_labels = int(out["head.W"].shape[0])
    if n_labels not in (1, 2):
        raise ModelLoadError(
            f"{source} has a score head with {n_labels} labels; a relevance head has 1 (score = logit) or 2 "
            "(score = log_softmax[:, 1])"
        )
    with torch.device("meta"):  # shapes only: no memory for a second copy of the weights
        fields = {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
        model = HookedDecoderReranker(DecoderConfig(**{**fields, "n_labels": n_labels}))
    for k, want in model.state_dict().items():
        if k not in out:
            if k.rsplit(".", 1)[-1].startswith("b_"):
                out[k] = torch.zeros(want.shape, dtype=want.dtype)
            else:
                raise ModelLoadError(
                    f"{source} lacks the weights for {k}; the config does not match the weights"
                )
        elif tuple(out[k].shape) != tuple(want.shape):
            raise ModelLoadError(
                f"{source} holds {k} of shape {tuple(out[k].shape)}; config.json implies {tuple(want.shape)}"
            )
    return out


__all__ = ["DECODER_MODEL_TYPES", "DecoderConfig", "HookedDecoderReranker", "decoder_config"]
