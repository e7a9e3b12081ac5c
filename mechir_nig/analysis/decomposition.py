"""The residual stream as a sum of component contributions, every LayerNorm's scale frozen at the run's values.

In a post-LN encoder (BERT, ELECTRA, RoBERTa/XLM-R, DistilBERT, DeBERTa) every block renormalises the
stream: ``resid_mid = resid_pre + attn_out``, ``ln1(resid_mid) = w₁ ⊙ C(resid_mid) · s₁ + b₁`` (``C``
centres a vector, ``s₁ = 1/sqrt(var + eps)`` per position), ``resid_post = ln1(resid_mid) + mlp_out``,
block output ``ln2(resid_post)``. With the scales ``s`` fixed at the values the run had
(``blocks.{l}.ln1.hook_scale`` ...) each LayerNorm is the **affine** map ``x ↦ w ⊙ C(x) · s + b``, and
the stream at any point is the sum of

- ``embed``: the embedding output (``hook_full_embed``),
- each head's output ``L{l}H{h}`` (``z_h W_O[h]``; or ``{l}_attn_out`` with ``heads=False``) and the
  attention bias ``{l}_attn_bias`` (``b_O``),
- each MLP's output ``{l}_mlp_out`` (its bias ``b_out`` included),
- each LayerNorm's bias ``{l}_ln1_bias``, ``{l}_ln2_bias`` (and ``ln_final_bias``),

each carried to that point through the linear parts ``x ↦ w ⊙ C(x) · s`` of the LayerNorms it passes.
Pre-LN families (ModernBERT) need no freezing inside the blocks (the stream is a plain sum); their final
norm (``ln_final``) is frozen the same way.

**What this is.** A linearisation *at this run*: the contributions add up to the run's residual stream
exactly (to float rounding: tested to 1e-10 in float64), and ``decompose_score`` to a bi-encoder's score.
It is not a counterfactual: a component's contribution is what it adds *given the scales this input
produced*; removing or changing a component changes the scales (every LayerNorm renormalises), so the
score change of an ablation is not its contribution (use ``patch`` / ``ablate`` for that, or patch the
``ln*_scale`` sites to freeze the scales in an intervention). Each head's and MLP's output is its direct
contribution: what it writes, not what later components compute from it.

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

from mechir_nig._validate import check_bool
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
    """A bi-encoder's scores as a sum of component contributions (frozen LayerNorm scales, pooling, and the
    L2 norm of cosine similarity frozen at the run's value).

    Shapes:
        contributions: ``[component, batch]`` in ``labels``' order; ``contributions.sum(0)`` is ``scores``.
        scores: ``[batch]``, the model's own scores.

    Example:
        >>> sd = decompose_score(be, be.tokenize(docs), be.encode(queries))
        >>> bool((sd.contributions.sum(0) - sd.scores).abs().max() < 1e-4)
        True
    """

    contributions: Float[Tensor, "component batch"]
    labels: list[str]
    scores: Float[Tensor, " batch"]

    def top(self, k: int = 10, pair: int = 0) -> list[tuple[str, float]]:
        """The ``k`` largest ``|contribution|`` components of pair ``pair``, ``(label, contribution)``.

        Example:
            >>> decompose_score(be, be.tokenize(docs), be.encode(queries)).top(2)  # doctest: +SKIP
            [('11_ln2_bias', 0.41), ('L11H3', 0.12)]
        """
        c = self.contributions[:, pair]
        order = c.abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(c[i])) for i in order.tolist()]


def _kind(model: HookedModel) -> str:
    """``"post"`` or ``"pre"``: whether ``model``'s blocks are post-LN (BERT-like) or pre-LN (ModernBERT)."""
    from mechir_nig.models.components.block import EncoderBlock
    from mechir_nig.models.components.modernbert import PreLNBlock

    blocks = list(getattr(model, "blocks", None) or [])
    if blocks and all(isinstance(b, EncoderBlock) for b in blocks):
        return "post"
    if blocks and all(isinstance(b, PreLNBlock) for b in blocks):
        return "pre"
    raise UnsupportedArchitectureError(
        f"decompose_resid needs an encoder of the BERT-like families, DeBERTa or ModernBERT; "
        f"{type(model).__name__} has other blocks"
    )


