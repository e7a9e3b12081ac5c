"""Attention interventions between token groups: block what one group's tokens attend to in another.

``block_attention(model, "query", "doc")`` stops every query token from attending to the document tokens
(MICE-style interaction removal): on ``attn.hook_attn_scores`` of the chosen layers (and heads), the score
of each blocked (query position, key position) is set to the dtype's minimum, so its softmax weight is
exactly 0, as a masked key's. Groups are the batch's token groups (``"cls"``, ``"query"``, ``"doc"``,
``"sep"``), read from the batch each forward runs on. A query row that would be left with no key to
attend to (every attended key blocked) keeps its attention unchanged: a softmax over no keys is undefined.
``weight=w > 0`` re-weights instead of blocking: ``log w`` is added to those scores, which multiplies each
such attention weight by ``w`` and renormalises its row (``w = 1`` changes nothing; ``w -> 0`` blocks).

It is a context manager (every forward inside is blocked) and, with :func:`attention_block_hooks`,
``(hook name, fn)`` pairs for ``run_with_hooks``; it composes with ``ablate`` and any other hooks (each adds
its own). The blocked layers compute the attention pattern explicitly (a hook on ``hook_attn_scores``
switches the layer from SDPA to the explicit path).

:func:`attention_by_group` reads the patterns instead of changing them: per layer and head, the share of
attention mass each group's tokens put on document tokens that match a query term, on other document
tokens, on query tokens and on special tokens (:class:`AttentionGroups`).

Example:
    >>> with block_attention(ce, "query", "doc", layers=[0, 1]):  # query tokens no longer see the document
    ...     scores = ce(batch)
    >>> scores.shape, bool((scores != ce(batch)).all())  # [batch]; every pair's score moves
    (torch.Size([2]), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from mechir_nig._validate import check_layers, check_number
from mechir_nig.errors import InputError
from mechir_nig.interventions.engine import is_batch
from mechir_nig.models.protocol import HookedModel, current_forward
from mechir_nig.models.tokenization import CLS, DOC, PROMPT, QUERY, SEP
from mechir_nig.models.tokenization import GROUPS as GROUP_NAMES
from mechir_nig.results import Result
from mechir_nig.sites import hook_name

__all__ = [
    "FROM_GROUPS",
    "GROUPS",
    "TO_CATEGORIES",
    "AttentionGroups",
    "attention_block_hooks",
    "attention_by_group",
    "block_attention",
]

GROUPS = {"cls": CLS, "query": QUERY, "doc": DOC, "sep": SEP, "prompt": PROMPT}
"""Group name -> the token-group id of a batch's ``groups``."""


def _group(name: Any, what: str) -> int:
    if not isinstance(name, str) or name not in GROUPS:
        raise InputError(f"{what} must be one of {sorted(GROUPS)}, got {name!r}")
    return GROUPS[name]


def group_pairs(groups: Tensor, mask: Tensor, from_id: int, to_id: int) -> Tensor:
    """``[batch, query_pos, key_pos]`` bool: the (query, key) pairs from group ``from_id`` to attended keys
    of group ``to_id``."""
    return (groups == from_id)[:, :, None] & (groups == to_id)[:, None, :] & mask.bool()[:, None, :]


def blocked_keys(groups: Tensor, mask: Tensor, from_id: int, to_id: int) -> Tensor:
    """``[batch, query_pos, key_pos]`` bool: the (query, key) pairs blocked, rows that would be left with no
    attended key excepted.

    Example:
        >>> g = torch.tensor([[CLS, QUERY, SEP, DOC, DOC, SEP]])
        >>> blocked_keys(g, torch.ones(1, 6), QUERY, DOC)[0, 1].tolist()
        [False, False, False, True, True, False]
    """
    b = group_pairs(groups, mask, from_id, to_id)
    left = (mask.bool()[:, None, :] & ~b).any(-1, keepdim=True)
    return b & left


