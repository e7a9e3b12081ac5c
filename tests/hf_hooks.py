"""Hand-written hooks on a Hugging Face ``BertForSequenceClassification`` (eager attention): the reference
the circuits tests (attribution patching, the new patching sites, attention blocking) compare against.

Each site of :mod:`mechir_nig.sites` is read or written at the HF module that computes it, in the site's
TransformerLens layout (heads split out as ``[batch, pos, n_heads, d_head]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

Edit = Callable[[Tensor], Tensor]


def point(hf: Any, site: str, layer: int) -> tuple[torch.nn.Module, str, bool]:
    """``(module, "in" | "out", split into heads)`` where HF computes ``site`` of ``layer``."""
    blk = hf.bert.encoder.layer[layer]
    return {
        "resid_pre": (blk, "in", False),
        "attn_out": (blk.attention.output.dense, "out", False),
        "mlp_out": (blk.output.dense, "out", False),
        "z": (blk.attention.output.dense, "in", True),
        "mlp_post": (blk.intermediate, "out", False),
        "q": (blk.attention.self.query, "out", True),
        "k": (blk.attention.self.key, "out", True),
        "v": (blk.attention.self.value, "out", True),
    }[site]


def _heads(fn: Edit, n_heads: int) -> Edit:
    def run(t: Tensor) -> Tensor:
        out = fn(t.reshape(*t.shape[:2], n_heads, -1))
        return out.reshape(t.shape)

    return run


@contextmanager
def edits(hf: Any, sites: list[tuple[str, int, Edit]]) -> Iterator[None]:
    """Apply ``fn`` (in the site's TransformerLens layout) at every ``(site, layer, fn)`` while inside."""
    handles = []
    n_heads = hf.config.num_attention_heads
    for site, layer, fn in sites:
        module, where, split = point(hf, site, layer)
        f = _heads(fn, n_heads) if split else fn
        if where == "out":
            handles.append(module.register_forward_hook(lambda m, a, out, f=f: f(out)))
        else:

            def pre(m: Any, args: Any, kwargs: Any, f: Edit = f) -> Any:
                if args:
                    return (f(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": f(kwargs["hidden_states"])}

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def inputs(batch: Any) -> dict[str, Tensor]:
    """The keyword inputs of a Hugging Face BERT-like model for a ``PairBatch`` (no position ids)."""
    return dict(
        input_ids=batch.input_ids, token_type_ids=batch.token_type_ids, attention_mask=batch.attention_mask
    )


def score(hf: Any, batch: Any) -> Tensor:
    """HF logits ``[batch]`` of a ``PairBatch`` (aligned batches: with their position ids)."""
    return hf(
        input_ids=batch.input_ids,
        token_type_ids=batch.token_type_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    ).logits[:, 0]


def capture(hf: Any, batch: Any, sites: list[tuple[str, int]], *, grad: bool = False) -> tuple[Tensor, dict]:
    """HF scores and the activations at ``sites`` (``{(site, layer): act}``); with ``grad``, also
    ``∂(Σ scores)/∂act`` as ``{(site, layer): grad}`` (the second dict's values are ``(act, grad)``)."""
    got: dict[tuple[str, int], Tensor] = {}

    def keep(key: tuple[str, int]) -> Edit:
        def fn(t: Tensor) -> Tensor:
            if grad:
                t.retain_grad()
            got[key] = t
            return t

        return fn

    with torch.set_grad_enabled(grad), edits(hf, [(s, layer, keep((s, layer))) for s, layer in sites]):
        out = score(hf, batch)
    if not grad:
        return out.detach(), {k: v.detach() for k, v in got.items()}
    out.sum().backward()
    return out.detach(), {k: (v.detach(), v.grad) for k, v in got.items()}
