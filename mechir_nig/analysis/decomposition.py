"""The residual stream and the score as sums of component contributions, every nonlinearity between a
component and the output frozen at the run's values (norm scales, the score head's activation).

In a post-LN encoder (BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT, DeBERTa) every block renormalises the
stream: ``resid_mid = resid_pre + attn_out``, ``ln1(resid_mid) = w₁ ⊙ C(resid_mid) · s₁ + b₁`` (``C``
centres a vector, ``s₁ = 1/sqrt(var + eps)`` per position), ``resid_post = ln1(resid_mid) + mlp_out``,
block output ``ln2(resid_post)``. With the scales ``s`` fixed at the values the run had
(``blocks.{l}.ln1.hook_scale`` ...) each LayerNorm is the **affine** map ``x ↦ w ⊙ C(x) · s + b``, and
the stream at any point is the sum of

- ``embed``: the embedding output (``hook_full_embed``; a decoder's ``hook_embed``),
- each head's output ``L{l}H{h}`` (``z_h W_O[h]``; or ``{l}_attn_out`` with ``heads=False``) and the
  attention bias ``{l}_attn_bias`` (``b_O``),
- each MLP's output ``{l}_mlp_out`` (its bias ``b_out`` included),
- each LayerNorm's bias ``{l}_ln1_bias``, ``{l}_ln2_bias`` (and ``ln_final_bias``),

each carried to that point through the linear parts ``x ↦ w ⊙ C(x) · s`` of the LayerNorms it passes.
Pre-LN families (ModernBERT, decoder rerankers) need no freezing inside the blocks (the stream is a plain
sum); their final norm (``ln_final``) is frozen the same way (a decoder's RMSNorm: ``x ↦ w ⊙ x · s``, no
centring, no bias).

:func:`decompose_score` carries the final hidden states on through the score head (TransformerLens'
``cache.logit_attrs``, the direct score attribution), freezing the head's nonlinearities too: a
bi-encoder's cosine norm; a cross-encoder's dense-layer activation (``tanh``, GELU, ReLU) as the per-unit
ratio ``act(u)/u`` at the run's pre-activation ``u`` (``act'(0)`` where ``u == 0``), so that
``act(W h + b) = ratio ⊙ (W h) + ratio ⊙ b`` splits over the components of ``h``, and ModernBERT's head
LayerNorm's scale; a decoder's final RMSNorm's scale. The head's biases add ``head_bias``. A 2-label head's
score ``log_softmax(logits)[:, 1]`` is not linear in the logits: its margin ``logits[:, 1] - logits[:, 0]``
is decomposed instead (``ScoreDecomposition.target``). monoT5's ``logit_true - logit_false`` is read at one
decoder step: it is decomposed over the decoder's components (``dec_embed``, self-attention heads
``dec_L{l}H{h}``, cross-attention heads ``dec_L{l}X{h}``, ``dec_{l}_mlp_out``) through the frozen final
RMSNorm; the encoder reaches that step only through cross-attention, so it has no direct contribution
(:func:`decompose_resid` refuses monoT5's two stacks).

**What this is.** A linearisation *at this run*: the contributions add up to the run's residual stream,
score or logit margin exactly (to float rounding: tested to 1e-10 in float64 on every supported family).
It is not a counterfactual: a component's contribution is what it adds *given the scales and activation
ratios this input produced*; removing or changing a component changes them (every LayerNorm renormalises,
``tanh`` saturates), so the score change of an ablation is not its contribution (use ``patch`` /
``ablate`` for that, or patch the ``ln*_scale`` sites to freeze the scales in an intervention). Each
head's and MLP's output is its direct contribution: what it writes, not what later components compute
from it.

Example:
    >>> dec = decompose_resid(ce, batch)
    >>> dec.components.shape[0] == len(dec.labels), dec.labels[:3]  # [component, batch, pos, d_model]
    (True, ['embed', 'L0H0', 'L0H1'])
    >>> bool((dec.components.sum(0) - dec.resid).abs().max() < 1e-4)  # exact for the run (float32 here)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

from mechir_nig._validate import check_bool, check_int
from mechir_nig.errors import InputError, UnsupportedArchitectureError
from mechir_nig.models.protocol import HookedModel

__all__ = ["ResidDecomposition", "ScoreDecomposition", "decompose_resid", "decompose_score"]


@dataclass(frozen=True)
class ResidDecomposition:
    """The residual stream of a batch at one point as a sum of labelled contributions (frozen LayerNorm scales).

    Shapes:
        components: ``[component, batch, pos, d_model]``, in ``labels``' order; ``components.sum(0)`` is
            ``resid`` (to float rounding).
        resid: ``[batch, pos, d_model]``: the run's residual stream there (the model's own value).
        attention_mask: ``[batch, pos]``.

    Example:
        >>> dec = decompose_resid(ce, batch, layer=3)  # the stream entering block 3
        >>> dec.components.shape[1:] == dec.resid.shape
        True
    """

    components: Float[Tensor, "component batch pos d_model"]
    labels: list[str]
    resid: Float[Tensor, "batch pos d_model"]
    attention_mask: Int[Tensor, "batch pos"]
    layer: int | None

    def __getitem__(self, label: str) -> Float[Tensor, "batch pos d_model"]:
        if label not in self.labels:
            raise InputError(f"no component {label!r}; the components are {self.labels}")
        return self.components[self.labels.index(label)]


@dataclass(frozen=True)
class ScoreDecomposition:
    """A model's scores (or the logit margin they are monotone in) as a sum of component contributions, every
    nonlinearity between the components and the score frozen at the run's values.

    ``target`` names what was decomposed: ``"score"`` (a bi-encoder's similarity; a 1-label cross-encoder's
    or decoder's score, which is its logit) or ``"logit_margin"`` (2-label heads and template rerankers:
    ``logits[:, 1] - logits[:, 0]``, e.g. ``logit_yes - logit_no``; the score
    ``log_softmax(logits)[:, 1] = -softplus(-margin)`` is an increasing function of it, not a linear one).

    Shapes:
        contributions: ``[component, batch]`` in ``labels``' order; ``contributions.sum(0)`` is ``total``.
        scores: ``[batch]``, the model's own scores.
        total: ``[batch]``, the model's own value of ``target`` (``scores`` when ``target == "score"``).

    Example:
        >>> sd = decompose_score(be, be.tokenize(docs), be.encode(queries))
        >>> bool((sd.contributions.sum(0) - sd.scores).abs().max() < 1e-4), sd.target
        (True, 'score')
    """

    contributions: Float[Tensor, "component batch"]
    labels: list[str]
    scores: Float[Tensor, " batch"]
    target: str
    total: Float[Tensor, " batch"]

    def __getitem__(self, label: str) -> Float[Tensor, " batch"]:
        if label not in self.labels:
            raise InputError(f"no component {label!r}; the components are {self.labels}")
        return self.contributions[self.labels.index(label)]

    def top(self, k: int = 10, pair: int = 0) -> list[tuple[str, float]]:
        """The ``k`` largest ``|contribution|`` components of pair ``pair``, ``(label, contribution)``
        (contributions to ``target``: the score, or the logit margin).

        Example:
            >>> sd = decompose_score(be, be.tokenize(docs), be.encode(queries))
            >>> [label for label, _ in sd.top(2)]  # this run's two largest
            ['L5H3', 'L5H7']
        """
        k = check_int(k, "k", minimum=1)
        n = self.contributions.shape[1]
        pair = check_int(pair, "pair", minimum=0, maximum=n - 1, hint=f"the batch has {n} pairs")
        c = self.contributions[:, pair]
        order = c.abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(c[i])) for i in order.tolist()]


_SUPPORTED = (
    "BERT-like encoders (BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT), DeBERTa, ModernBERT and decoder "
    "rerankers (Qwen2/Qwen3/Llama/Mistral)"
)


def _kind(model: HookedModel) -> str:
    """``"post"``, ``"pre"`` or ``"decoder"``: post-LN blocks (BERT-like, DeBERTa), pre-LN blocks (ModernBERT)
    or a decoder reranker's pre-RMSNorm blocks."""
    from mechir_nig.models.components.block import EncoderBlock
    from mechir_nig.models.components.modernbert import PreLNBlock
    from mechir_nig.models.decoder import DecoderBlock

    blocks = list(getattr(model, "blocks", None) or [])
    for kind, cls in (("post", EncoderBlock), ("pre", PreLNBlock), ("decoder", DecoderBlock)):
        if blocks and all(isinstance(b, cls) for b in blocks):
            return kind
    raise UnsupportedArchitectureError(
        f"decompose_resid supports {_SUPPORTED}; {type(model).__name__} has other blocks (monoT5: its "
        "score is read at a decoder step that cross-attends to the encoder; decompose_score(model, batch) "
        "attributes it to the decoder's components)"
    )