def attention_block_hooks(
    model: HookedModel,
    from_group: str,
    to_group: str,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch: Any = None,
    weight: float = 0.0,
) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    """``[(hook name, fn)]`` on ``attn.hook_attn_scores`` blocking ``from_group`` -> ``to_group`` (see the
    module docstring), or re-weighting it (``weight > 0``).

    Args:
        model: a ``HookedModel``.
        from_group: the group whose tokens (query side of the attention) stop attending.
        to_group: the group of the keys they no longer attend to.
        layers: the layers (default all).
        heads: the heads of each layer (default all).
        batch: the batch every forward reads (default: each forward's own batch, as ``ablate``).
        weight: ``0`` (default) blocks; ``w > 0`` multiplies each ``from_group`` token's attention weight on
            ``to_group`` keys by ``w`` and renormalises its row (``log w`` added to those scores:
            ``p' = w p / (1 - P + w P)``, ``P`` the row's mass on ``to_group``); ``1`` changes nothing.

    Returns:
        The hooks, for ``model.run_with_hooks(..., fwd_hooks=...)`` or ``model.hooks(...)``.

    Raises:
        InputError: an unknown group, layers or heads out of range, a negative or non-finite weight; at
            run time, a forward without a tokenized batch.

    Example:
        >>> hooks = attention_block_hooks(ce, "doc", "query", layers=[1])
        >>> blocked = ce.run_with_hooks(batch, fwd_hooks=hooks)  # [batch]
        >>> same = ce.run_with_hooks(batch, fwd_hooks=attention_block_hooks(ce, "doc", "query", weight=1.0))
        >>> blocked.shape, torch.allclose(same, ce(batch), atol=1e-5)  # weight 1 changes nothing
        (torch.Size([2]), True)
    """
    f, t = _group(from_group, "from_group"), _group(to_group, "to_group")
    weight = check_number(weight, "weight", minimum=0, hint="0 blocks, 1 changes nothing")
    log_w = math.log(weight) if weight > 0 else None
    layer_list = list(check_layers(layers, model.cfg.n_layers))
    head_idx = (
        None if heads is None else torch.tensor(list(check_layers(heads, model.cfg.n_heads, what="heads")))
    )

    def hook(scores: Tensor, hook: Any) -> Tensor:  # [batch, n_heads, query_pos, key_pos]
        fwd = current_forward()
        b = fwd.batch if batch is None and fwd is not None else batch
        if not is_batch(b):
            raise InputError(
                "block_attention needs the token groups of the batch: run a tokenized batch (model.tokenize) "
                "inside it, or pass batch= to attention_block_hooks"
            )
        n = scores.shape[-1]
        keys = blocked_keys if log_w is None else group_pairs
        blocked = keys(b.groups[:, :n], b.attention_mask[:, :n], f, t).to(scores.device)[:, None]
        if head_idx is not None:
            on = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            on[head_idx.to(scores.device)] = True
            blocked = blocked & on[None, :, None, None]
        if log_w is None:
            return scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        return scores + blocked.to(scores.dtype) * log_w

    return [(hook_name("attn_scores", layer), hook) for layer in layer_list]


@contextmanager
def block_attention(
    model: HookedModel,
    from_group: str,
    to_group: str,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    weight: float = 0.0,
) -> Iterator[HookedModel]:
    """Every forward of ``model`` inside the block with ``from_group`` -> ``to_group`` attention blocked, or
    re-weighted by ``weight`` (the arguments of :func:`attention_block_hooks`).

    Example:
        >>> from mechir_nig.interventions.ablation import ablate
        >>> with block_attention(ce, "query", "doc"), ablate(ce, top, mode="zero"):  # both at once
        ...     scores = ce(batch)
        >>> scores.shape  # [batch]
        torch.Size([2])
    """
    with model.hooks(
        fwd_hooks=attention_block_hooks(
            model, from_group, to_group, layers=layers, heads=heads, weight=weight
        )
    ):
        yield model


# -- attention patterns summarised by group -----------------------------------------------------------
FROM_GROUPS = ("query", "doc", "cls")
"""The groups whose tokens' attention (rows of the pattern) :func:`attention_by_group` summarises."""
TO_CATEGORIES = ("doc_match", "doc_other", "query", "special")
"""Where the attention goes: document tokens matching a query token, other document tokens, query tokens,
and every other attended token (``[CLS]``, ``[SEP]``, template tokens)."""


