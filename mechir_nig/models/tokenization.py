"""Pair and text tokenization from the tokenizer's own template, with token groups and reported truncation.

A cross-encoder input is whatever the model's tokenizer builds for a pair: ``[CLS] q [SEP] d [SEP]``
for BERT, ELECTRA and DistilBERT (token types 0 then 1), ``<s> q </s></s> d </s>`` for RoBERTa and
XLM-R. The template is never assembled by hand: the tokenizer is called on ``(query, doc)`` with
``truncation="only_second"``, and the token groups come from the encoding's ``sequence_ids()``
(special tokens: ``cls`` at position 0, ``sep`` elsewhere; sequence 0: ``query``; sequence 1:
``doc``), or from the special-tokens mask for tokenizers without ``sequence_ids``. So the ``doc`` group
is exactly the document's tokens, whatever the family.

The query is always kept whole; a document longer than what ``max_length`` leaves is truncated from
the end, the batch records which pairs were truncated, and a ``TruncationWarning`` says how many.
Nothing is truncated silently.

Hostile texts: any Python string is accepted except an empty or whitespace-only one, one with a lone
surrogate, and one that yields no token (e.g. only NUL or zero-width characters, which BERT's
tokenizer deletes), and a query that leaves no room for its document within ``max_length``: each is an
:class:`~mechir_nig.errors.InputError` naming ``queries[i]``/``docs[i]``/``texts[i]``. Texts are passed
to the tokenizer unchanged (its own normalisation applies: lower-casing, accent stripping, control
characters deleted for BERT), and ``PairBatch.queries``/``docs`` keep them exactly as given.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from mechir_nig._types import Mask, Tokens
from mechir_nig._validate import check_int
from mechir_nig._warn import caller_stacklevel
from mechir_nig.errors import InputError, TruncationWarning

GROUPS = ("cls", "query", "sep", "doc", "pad", "prompt")
"""Token groups; ``PairBatch.groups`` holds their indices. A bi-encoder text's tokens are ``doc``; ``prompt``
(the template text of a templated reranker, ``mechir_nig.models.templates``) is appended after ``pad`` so
the indices of the first five never change."""
CLS, QUERY, SEP, DOC, PAD, PROMPT = range(6)
CONTENT = (CLS, QUERY, SEP, DOC)
"""The content groups every family has, in ``by_group()`` order (``prompt`` follows where present)."""


def content_groups(groups: Tensor) -> tuple[int, ...]:
    """The group indices ``by_group()`` sums over for ``groups``: cls, query, sep, doc, then ``prompt`` when
    any token is template text (templated families), so encoders keep their four groups.

    Example:
        >>> content_groups(torch.tensor([[CLS, QUERY, SEP, DOC, SEP, PAD]]))
        (0, 1, 2, 3)
        >>> content_groups(torch.tensor([[CLS, PROMPT, QUERY, PROMPT, DOC, SEP]]))
        (0, 1, 2, 3, 5)
    """
    return CONTENT + (PROMPT,) if bool((groups == PROMPT).any()) else CONTENT


def group_weights(groups: Tensor, dtype: torch.dtype) -> Tensor:
    """``[batch, pos, group]`` one-hot weights of each token over ``content_groups(groups)`` (padding: 0)."""
    onehot = torch.nn.functional.one_hot(groups, len(GROUPS))
    return onehot[..., list(content_groups(groups))].to(dtype)


def check_texts(texts: Any, what: str) -> list[str]:
    """Return ``texts`` as a list of non-empty strings, or raise an ``InputError`` that says what to fix.

    Refused, each with the index of the text: a non-string, an empty or whitespace-only text, a text with
    a lone surrogate (not valid Unicode). Any other text is accepted (control characters, NUL, any
    script); a text the tokenizer turns into no token at all (only control or zero-width characters)
    is refused later, by the tokenize functions, naming its index too.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(
            f"{what} must be a list of strings, got {type(texts).__name__}; wrap one text in a list"
        )
    out = list(texts)
    if not out:
        raise InputError(f"{what} is empty; pass at least one text")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"{what}[{i}] is a {type(t).__name__}, not a string")
        if not t.strip():
            raise InputError(f"{what}[{i}] is empty or only whitespace; remove it or give it text")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # the tokenizers library would raise a bare TypeError
            raise InputError(
                f"{what}[{i}] ({t[:40]!r}) holds a lone surrogate ({t[e.start]!r} at character {e.start}), "
                "which is not Unicode text; decode the source with errors='replace' or drop the character"
            ) from None
    return out