def _linear_part(ln: Any, scale: Tensor) -> Any:
    """The norm ``ln`` with its scale frozen, less its bias: ``x ↦ w ⊙ (x − mean x) · scale`` (a LayerNorm)
    or ``x ↦ w ⊙ x · scale`` (an RMSNorm)."""
    from mechir_nig.models.components.layer_norm import LayerNorm

    w = ln.w.detach()
    centre = isinstance(ln, LayerNorm)

    def apply(x: Tensor) -> Tensor:
        c = x - x.mean(-1, keepdim=True) if centre else x
        return c * scale.to(x.dtype) * w.to(x.dtype)

    return apply


def _freeze_norm(ln: Any, scale: Tensor, stack: Tensor) -> tuple[Tensor, bool]:
    """``stack`` ``[component, ...]`` through the frozen norm, its bias (if any) appended as a component."""
    stack = _linear_part(ln, scale)(stack)
    bias = getattr(ln, "b", None)
    if bias is None:
        return stack, False
    return torch.cat([stack, bias.detach().to(stack.dtype).expand_as(stack[0])[None]]), True


def _per_head(z: Tensor, w_o: Tensor) -> Tensor:
    """Each head's output ``z_h W_O[h]`` ``[head, batch, pos, d_model]`` from ``hook_z``
    ``[batch, pos, head, d_head]`` and ``W_O`` ``[head, d_head, d_model]``."""
    return einsum(z, w_o.detach().to(z.dtype), "b p h k, h k d -> h b p d")