@dataclass
class AttentionGroups(Result):
    """Per pair, layer and head: the share of attention mass each group's tokens put on each category.

    ``values[b, l, h, f, c]`` is, for pair ``b``, layer ``layers[l]`` and head ``h``, the mean over the
    tokens of group ``from_groups[f]`` of the attention weight they put on the keys of category
    ``to_categories[c]`` (each row of a pattern sums to 1 over the attended keys, so the categories of a
    row sum to 1). A group a pair has no token of (a bi-encoder's input holds no query token) is NaN.
    ``pattern`` is one pair's full pattern ``[layer, head, pos, pos]`` (pair ``view_pair``, its attended
    positions only) with its ``tokens`` and their ``token_groups``, for the per-head views of the report.

    Shapes:
        values: ``[batch, layer, head, from_group, to_category]``; pattern: ``[layer, head, pos, pos]``.

    Example:
        >>> import torch
        >>> v = torch.zeros(1, 1, 1, 3, 4); v[0, 0, 0, 0] = torch.tensor([0.5, 0.25, 0.125, 0.125])
        >>> res = AttentionGroups(v, [0], list(FROM_GROUPS), list(TO_CATEGORIES))
        >>> res.share("query", "doc_match").tolist()
        [[0.5]]
    """

    KIND: ClassVar[str] = "AttentionGroups"
    WHAT: ClassVar[str] = "attention-by-group summary"

    values: Tensor
    layers: list[int]
    from_groups: list[str]
    to_categories: list[str]
    pattern: Tensor | None = None
    tokens: list[str] = field(default_factory=list)
    token_groups: list[str] = field(default_factory=list)
    view_pair: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def mean(self) -> Tensor:
        """``[layer, head, from_group, to_category]``: the mean over the pairs that have the group."""
        return self.values.double().nanmean(0)

    def share(self, from_group: str = "query", to: str = "doc_match") -> Tensor:
        """``[layer, head]``: the mean share of ``from_group``'s attention on category ``to``."""
        if from_group not in self.from_groups:
            raise InputError(f"from_group must be one of {self.from_groups}, got {from_group!r}")
        if to not in self.to_categories:
            raise InputError(f"to must be one of {self.to_categories}, got {to!r}")
        return self.mean()[:, :, self.from_groups.index(from_group), self.to_categories.index(to)]

    def table(self, from_group: str = "query") -> list[dict[str, Any]]:
        """One row per (layer, head): the mean share of ``from_group``'s attention on each category."""
        m = self.mean()
        f = self.from_groups.index(from_group) if from_group in self.from_groups else -1
        if f < 0:
            raise InputError(f"from_group must be one of {self.from_groups}, got {from_group!r}")
        return [
            {"layer": layer, "head": h, **{c: float(m[i, h, f, j]) for j, c in enumerate(self.to_categories)}}
            for i, layer in enumerate(self.layers)
            for h in range(m.shape[1])
        ]

    def plot(self, kind: str = "heads", **kw: Any) -> Any:
        """``"heads"``: layer x head heatmaps of the shares; ``"pattern"``: the per-head pattern view."""
        from mechir_nig.plotting.circuits import plot_circuit

        return plot_circuit(self, kind, **kw)


def _pair_texts(pairs: Any) -> tuple[list[str], list[str]]:
    """``(queries, docs)`` of ``(query, doc)`` tuples or records with ``.query`` and ``.doc``."""
    queries, docs = [], []
    for i, p in enumerate(pairs):
        if hasattr(p, "query") and hasattr(p, "doc"):
            q, d = p.query, p.doc
        elif isinstance(p, tuple | list) and len(p) == 2:
            q, d = p
        else:
            raise InputError(f"pair {i} must be a (query, doc) tuple or have .query and .doc, got {p!r}")
        if not isinstance(q, str) or not isinstance(d, str):
            raise InputError(f"pair {i}: query and doc must be strings")
        queries.append(q)
        docs.append(d)
    if not queries:
        raise InputError("pairs is empty; give at least one (query, doc) pair")
    return queries, docs


