"""What an architecture adapter provides, and the weight-conversion helpers the families share.

An adapter (one module per family) maps a Hugging Face ``config.json`` onto ``EncoderConfig``,
converts the checkpoint's weights to the hooked port's parameter names, and says which checkpoint
classes it accepts. Adding a family is one module: write its ``config`` and ``convert`` functions and
an ``ARCHITECTURE`` record, and list it in ``architectures/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mechir_nig.errors import ModelLoadError
from mechir_nig.models.components import Embed, EncoderBlock, Pooler
from mechir_nig.models.config import EncoderConfig

StateDict = dict[str, torch.Tensor]


class Weights:
    """A checkpoint's tensors, taken one by one; a missing key raises ``ModelLoadError`` naming it."""

    def __init__(self, sd: StateDict, source: str, family: str):
        self.sd = {
            k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in sd.items()
        }
        self.source = source
        self.family = family

    def __contains__(self, key: str) -> bool:
        return key in self.sd

    def take(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            raise ModelLoadError(
                f"{self.source} is missing the weight {key!r} that a {self.family} checkpoint has; "
                "is it a complete checkpoint of this family (config.json model_type)?"
            )
        return self.sd.pop(key)

    def linear(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.take(key + ".weight"), self.take(key + ".bias")


@dataclass(frozen=True)
class Architecture:
    """One encoder family.

    Attributes:
        name: the family (``bert``, ``electra``, ``roberta``, ``distilbert``).
        model_types: ``config.json`` ``model_type`` values it loads.
        prefix: the body's prefix inside task checkpoints (``bert.``, ``electra.``, ``roberta.`` ...).
        cross_encoder_classes / bi_encoder_classes: ``architectures`` entries it loads as each.
        head: ``(dense, out)`` key stems of the sequence-classification head (``dense`` ``None`` when
            the head reads the body's pooler, as BERT's does).
        config: HF config dict -> ``EncoderConfig`` keyword arguments.
        convert_body: ``(Weights, EncoderConfig) -> state dict`` of the embeddings and blocks (keys
            without the prefix).
        embed: the embedding module class (default: BERT's ``Embed``).
        block: ``(cfg, layer) -> block`` (default: BERT's post-LN ``EncoderBlock``; DeBERTa-v2's is
            that block with its disentangled attention).
        pooler: the head's dense layer class (default: ``Pooler`` on the first token).
        final_norm: ``cfg -> norm`` applied after the last block in a full forward (pre-LN
            families: ``ln_final``); ``None`` (BERT-like) for none.
        pre_ln: whether the blocks are pre-LN, so TransformerLens' residual decompositions hold
            (``EncoderActivationCache`` refuses them for post-LN families).
        check: HF config dict -> ``None``, raising ``UnsupportedArchitectureError`` for an option the
            port does not implement (``architecture_for`` prefixes the file); ``None``: nothing to check.
    """

    name: str
    model_types: tuple[str, ...]
    prefix: str
    cross_encoder_classes: tuple[str, ...]
    bi_encoder_classes: tuple[str, ...]
    head: tuple[str | None, str]
    config: Callable[[dict[str, Any]], dict[str, Any]]
    convert_body: Callable[[Weights, EncoderConfig], StateDict]
    embed: Callable[[EncoderConfig], nn.Module] = Embed
    block: Callable[[EncoderConfig, int], nn.Module] = EncoderBlock
    pooler: Callable[[EncoderConfig], Pooler] = Pooler
    final_norm: Callable[[EncoderConfig], nn.Module] | None = None
    pre_ln: bool = False
    check: Callable[[dict[str, Any]], None] | None = None

    @property
    def head_keys(self) -> tuple[str, ...]:
        """Weight names whose presence marks a sequence-classification checkpoint."""
        return (self.head[1] + ".weight",)

    def convert_head(self, w: Weights) -> StateDict:
        """``pooler.*`` and ``classifier.*`` of the hooked cross-encoder from the checkpoint's head."""
        dense, out = self.head
        pooler = (self.prefix + "pooler.dense") if dense is None else dense
        if pooler + ".weight" not in w:
            raise ModelLoadError(
                f"{w.source} has no pooler weights ({pooler}.*); the {self.name} classification head reads them"
            )
        sd: StateDict = {}
        sd["pooler.W"], sd["pooler.b"] = w.linear(pooler)
        sd["classifier.W"], sd["classifier.b"] = w.linear(out)
        return sd


def bert_embeddings(w: Weights, p: str, cfg: EncoderConfig) -> StateDict:
    """Word, position, token-type tables and the embedding LayerNorm in BERT naming (prefix ``p``)."""
    e = p + "embeddings."
    out: StateDict = {
        "embed.W_E": w.take(e + "word_embeddings.weight"),
        "embed.W_pos": w.take(e + "position_embeddings.weight"),
        "embed.ln.w": w.take(e + "LayerNorm.weight"),
        "embed.ln.b": w.take(e + "LayerNorm.bias"),
    }
    if cfg.n_token_types:
        out["embed.W_token_type"] = w.take(e + "token_type_embeddings.weight")
    else:
        out["embed.W_token_type"] = torch.zeros(1, cfg.d_embed or cfg.d_model, dtype=out["embed.W_E"].dtype)
    for k in (e + "position_ids", e + "token_type_ids"):
        w.sd.pop(k, None)
    return out


BERT_LAYER_NAMES = {
    "layers": "encoder.layer",
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",
    "mlp_in": "intermediate.dense",
    "mlp_out": "output.dense",
    "ln2": "output.LayerNorm",
}
"""Where each block weight sits in a BERT-named checkpoint (BERT, ELECTRA, RoBERTa, XLM-R)."""


def convert_layers(w: Weights, p: str, n_layers: int, names: dict[str, str] = BERT_LAYER_NAMES) -> StateDict:
    """Blocks ``blocks.{l}.*`` of the hooked port from a checkpoint whose block weights are named by
    ``names`` (see ``BERT_LAYER_NAMES``), under the body prefix ``p``."""
    out: StateDict = {}
    for layer in range(n_layers):
        src, b = f"{p}{names['layers']}.{layer}.", f"blocks.{layer}."
        qkv = [w.linear(src + names[n]) for n in ("q", "k", "v")]
        out[b + "attn.W_QKV"] = torch.cat([q[0] for q in qkv])
        out[b + "attn.b_QKV"] = torch.cat([q[1] for q in qkv])
        for dst, (wname, bname) in {
            "o": ("attn.W_O_lin", "attn.b_O"),
            "ln1": ("ln1.w", "ln1.b"),
            "mlp_in": ("mlp.W_in_lin", "mlp.b_in"),
            "mlp_out": ("mlp.W_out_lin", "mlp.b_out"),
            "ln2": ("ln2.w", "ln2.b"),
        }.items():
            out[b + wname], out[b + bname] = w.linear(src + names[dst])
    return out


def body_prefix(w: Weights, prefix: str) -> str:
    """``prefix`` when the checkpoint is a task model (``bert.encoder...``), ``""`` for a bare one."""
    return prefix if any(k.startswith(prefix) for k in w.sd) else ""


def bert_named_body(prefix: str) -> Callable[[Weights, EncoderConfig], StateDict]:
    """``convert_body`` for BERT-named checkpoints with body prefix ``prefix`` (embeddings + blocks,
    plus ELECTRA's ``embeddings_project`` when the embedding is narrower than ``d_model``)."""

    def convert_body(w: Weights, cfg: EncoderConfig) -> StateDict:
        p = body_prefix(w, prefix)
        out = bert_embeddings(w, p, cfg)
        if cfg.d_embed != cfg.d_model:
            out["embed.W_proj"], out["embed.b_proj"] = w.linear(p + "embeddings_project")
        return out | convert_layers(w, p, cfg.n_layers)

    return convert_body


def bert_like_config(d: dict[str, Any], *, position_offset: int = 0) -> dict[str, Any]:
    """``EncoderConfig`` keywords from a BERT-style HF config (BERT, ELECTRA, RoBERTa, XLM-R)."""
    from mechir_nig.errors import UnsupportedArchitectureError

    pos_type = d.get("position_embedding_type") or "absolute"
    if pos_type != "absolute":
        raise UnsupportedArchitectureError(
            f"position_embedding_type={pos_type!r} is not supported; only 'absolute' positions are"
        )
    pad = d.get("pad_token_id")
    return dict(
        n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"],
        d_model=d["hidden_size"],
        d_mlp=d["intermediate_size"],
        d_vocab=d["vocab_size"],
        n_ctx=d.get("max_position_embeddings", 512) - position_offset,
        n_token_types=d.get("type_vocab_size", 2),
        act_fn=d.get("hidden_act", "gelu"),
        eps=d.get("layer_norm_eps", 1e-12),
        pad_token_id=0 if pad is None else pad,
        position_offset=position_offset,
    )