def _hooks(n: int, kind: str, final: bool, heads: bool) -> list[str]:
    names = ["hook_embed" if kind == "decoder" else "hook_full_embed"]
    for layer in range(n):
        b = f"blocks.{layer}."
        names += [b + ("attn.hook_z" if heads else "hook_attn_out"), b + "hook_mlp_out"]
        if kind == "post":
            names += [b + "ln1.hook_scale", b + "ln2.hook_scale"]
    return names + (["ln_final.hook_scale"] if final else [])


def _check_batch(model: HookedModel, batch: Any) -> None:
    """``batch`` is ``model``'s kind of tokenized batch: a ``PairBatch`` (``model.tokenize(queries, docs)``)
    for a pair reranker, a ``TextBatch`` (``model.tokenize(texts)``) for a bi-encoder."""
    from mechir_nig.models.tokenization import PairBatch, TextBatch

    pair = getattr(model, "pairwise", True)
    want, call = (
        (PairBatch, "model.tokenize(queries, docs)") if pair else (TextBatch, "model.tokenize(texts)")
    )
    if not isinstance(batch, want):
        other = TextBatch if pair else PairBatch
        kind = (
            f"the other kind of batch ({other.__name__})"
            if isinstance(batch, other)
            else type(batch).__name__
        )
        raise InputError(
            f"batch must be a tokenized batch of {type(model).__name__}, {call} (a {want.__name__}), got {kind}"
        )