def check_pairs(queries: Any, docs: Any) -> tuple[list[str], list[str]]:
    q = check_texts(queries, "queries")
    d = check_texts(docs, "docs")
    if len(q) != len(d):
        raise InputError(
            f"queries and docs have different lengths ({len(q)} vs {len(d)}); pass one query per document "
            "(repeat a query for each of its documents)"
        )
    return q, d


class _Batch:
    """Shared tensor plumbing for batches (device moves and row selection)."""

    input_ids: Tensor
    attention_mask: Tensor
    truncated: Tensor

    def to(self, device: torch.device | str) -> Any:
        me: Any = self
        return replace(
            me,
            **{f.name: getattr(self, f.name).to(device) for f in fields(me) if _is_tensor(self, f.name)},
        )

    def select(self, index: Sequence[int] | Tensor, n_pos: int | None = None) -> Any:
        """Rows ``index`` of the batch, trimmed to their longest sequence (or to ``n_pos`` positions)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        kw: dict[str, Any] = {}
        if n_pos is None:
            n_pos = int(self.lengths[idx.to(self.attention_mask.device)].max()) if len(idx) else 0
        me: Any = self
        for f in fields(me):
            v = getattr(self, f.name)
            if _is_tensor(self, f.name):
                v = v[idx.to(v.device)]
                if v.dim() == 2 and f.name != "truncated":
                    v = v[:, :n_pos]
            elif isinstance(v, list):
                v = [v[i] for i in idx.tolist()]
            kw[f.name] = v
        return type(self)(**kw)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Span of each row: last attended position + 1 (the token count when nothing is masked inside;
        aligned inputs have masked slots inside the span)."""
        m = self.attention_mask
        pos = torch.arange(1, m.shape[1] + 1, device=m.device)
        return (m * pos).amax(-1)

    @property
    def n_truncated(self) -> int:
        return int(self.truncated.sum())


def _is_tensor(obj: Any, name: str) -> bool:
    return isinstance(getattr(obj, name), Tensor)


@dataclass
class PairBatch(_Batch):
    """Tokenized query-document pairs, right-padded to the longest pair.

    Shapes:
        input_ids, token_type_ids, attention_mask, groups: ``[batch, pos]``; truncated: ``[batch]``.
        ``groups`` holds indices into ``GROUPS`` (cls, query, sep, doc, pad, prompt).

    Example:
        >>> batch = PairBatch(  # what ce.tokenize(queries, docs) returns, here built by hand
        ...     input_ids=torch.tensor([[101, 7, 102, 9, 9, 102], [101, 7, 102, 9, 102, 0]]),
        ...     token_type_ids=torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]]),
        ...     attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]),
        ...     groups=torch.tensor([[0, 1, 2, 3, 3, 2], [0, 1, 2, 3, 2, 4]]),
        ...     truncated=torch.tensor([False, False]),
        ...     queries=["neuron", "neuron"],
        ...     docs=["cell cell", "cell"],
        ... )
        >>> len(batch), batch.input_ids.shape  # [batch, pos]
        (2, torch.Size([2, 6]))
        >>> batch.lengths.tolist()  # [batch]
        [6, 5]
        >>> batch.select([1]).input_ids.shape  # rows trimmed to their longest sequence
        torch.Size([1, 5])
        >>> batch = ce.tokenize(["what is a neuron"], ["A neuron is a cell."])
        >>> [GROUPS[g] for g in batch.groups[0].tolist()]
        ['cls', 'query', 'query', 'query', 'query', 'query', 'sep', 'doc', 'doc', 'doc', 'doc', 'doc', 'doc', 'doc', 'sep']
    """

    input_ids: Tokens
    token_type_ids: Tokens
    attention_mask: Mask
    groups: Int[Tensor, "batch pos"]
    truncated: Bool[Tensor, " batch"]
    queries: list[str] = field(default_factory=list)
    docs: list[str] = field(default_factory=list)
    position_ids: Int[Tensor, "batch pos"] | None = None  # explicit positions (aligned inputs); None: 0..n-1


@dataclass
class TextBatch(_Batch):
    """Tokenized single texts ``[CLS] t [SEP]`` for a bi-encoder (text tokens are in group ``doc``).

    Shapes:
        input_ids, token_type_ids, attention_mask, groups: ``[batch, pos]``; truncated: ``[batch]``.

    Example:
        >>> batch = TextBatch(  # what be.tokenize(texts) returns, here built by hand
        ...     input_ids=torch.tensor([[101, 9, 9, 102], [101, 9, 102, 0]]),
        ...     token_type_ids=torch.zeros(2, 4, dtype=torch.long),
        ...     attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        ...     groups=torch.tensor([[0, 3, 3, 2], [0, 3, 2, 4]]),
        ...     truncated=torch.tensor([False, False]),
        ... )
        >>> batch.lengths.tolist()  # [batch]
        [4, 3]
        >>> be(be.tokenize(["a neuron is a cell", "rice"])).shape  # [batch, d_model]
        torch.Size([2, 384])
    """

    input_ids: Tokens
    token_type_ids: Tokens
    attention_mask: Mask
    groups: Int[Tensor, "batch pos"]
    truncated: Bool[Tensor, " batch"]
    texts: list[str] = field(default_factory=list)
    position_ids: Int[Tensor, "batch pos"] | None = None  # explicit positions (aligned inputs); None: 0..n-1