def _linear_part(ln: Any, scale: Tensor) -> Any:
    """The LayerNorm ``ln`` with its scale frozen, less its bias: ``x ↦ w ⊙ (x − mean x) · scale``."""
    w = ln.w.detach()

    def apply(x: Tensor) -> Tensor:
        return (x - x.mean(-1, keepdim=True)) * scale.to(x.dtype) * w.to(x.dtype)

    return apply


def _hooks(n: int, kind: str, final: bool, heads: bool) -> list[str]:
    names = ["hook_full_embed"]
    for layer in range(n):
        b = f"blocks.{layer}."
        names += [b + ("attn.hook_z" if heads else "hook_attn_out"), b + "hook_mlp_out"]
        if kind == "post":
            names += [b + "ln1.hook_scale", b + "ln2.hook_scale"]
    return names + (["ln_final.hook_scale"] if final else [])


@torch.no_grad()
def decompose_resid(
    model: HookedModel, batch: Any, *, layer: int | None = None, heads: bool = True
) -> ResidDecomposition:
    """The residual stream of ``batch`` before block ``layer`` (``None``: the encoder's output, after a final
    norm if the family has one) as a sum of component contributions, every LayerNorm scale frozen at this
    run's values (see the module docstring: a linearisation exact for this run, not a counterfactual).

    Args:
        model: a cross- or bi-encoder of the BERT-like families, DeBERTa or ModernBERT.
        batch: a tokenized batch (``model.tokenize(...)``).
        layer: the block whose input is decomposed (``0 .. n_layers``; ``n_layers``: the last block's output,
            before a final norm), or ``None`` for the encoder's output.
        heads: one component per head (``L{l}H{h}`` and ``{l}_attn_bias``), or per attention layer
            (``{l}_attn_out``).

    Returns:
        A :class:`ResidDecomposition`.

    Raises:
        InputError: a layer out of range, a batch that is not tokenized.
        UnsupportedArchitectureError: decoders and monoT5 (other blocks).

    Example:
        >>> dec = decompose_resid(ce, batch, heads=False)
        >>> dec.labels[:4]
        ['embed', '0_attn_out', '0_ln1_bias', '0_mlp_out']
        >>> dec["0_ln2_bias"].shape == dec.resid.shape  # [batch, pos, d_model]
        True
    """
    kind = _kind(model)
    enc: Any = model  # an encoder: its blocks and final norm
    heads = check_bool(heads, "heads")
    n = model.cfg.n_layers
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n):
        raise InputError(f"layer must be None or an int in 0..{n} (the block whose input), got {layer!r}")
    if not hasattr(batch, "input_ids") or not hasattr(batch, "attention_mask"):
        raise InputError(f"batch must be a tokenized batch (model.tokenize(...)), got {type(batch).__name__}")
    top = n if layer is None else layer
    final = layer is None and getattr(model, "ln_final", None) is not None
    names = set(_hooks(top, kind, final, heads))
    last = f"blocks.{n - 1}." + ("hook_normalized_resid_post" if kind == "post" else "hook_resid_post")
    if layer is None:
        target = "ln_final.hook_normalized" if final else last
    else:
        target = last if layer == n else f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(batch, names_filter=lambda h: h in names or h == target)

    labels = ["embed"]
    stack = cache["hook_full_embed"][None]
    for lay in range(top):
        blk = enc.blocks[lay]
        b = f"blocks.{lay}."
        if heads:
            z = cache[b + "attn.hook_z"]  # [batch, pos, n_heads, d_head]
            w_o = blk.attn.W_O.detach().to(z.dtype)  # [n_heads, d_head, d_model]
            per_head = einsum(z, w_o, "b p h k, h k d -> h b p d")
            b_o = blk.attn.b_O.detach().to(z.dtype).expand_as(per_head[0])
            new = torch.cat([per_head, b_o[None]])
            labels += [f"L{lay}H{h}" for h in range(per_head.shape[0])] + [f"{lay}_attn_bias"]
        else:
            new = cache[b + "hook_attn_out"][None]
            labels.append(f"{lay}_attn_out")
        stack = torch.cat([stack, new])
        mlp_out = cache[b + "hook_mlp_out"][None]
        if kind == "post":  # ln1 after the attention, ln2 after the MLP, both on the stream
            stack = _linear_part(blk.ln1, cache[b + "ln1.hook_scale"])(stack)
            stack = torch.cat([stack, blk.ln1.b.detach().to(stack.dtype).expand_as(stack[0])[None], mlp_out])
            stack = _linear_part(blk.ln2, cache[b + "ln2.hook_scale"])(stack)
            stack = torch.cat([stack, blk.ln2.b.detach().to(stack.dtype).expand_as(stack[0])[None]])
            labels += [f"{lay}_ln1_bias", f"{lay}_mlp_out", f"{lay}_ln2_bias"]
        else:
            stack = torch.cat([stack, mlp_out])
            labels.append(f"{lay}_mlp_out")
    if final:
        ln = enc.ln_final
        stack = _linear_part(ln, cache["ln_final.hook_scale"])(stack)
        stack = torch.cat([stack, ln.b.detach().to(stack.dtype).expand_as(stack[0])[None]])
        labels.append("ln_final_bias")
    return ResidDecomposition(stack, labels, cache[target], batch.attention_mask, layer)