def _decompose(
    model: HookedModel, batch: Any, layer: int | None, heads: bool, extra: tuple[str, ...] = ()
) -> tuple[ResidDecomposition, Any]:
    """:func:`decompose_resid` and the run's cache (with the ``extra`` hooks, for the score heads)."""
    kind = _kind(model)
    enc: Any = model  # an encoder or decoder: its blocks and final norm
    heads = check_bool(heads, "heads")
    n = model.cfg.n_layers
    check_int(
        layer, "layer", minimum=0, maximum=n, allow_none=True, hint="the block whose input; None: the output"
    )
    _check_batch(model, batch)
    top = n if layer is None else layer
    final = layer is None and getattr(model, "ln_final", None) is not None
    names = set(_hooks(top, kind, final, heads)) | set(extra)
    last = f"blocks.{n - 1}." + ("hook_normalized_resid_post" if kind == "post" else "hook_resid_post")
    if layer is None:
        target = "ln_final.hook_normalized" if final else last
    else:
        target = last if layer == n else f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(batch, names_filter=lambda h: h in names or h == target)

    labels = ["embed"]
    stack = cache[_hooks(0, kind, False, heads)[0]][None]
    for lay in range(top):
        blk = enc.blocks[lay]
        b = f"blocks.{lay}."
        if heads:
            per_head = _per_head(cache[b + "attn.hook_z"], blk.attn.W_O)
            b_o = blk.attn.b_O.detach().to(per_head.dtype).expand_as(per_head[0])
            new = torch.cat([per_head, b_o[None]])
            labels += [f"L{lay}H{h}" for h in range(per_head.shape[0])] + [f"{lay}_attn_bias"]
        else:
            new = cache[b + "hook_attn_out"][None]
            labels.append(f"{lay}_attn_out")
        stack = torch.cat([stack, new])
        mlp_out = cache[b + "hook_mlp_out"][None]
        if kind == "post":  # ln1 after the attention, ln2 after the MLP, both on the stream
            stack, _ = _freeze_norm(blk.ln1, cache[b + "ln1.hook_scale"], stack)
            stack, _ = _freeze_norm(blk.ln2, cache[b + "ln2.hook_scale"], torch.cat([stack, mlp_out]))
            labels += [f"{lay}_ln1_bias", f"{lay}_mlp_out", f"{lay}_ln2_bias"]
        else:
            stack = torch.cat([stack, mlp_out])
            labels.append(f"{lay}_mlp_out")
    if final:
        stack, has_bias = _freeze_norm(enc.ln_final, cache["ln_final.hook_scale"], stack)
        labels += ["ln_final_bias"] if has_bias else []
    return ResidDecomposition(stack, labels, cache[target], batch.attention_mask, layer), cache


@torch.no_grad()
def decompose_resid(
    model: HookedModel, batch: Any, *, layer: int | None = None, heads: bool = True
) -> ResidDecomposition:
    """The residual stream of ``batch`` before block ``layer`` (``None``: the model's final hidden states,
    after a final norm if the family has one) as a sum of component contributions, every norm's scale frozen
    at this run's values (see the module docstring: a linearisation exact for this run, not a
    counterfactual).

    Args:
        model: a cross-, bi-encoder or decoder reranker of the BERT-like families, DeBERTa, ModernBERT or
            the decoder families (Qwen2/Qwen3/Llama/Mistral).
        batch: a tokenized batch (``model.tokenize(...)``).
        layer: the block whose input is decomposed (``0 .. n_layers``; ``n_layers``: the last block's output,
            before a final norm), or ``None`` for the final hidden states.
        heads: one component per head (``L{l}H{h}`` and ``{l}_attn_bias``), or per attention layer
            (``{l}_attn_out``).

    Returns:
        A :class:`ResidDecomposition`.

    Raises:
        InputError: a layer out of range, a batch that is not the model's tokenized batch (a ``PairBatch`` of
            a reranker, a ``TextBatch`` of a bi-encoder).
        UnsupportedArchitectureError: monoT5 (other blocks: use :func:`decompose_score`).

    Example:
        >>> dec = decompose_resid(ce, batch, heads=False)
        >>> dec.labels[:4]
        ['embed', '0_attn_out', '0_ln1_bias', '0_mlp_out']
        >>> dec["0_ln2_bias"].shape == dec.resid.shape  # [batch, pos, d_model]
        True
    """
    return _decompose(model, batch, layer, heads)[0]