def _word_ids(tokenizer: Any, texts: list[str], what: str) -> list[list[int]]:
    """Token ids of each text without special tokens (to count and check them); never warns on length."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    for i, row in enumerate(ids):
        if not row:
            raise InputError(
                f"{what}[{i}] ({texts[i][:40]!r}) has no tokens after tokenization; give it real text"
            )
    return ids


def n_special_tokens(tokenizer: Any, *, pair: bool) -> int:
    """Special tokens the tokenizer's template adds (BERT pair: 3; RoBERTa pair: 4; single: 2)."""
    return int(tokenizer.num_special_tokens_to_add(pair=pair))


def doc_budget(max_length: int, n_query_tokens: int, n_special: int = 3) -> int:
    """Document tokens that fit beside the query and ``n_special`` template tokens (< 1: none)."""
    return max_length - n_special - n_query_tokens


def _check_max_length(max_length: int, n_ctx: int) -> None:
    check_int(max_length, "max_length", minimum=4)
    if max_length > n_ctx:
        raise InputError(
            f"max_length={max_length} exceeds the model's {n_ctx} positions; use at most {n_ctx}"
        )


_TRUNCATED: ContextVar[dict[tuple[str, int], list[int]] | None] = ContextVar("_TRUNCATED", default=None)


@contextmanager
def truncation_summary() -> Iterator[None]:
    """Inside the block, tokenizing many batches warns once, at the end, with the counts of all of them
    (``n of total documents ... were truncated``) instead of once per batch; nested blocks join the
    outermost one.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught, truncation_summary():
        ...     warnings.simplefilter("always")
        ...     for _ in range(3):
        ...         _warn_truncated(1, 4, 8, "documents")
        >>> [str(w.message)[:62] for w in caught]
        ['3 of 12 documents over 3 batches longer than max_length=8 were']
    """
    if _TRUNCATED.get() is not None:
        yield
        return
    counts: dict[tuple[str, int], list[int]] = {}
    token = _TRUNCATED.set(counts)
    try:
        yield
    finally:
        _TRUNCATED.reset(token)
    for (what, max_length), (n, total, batches) in counts.items():
        if n:
            _warn_truncated(n, total, max_length, what, batches=batches)


def _warn_truncated(n: int, total: int, max_length: int, what: str, *, batches: int = 1) -> None:
    counts = _TRUNCATED.get()
    if counts is not None:  # inside truncation_summary: counted, warned once at its end
        entry = counts.setdefault((what, max_length), [0, 0, 0])
        entry[0] += n
        entry[1] += total
        entry[2] += 1
        return
    if n:
        over = f" over {batches} batches" if batches > 1 else ""
        warnings.warn(
            f"{n} of {total} {what}{over} longer than max_length={max_length} were truncated "
            "(see batch.truncated); raise max_length to keep them whole",
            TruncationWarning,
            stacklevel=caller_stacklevel(),
        )


def _sequence_ids(enc: Any, i: int, ids: list[int], tokenizer: Any, n_first: int) -> list[int | None]:
    """``enc.sequence_ids(i)``; for a tokenizer without it, the special-tokens mask: non-special
    tokens in order are the first text's ``n_first`` tokens, then the second text's."""
    if getattr(enc, "encodings", None):
        return enc.sequence_ids(i)
    special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    seq: list[int | None] = []
    seen = 0
    for s in special:
        seq.append(None if s else int(seen >= n_first))
        seen += not s
    return seq


def _groups(seq: list[int | None], first: int) -> list[int]:
    """Specials -> ``cls`` at position 0, ``sep`` elsewhere; sequence 0 -> ``first``; sequence 1 -> doc."""
    return [(CLS if p == 0 else SEP) if s is None else (first if s == 0 else DOC) for p, s in enumerate(seq)]