@torch.no_grad()
def decompose_score(
    model: HookedModel, batch: Any, query_embeddings: Float[Tensor, "batch d_model"], *, heads: bool = True
) -> ScoreDecomposition:
    """A bi-encoder's scores ``sim(E(text), query_embeddings)`` as a sum of component contributions: the
    encoder output's :func:`decompose_resid` pooled as the model pools (mean over attended tokens, or
    ``[CLS]``), divided by the pooled vector's L2 norm (cosine; frozen at this run's value), and dotted with
    the fixed query embeddings. A linearisation exact for this run (see the module docstring).

    Args:
        model: a ``HookedBiEncoder`` (a cross-encoder's head, ``tanh`` pooler or activation, is not linear:
            decompose its ``[CLS]`` hidden state with :func:`decompose_resid` instead).
        batch: the texts' ``TextBatch`` (``model.tokenize(texts)``).
        query_embeddings: the fixed side's embeddings ``[batch, d_model]`` (``model.encode(queries)``).
        heads: as :func:`decompose_resid`.

    Returns:
        A :class:`ScoreDecomposition`.

    Raises:
        InputError: a cross-encoder, or embeddings of the wrong shape.

    Example:
        >>> sd = decompose_score(be, be.tokenize(docs), be.encode(queries))
        >>> sd.contributions.shape[0] == len(sd.labels)  # [component, batch]
        True
    """
    if getattr(model, "pairwise", True) or not hasattr(model, "pool"):
        raise InputError(
            f"decompose_score takes a bi-encoder; {type(model).__name__}'s score head is not linear in its "
            "hidden states: use decompose_resid(model, batch) and read the [CLS] position"
        )
    n_batch, d = len(batch), model.cfg.d_model
    q = query_embeddings
    if not isinstance(q, Tensor) or tuple(q.shape) != (n_batch, d):
        shape = tuple(q.shape) if isinstance(q, Tensor) else type(q).__name__
        raise InputError(
            f"query_embeddings must be a tensor [batch, d_model] = ({n_batch}, {d}), got {shape}"
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
    return ScoreDecomposition(contributions, dec.labels, scores)