def _frozen_ratio(act: Any, u: Tensor) -> Tensor:
    """``act(u) / u`` per unit (``act'(0)`` where ``u == 0``): with it frozen, ``act(x) = ratio ⊙ x`` at ``x = u``."""
    with torch.enable_grad():
        zero = torch.zeros((), dtype=u.dtype, device=u.device, requires_grad=True)
        (slope,) = torch.autograd.grad(act(zero), zero)
    at_zero = u == 0
    return torch.where(at_zero, slope.detach(), act(u) / torch.where(at_zero, torch.ones_like(u), u))


def _target(model: Any, logits: Tensor, w: Tensor, b: Tensor | None) -> tuple[str, Tensor, Tensor, Tensor]:
    """What is decomposed (``"score"``: the 1-label logit; ``"logit_margin"``: ``logits[:, 1] - logits[:, 0]``),
    its run value, and the classifier's row and bias for it."""
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    if model.cfg.n_labels == 1:
        return "score", logits[:, 0], w[0], zero if b is None else b[0]
    return "logit_margin", logits[:, 1] - logits[:, 0], w[1] - w[0], zero if b is None else b[1] - b[0]


def _cross_encoder_score(model: Any, batch: Any, heads: bool) -> ScoreDecomposition:
    """A cross-encoder's score (or logit margin) through its head, every nonlinearity frozen at the run."""
    from mechir_nig.models.components.modernbert import PoolingHead

    pooler = model.pooler
    normed = isinstance(pooler, PoolingHead)
    extra = ("classifier.hook_logits", "hook_score") + (("pooler.ln.hook_scale",) if normed else ())
    dec, cache = _decompose(model, batch, None, heads, extra)
    mask = batch.attention_mask
    x = pooler.pool(dec.components, mask)  # what the head reads, per component: [component, batch, d_model]
    w, b = pooler.W.detach().to(x.dtype), pooler.b.detach().to(x.dtype)
    ratio = _frozen_ratio(pooler.act, torch.nn.functional.linear(pooler.pool(dec.resid, mask), w, b))
    y, y_bias = ratio * (x @ w.T), ratio * b  # the dense layer and its activation, frozen
    if normed:  # ModernBERT: the head's LayerNorm, its scale frozen
        y, _ = _freeze_norm(pooler.ln, cache["pooler.ln.hook_scale"], torch.cat([y, y_bias[None]]))
        y, y_bias = y[:-2], y[-2] + y[-1]
    cls = model.classifier
    target, total, row, bias = _target(model, cache["classifier.hook_logits"], cls.W.detach(), cls.b.detach())
    row, bias = row.to(x.dtype), bias.to(x.dtype)
    contributions = torch.cat([y @ row, (y_bias @ row + bias)[None]])
    return ScoreDecomposition(contributions, [*dec.labels, "head_bias"], cache["hook_score"], target, total)


def _decoder_score(model: Any, batch: Any, heads: bool) -> ScoreDecomposition:
    """A decoder reranker's score (or yes/no margin) at the last attended token, its final RMSNorm frozen."""
    dec, cache = _decompose(model, batch, None, heads, ("head.hook_logits", "hook_score"))
    last = model.last_positions(batch.attention_mask.to(dec.components.device))
    x = dec.components[:, torch.arange(len(last), device=last.device), last]  # [component, batch, d_model]
    target, total, row, _ = _target(model, cache["head.hook_logits"], model.head.W.detach(), None)
    return ScoreDecomposition(x @ row.to(x.dtype), dec.labels, cache["hook_score"], target, total)