def group_masks(batch: Any, query_ids: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """``(rows [batch, pos, from_group], keys [batch, pos, to_category])`` bool: the tokens of each group
    of :data:`FROM_GROUPS` and of each category of :data:`TO_CATEGORIES` (attended positions only). A
    document token matches when its id is one of ``query_ids[b]`` (the query's token ids).

    Example:
        >>> from types import SimpleNamespace
        >>> b = SimpleNamespace(input_ids=torch.tensor([[1, 7, 2, 7, 8, 2]]),
        ...                     groups=torch.tensor([[CLS, QUERY, SEP, DOC, DOC, SEP]]),
        ...                     attention_mask=torch.ones(1, 6))
        >>> rows, keys = group_masks(b, [torch.tensor([7])])
        >>> keys[0].int().T.tolist()  # doc_match, doc_other, query, special per position
        [[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 1]]
    """
    att = batch.attention_mask.bool()
    g = batch.groups[:, : att.shape[1]]
    match = torch.stack(
        [torch.isin(row, q.to(row.device)) for row, q in zip(batch.input_ids, query_ids, strict=True)]
    )
    doc, query = (g == DOC) & att, (g == QUERY) & att
    keys = torch.stack([doc & match, doc & ~match, query, att & ~doc & ~query], -1)
    rows = torch.stack([query, doc, (g == CLS) & att], -1)
    return rows, keys


def attention_by_group(
    model: HookedModel,
    pairs: Any,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    view_pair: int | None = 0,
    max_length: int | None = None,
) -> AttentionGroups:
    """Summarise every head's attention pattern by token group (``attn.hook_pattern``, see
    :class:`AttentionGroups`).

    For a cross-encoder each pair is one input ``[CLS] q [SEP] d [SEP]`` (or its family's template): the
    rows are its query, document and ``[CLS]`` tokens, and a document token *matches* when its token id
    is one of the query's (sub-word level: Lu et al.'s matching heads attend from a query token to its
    copies in the document). For a bi-encoder only the document is encoded with the pair: its rows are
    the document and ``[CLS]`` tokens (the query row is NaN) and matching is against the query's token
    ids as the model tokenizes the query alone.

    Args:
        model: a ``HookedModel`` of any family.
        pairs: ``(query, doc)`` tuples, or records with ``.query`` and ``.doc``.
        layers: the layers read (default all).
        batch_size: pairs per forward.
        view_pair: the pair whose full pattern is kept for the per-head view (``None``: none).
        max_length: tokens per input (default: the model's).

    Returns:
        An :class:`AttentionGroups` (``values [batch, layer, head, from_group, to_category]``).

    Raises:
        InputError: no pairs, bad layers, ``view_pair`` out of range.

    Example:
        >>> res = attention_by_group(ce, [("what is a neuron", "a neuron is a cell")])
        >>> res.share("query", "doc_match").shape  # [layer, head]
        torch.Size([6, 12])
    """
    from mechir_nig._validate import check_int

    queries, docs = _pair_texts(pairs)
    layer_list = check_layers(layers, model.cfg.n_layers)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(view_pair, "view_pair", minimum=0, maximum=len(queries) - 1, allow_none=True)
    names = {hook_name("pattern", layer) for layer in layer_list}
    values: list[Tensor] = []
    view: dict[str, Any] = {}
    for start in range(0, len(queries), batch_size):
        qs, ds = queries[start : start + batch_size], docs[start : start + batch_size]
        if model.pairwise:
            batch = model.tokenize(qs, ds, max_length=max_length)
            qids = [ids[g == QUERY] for ids, g in zip(batch.input_ids, batch.groups, strict=True)]
        else:
            batch = model.tokenize(ds, max_length=max_length, what="docs")
            qb = model.tokenize(qs, max_length=max_length, what="queries")
            qids = [ids[g == DOC] for ids, g in zip(qb.input_ids, qb.groups, strict=True)]
        rows, keys = group_masks(batch, qids)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        rows_f, keys_f = rows.to(torch.float64), keys.to(torch.float64)
        count = rows_f.sum(1)  # [batch, from]
        per_layer = []
        for layer in layer_list:
            pat = cache[hook_name("pattern", layer)].detach().to("cpu", torch.float64)  # [batch, head, q, k]
            n = pat.shape[-1]
            mass = torch.einsum("bhqk,bkc->bhqc", pat, keys_f[:, :n].to(pat.device))
            share = torch.einsum("bhqc,bqf->bhfc", mass, rows_f[:, :n]) / count[:, None, :, None]
            per_layer.append(share)
        values.append(torch.stack(per_layer, 1))  # [batch, layer, head, from, to]
        if view_pair is not None and start <= view_pair < start + len(qs):
            i = view_pair - start
            pos = batch.attention_mask[i].bool().nonzero().flatten().cpu()
            view["pattern"] = torch.stack(
                [
                    cache[hook_name("pattern", layer)][i].detach().cpu()[:, pos][:, :, pos]
                    for layer in layer_list
                ]
            )
            tok = getattr(model, "tokenizer", None)
            ids = batch.input_ids[i, pos].tolist()
            view["tokens"] = (
                list(tok.convert_ids_to_tokens(ids)) if tok is not None else [str(t) for t in ids]
            )
            view["token_groups"] = [GROUP_NAMES[int(g)] for g in batch.groups[i, pos].tolist()]
            view["view_pair"] = view_pair
    return AttentionGroups(
        values=torch.cat(values),
        layers=layer_list,
        from_groups=list(FROM_GROUPS),
        to_categories=list(TO_CATEGORIES),
        meta={
            "matching": "a document token whose token id is one of the query's token ids",
            "model": str(getattr(model.cfg, "model_name", "")),
            "pairwise": bool(model.pairwise),
        },
        **view,
    )