def _pack(
    rows: list[list[int]],
    groups: list[list[int]],
    types: list[list[int]],
    pad_id: int,
    truncated: list[bool],
    max_length: int,
    what: str,
) -> dict[str, Tensor]:
    """A batch's tensors (``input_ids``, ``token_type_ids``, ``attention_mask``, ``groups``, ``truncated``)
    from its token rows, right-padded; the truncated rows are reported (``TruncationWarning``)."""
    n_pos = max(len(r) for r in rows)
    b = len(rows)
    input_ids = torch.full((b, n_pos), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((b, n_pos), dtype=torch.long)
    attention_mask = torch.zeros((b, n_pos), dtype=torch.long)
    grp = torch.full((b, n_pos), PAD, dtype=torch.long)
    for i, (r, g, t) in enumerate(zip(rows, groups, types)):
        n = len(r)
        input_ids[i, :n] = torch.tensor(r)
        token_type_ids[i, :n] = torch.tensor(t)
        attention_mask[i, :n] = 1
        grp[i, :n] = torch.tensor(g)
    trunc = torch.tensor(truncated, dtype=torch.bool)
    _warn_truncated(int(trunc.sum()), len(rows), max_length, what)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "groups": grp,
        "truncated": trunc,
    }


def _encode(tokenizer: Any, first: list[str], second: list[str] | None, max_length: int) -> Any:
    return tokenizer(
        first,
        second,
        truncation="only_second" if second is not None else True,
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
        return_attention_mask=False,
        verbose=False,
    )


def _rows(
    enc: Any, tokenizer: Any, use_token_types: bool, first: int, n_first: list[int]
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    rows, groups, types = [], [], []
    tt = enc.get("token_type_ids")
    for i, ids in enumerate(enc["input_ids"]):
        rows.append(list(ids))
        groups.append(_groups(_sequence_ids(enc, i, ids, tokenizer, n_first[i]), first))
        types.append(list(tt[i]) if use_token_types and tt is not None else [0] * len(ids))
    return rows, groups, types


def tokenize_pairs(
    tokenizer: Any,
    queries: Any,
    docs: Any,
    *,
    max_length: int,
    n_ctx: int,
    use_token_types: bool = True,
) -> PairBatch:
    """Tokenize pairs with the tokenizer's pair template (see the module docstring for truncation).

    ``use_token_types=False`` (families without token types) sets every token type to 0.
    """
    q, d = check_pairs(queries, docs)
    _check_max_length(max_length, n_ctx)
    q_ids, d_ids = _word_ids(tokenizer, q, "queries"), _word_ids(tokenizer, d, "docs")
    n_special = n_special_tokens(tokenizer, pair=True)
    for i, qi in enumerate(q_ids):
        if doc_budget(max_length, len(qi), n_special) < 1:
            raise InputError(
                f"queries[{i}] has {len(qi)} tokens, leaving no room for its document within "
                f"max_length={max_length}; shorten the query or raise max_length (at most {n_ctx})"
            )
    enc = _encode(tokenizer, q, d, max_length)
    rows, groups, types = _rows(enc, tokenizer, use_token_types, QUERY, [len(x) for x in q_ids])
    truncated = []
    for i, g in enumerate(groups):
        n_q, n_d = g.count(QUERY), g.count(DOC)
        if n_q != len(q_ids[i]) or n_d > len(d_ids[i]):
            raise InputError(  # a tokenizer whose pair template is not (query, doc) with the doc truncated
                f"pair {i}: the tokenizer's pair template kept {n_q} of {len(q_ids[i])} query tokens and "
                f"{n_d} of {len(d_ids[i])} document tokens; pass a tokenizer whose pair encoding keeps "
                "the query whole (truncation='only_second')"
            )
        truncated.append(n_d < len(d_ids[i]))
    tensors = _pack(rows, groups, types, tokenizer.pad_token_id, truncated, max_length, "documents")
    return PairBatch(**tensors, queries=q, docs=d)


def tokenize_texts(
    tokenizer: Any, texts: Any, *, max_length: int, n_ctx: int, what: str = "texts"
) -> TextBatch:
    """Tokenize single texts with the tokenizer's template (``[CLS] t [SEP]``, ``<s> t </s>``); an
    overlong text is truncated and reported. Text tokens are in group ``doc``."""
    t = check_texts(texts, what)
    _check_max_length(max_length, n_ctx)
    ids = _word_ids(tokenizer, t, what)
    enc = _encode(tokenizer, t, None, max_length)
    rows, groups, types = _rows(enc, tokenizer, False, DOC, [len(x) for x in ids])
    truncated = [g.count(DOC) < len(ti) for g, ti in zip(groups, ids)]
    tensors = _pack(rows, groups, types, tokenizer.pad_token_id, truncated, max_length, what)
    return TextBatch(**tensors, texts=t)