def _monot5_score(model: Any, batch: Any, heads: bool) -> ScoreDecomposition:
    """monoT5's ``logit_true - logit_false`` at its one decoder step, over the decoder's components (the
    encoder reaches that step only through cross-attention: no encoder component writes it directly)."""
    _check_batch(model, batch)
    cfg, p = model.cfg, "decoder.blocks."
    names = [p + "0.hook_resid_pre", "decoder.ln_final.hook_scale", "hook_logits", "hook_score"]
    for lay in range(cfg.n_decoder_layers):
        names += [f"{p}{lay}.{h}" for h in ("attn.hook_z", "cross_attn.hook_z", "hook_mlp_out")]
        names += [] if heads else [f"{p}{lay}.hook_attn_out", f"{p}{lay}.hook_cross_attn_out"]
    _, cache = model.run_with_cache(batch, names_filter=names)
    labels, parts = ["dec_embed"], [cache[p + "0.hook_resid_pre"][None]]
    for lay, blk in enumerate(model.decoder.blocks):
        for attn, site, tag in ((blk.attn, "attn", "H"), (blk.cross_attn, "cross_attn", "X")):
            if heads:  # T5's ``o`` has no bias
                w_o = attn.o.weight.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
                parts.append(_per_head(cache[f"{p}{lay}.{site}.hook_z"], w_o))
                labels += [f"dec_L{lay}{tag}{h}" for h in range(cfg.n_heads)]
            else:
                parts.append(cache[f"{p}{lay}.hook_{site}_out"][None])
                labels.append(f"dec_{lay}_{site}_out")
        parts.append(cache[f"{p}{lay}.hook_mlp_out"][None])
        labels.append(f"dec_{lay}_mlp_out")
    stack = _linear_part(model.decoder.ln_final, cache["decoder.ln_final.hook_scale"])(torch.cat(parts))
    if cfg.scale_decoder_outputs:  # T5 v1.0's tied head
        stack = stack * cfg.d_model**-0.5
    neg, pos = model.answer_ids
    logits = cache["hook_logits"]
    row = (model.W_U[pos] - model.W_U[neg]).detach().to(stack.dtype)
    total = logits[:, pos] - logits[:, neg]
    return ScoreDecomposition(stack[:, :, 0] @ row, labels, cache["hook_score"], "logit_margin", total)


def _bi_encoder_score(model: Any, batch: Any, query_embeddings: Any, heads: bool) -> ScoreDecomposition:
    n_batch, d = len(batch), model.cfg.d_model
    q = query_embeddings
    if not isinstance(q, Tensor) or tuple(q.shape) != (n_batch, d):
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise InputError(
            f"query_embeddings must be a tensor [batch, d_model] = ({n_batch}, {d}) for a bi-encoder "
            f"(model.encode(queries)), got {shape}"
        )
    dec = decompose_resid(model, batch, heads=heads)
    comps = dec.components  # [component, batch, pos, d_model]
    n_comp = comps.shape[0]
    mask = batch.attention_mask.repeat(n_comp, 1)
    pooled = model.pool(comps.flatten(0, 1), mask).view(n_comp, n_batch, d)
    if getattr(model, "similarity", None) == "cosine":
        pooled = pooled / pooled.sum(0).norm(dim=-1, keepdim=True)  # the run's norm, frozen
    contributions = (pooled * q.to(pooled.device, pooled.dtype)).sum(-1)  # [component, batch]
    scores = (model(batch) * q.to(pooled.device, pooled.dtype)).sum(-1)
    return ScoreDecomposition(contributions, dec.labels, scores, "score", scores)


@torch.no_grad()
def decompose_score(
    model: HookedModel, batch: Any, query_embeddings: Float[Tensor, "batch d_model"] | None = None, *,
    heads: bool = True,
) -> ScoreDecomposition:  # fmt: skip
    """The direct score attribution of every component (TransformerLens' ``cache.logit_attrs``): the
    final hidden states' :func:`decompose_resid` carried through the score head with every nonlinearity
    frozen at this run's values, so the head is linear *at this run* and the contributions add up to the
    model's score (or logit margin) exactly. A linearisation, not a counterfactual (module docstring).

    - Bi-encoder: pooled as the model pools (mean over attended tokens, or ``[CLS]``), divided by the pooled
      vector's L2 norm (cosine; frozen) and dotted with the fixed ``query_embeddings``.
    - Cross-encoder (BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT, DeBERTa's ``ContextPooler``, ModernBERT):
      the head's input (``[CLS]``, or ModernBERT's mean over attended tokens), its dense layer
      ``u = W h + b``, the activation (``tanh``, GELU, ReLU) frozen as the per-unit ratio ``act(u)/u`` at
      the run's ``u`` (``act'(0)`` where ``u == 0``: any value reconstructs there, the slope is the natural
      one), ModernBERT's head LayerNorm with its scale frozen, then the classifier. What the head's biases
      add (dense bias through the frozen activation, head norm bias, classifier bias) is ``head_bias``.
    - Decoder reranker: the last attended token after the final RMSNorm (scale frozen), dotted with the
      score head's row (sequence classifier) or answer rows (template: ``logit_yes - logit_no``).
    - monoT5: its one decoder step's components (``dec_embed``, ``dec_L{l}H{h}`` self-attention heads,
      ``dec_L{l}X{h}`` cross-attention heads, ``dec_{l}_mlp_out``; T5 has no biases) through the decoder's
      final RMSNorm (scale frozen; T5 v1.0's ``d_model ** -0.5``) and ``W_U[true] - W_U[false]``. The
      encoder writes that step only through cross-attention: its components have no direct contribution.

    With 1 label the score is the logit (``target == "score"``); with 2 labels (MonoBERT, templates, monoT5) the
    score ``log_softmax(logits)[:, 1] = -softplus(-margin)`` is a nonlinear, increasing function of the
    margin ``logits[:, 1] - logits[:, 0]``, which is what is decomposed (``target == "logit_margin"``,
    its run value in ``total``).

    Args:
        model: a bi-encoder, a cross-encoder, a decoder reranker or monoT5.
        batch: the tokenized batch (``model.tokenize(queries, docs)``; a bi-encoder: ``model.tokenize(texts)``).
        query_embeddings: a bi-encoder's fixed side ``[batch, d_model]`` (``model.encode(queries)``); ``None``
            for pair rerankers.
        heads: as :func:`decompose_resid`.

    Returns:
        A :class:`ScoreDecomposition` (labels: :func:`decompose_resid`'s, then ``head_bias`` for an encoder
        head with biases).

    Raises:
        InputError: query embeddings missing, of the wrong shape, or given to a pair reranker; a batch
            that is not the model's tokenized batch.
        UnsupportedArchitectureError: a model of none of these kinds.

    Example:
        >>> sd = decompose_score(ce, batch)  # a cross-encoder: [CLS] -> tanh pooler -> classifier, frozen
        >>> bool((sd.contributions.sum(0) - sd.total).abs().max() < 1e-4), sd.target, sd.labels[-1]
        (True, 'score', 'head_bias')
        >>> sd = decompose_score(be, be.tokenize(docs), be.encode(queries))  # a bi-encoder
        >>> sd.contributions.shape[0] == len(sd.labels)  # [component, batch]
        True
    """
    from mechir_nig.models.cross_encoder import HookedCrossEncoder
    from mechir_nig.models.decoder import HookedDecoderReranker
    from mechir_nig.models.t5 import HookedMonoT5

    heads = check_bool(heads, "heads")
    pair = isinstance(model, (HookedCrossEncoder, HookedDecoderReranker, HookedMonoT5))
    if pair and query_embeddings is not None:
        raise InputError(
            f"{type(model).__name__} scores (query, document) pairs in one input: pass no query_embeddings "
            "(they are for a bi-encoder's fixed side)"
        )
    if isinstance(model, HookedCrossEncoder):
        return _cross_encoder_score(model, batch, heads)
    if isinstance(model, HookedDecoderReranker):
        return _decoder_score(model, batch, heads)
    if isinstance(model, HookedMonoT5):
        return _monot5_score(model, batch, heads)
    if getattr(model, "pairwise", True) or not hasattr(model, "pool"):
        raise UnsupportedArchitectureError(
            "decompose_score supports bi-encoders, cross-encoders, decoder rerankers and monoT5; got "
            f"{type(model).__name__}"
        )
    return _bi_encoder_score(model, batch, query_embeddings, heads)
