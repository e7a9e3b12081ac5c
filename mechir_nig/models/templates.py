"""Rerank templates: prompt text around query and document, the two answer tokens, where they are read.

A template-scored reranker (monoT5, yes/no decoder rerankers) reads ``log_softmax([logit_neg,
logit_pos])[1]`` at the template's ``position``. The input text is the template's ``prompt`` with
``{query}`` and ``{doc}`` filled in; token groups come from character offsets into that text: query
tokens are ``query``, document tokens ``doc``, and the template's own text and special tokens are
``sep`` (kept by the NIG baseline, which replaces query and document tokens only).

Example:
    >>> t = get_template("monot5")
    >>> t.prompt.format(query="q", doc="d"), t.answer_tokens, t.position
    ('Query: q Document: d Relevant:', ('false', 'true'), 'decoder_start')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from mechir_nig.errors import InputError, ModelLoadError
from mechir_nig.models.tokenization import (
    DOC,
    PAD,
    QUERY,
    SEP,
    PairBatch,
    _check_max_length,
    _warn_truncated,
    check_pairs,
)

POSITIONS = ("last", "decoder_start")


@dataclass(frozen=True)
class RerankTemplate:
    """A prompt with ``{query}`` and ``{doc}`` placeholders, the (negative, positive) answer tokens and
    where their logits are read (``"last"``: a decoder's last non-padding token; ``"decoder_start"``:
    an encoder-decoder's first decoder step).

    Example:
        >>> RerankTemplate("mine", "Q: {query} D: {doc} Relevant:", ("no", "yes")).position
        'last'
    """

    name: str
    prompt: str
    answer_tokens: tuple[str, str]
    position: str = "last"
    instruction: str | None = None
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if "{query}" not in self.prompt or "{doc}" not in self.prompt:
            raise InputError(
                f"template {self.name!r}: the prompt needs both '{{query}}' and '{{doc}}' placeholders"
            )
        if self.prompt.index("{query}") > self.prompt.index("{doc}"):
            raise InputError(f"template {self.name!r}: '{{query}}' must come before '{{doc}}' in the prompt")
        if len(self.answer_tokens) != 2 or not all(isinstance(a, str) and a for a in self.answer_tokens):
            raise InputError(
                f"template {self.name!r}: answer_tokens must be two strings (negative, positive)"
            )
        if self.position not in POSITIONS:
            raise InputError(
                f"template {self.name!r}: position must be one of {POSITIONS}, got {self.position!r}"
            )

    def format(self, query: str, doc: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """The input text and the character spans ``[start, end)`` of the query and the document in it."""
        head, rest = self.prompt.split("{query}", 1)
        mid, tail = rest.split("{doc}", 1)
        fill = {"instruction": self.instruction or ""}
        head, mid, tail = (s.replace("{instruction}", fill["instruction"]) for s in (head, mid, tail))
        q0 = len(head)
        d0 = q0 + len(query) + len(mid)
        return head + query + mid + doc + tail, (q0, q0 + len(query)), (d0, d0 + len(doc))


TEMPLATES: Mapping[str, RerankTemplate] = MappingProxyType(
    {
        "monot5": RerankTemplate(
            "monot5",
            "Query: {query} Document: {doc} Relevant:",
            ("false", "true"),
            position="decoder_start",
        ),
    }
)
"""Built-in templates by name."""

KNOWN_MODELS: Mapping[str, str] = MappingProxyType({"castorini/monot5": "monot5"})
"""Hub-id prefixes -> the built-in template their checkpoints are scored with."""


def get_template(template: str | RerankTemplate) -> RerankTemplate:
    """A template by name (or as given), else an ``InputError`` listing the built-in names.

    Example:
        >>> get_template("monot5").answer_tokens
        ('false', 'true')
    """
    if isinstance(template, RerankTemplate):
        return template
    if isinstance(template, str) and template in TEMPLATES:
        return TEMPLATES[template]
    raise InputError(
        f"unknown template {template!r}: use one of {sorted(TEMPLATES)} or a RerankTemplate(name, prompt, answer_tokens)"
    )


def template_for(name_or_path: str) -> str | None:
    """The built-in template name a known hub id picks (``castorini/monot5-*`` -> ``"monot5"``), else ``None``.

    Example:
        >>> template_for("castorini/monot5-base-msmarco"), template_for("bert-base-uncased")
        ('monot5', None)
    """
    for prefix, name in KNOWN_MODELS.items():
        if str(name_or_path).startswith(prefix):
            return name
    return None


def answer_token_ids(template: str | RerankTemplate, tokenizer: Any, source: str) -> tuple[int, int]:
    """Ids of the (negative, positive) answer tokens; ``ModelLoadError`` naming ``source`` when one is
    not a single token of the tokenizer."""
    t = get_template(template)
    out = []
    for a in t.answer_tokens:
        ids = tokenizer(a, add_special_tokens=False)["input_ids"]
        unk = tokenizer.unk_token_id
        if len(ids) != 1 or (unk is not None and ids[0] == unk):
            raise ModelLoadError(
                f"template {t.name!r}: the answer token {a!r} is {ids} for the tokenizer of {source}, not one "
                "known token; use the tokenizer saved with the reranker, or a template whose answer tokens "
                "are single tokens of it"
            )
        out.append(int(ids[0]))
    return out[0], out[1]


def _group_of(span: tuple[int, int], q: tuple[int, int], d: tuple[int, int]) -> int:
    s, e = span
    if s == e:
        return SEP  # a special token (no characters)
    if s < q[1] and e > q[0]:
        return QUERY
    if s < d[1] and e > d[0]:
        return DOC
    return SEP


def _encode_one(tokenizer: Any, t: RerankTemplate, query: str, doc: str) -> tuple[list[int], list[int]]:
    text, qs, ds = t.format(query, doc)
    enc = tokenizer(text, add_special_tokens=t.add_special_tokens, return_offsets_mapping=True, verbose=False)
    return list(enc["input_ids"]), [_group_of(tuple(o), qs, ds) for o in enc["offset_mapping"]]


def tokenize_template(
    tokenizer: Any,
    template: str | RerankTemplate,
    queries: Any,
    docs: Any,
    *,
    max_length: int,
    n_ctx: int,
) -> PairBatch:
    """Format each pair with the template, tokenize it (right-padded) and give its token groups.

    A document too long for ``max_length`` is cut from its end (whole tokens) until the input fits;
    ``batch.truncated`` records it and a ``TruncationWarning`` says how many. A query that leaves no
    room for a document is an ``InputError``.

    Example:
        >>> batch = tokenize_template(tok, "monot5", ["q"], ["d"], max_length=64, n_ctx=512)  # doctest: +SKIP
    """
    t = get_template(template)
    q, d = check_pairs(queries, docs)
    _check_max_length(max_length, n_ctx)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            "template tokenization needs a fast tokenizer (character offsets); load one with use_fast=True"
        )
    rows, groups, truncated = [], [], []
    for i, (qi, di) in enumerate(zip(q, d)):
        ids, grp = _encode_one(tokenizer, t, qi, di)
        if QUERY not in grp or DOC not in grp:
            raise InputError(f"queries[{i}] or docs[{i}] yields no token; give it text")
        cut = False
        while len(ids) > max_length:
            n_doc = grp.count(DOC)
            keep = n_doc - (len(ids) - max_length)
            if keep < 1:
                raise InputError(
                    f"queries[{i}] with the template leaves no room for its document within max_length={max_length}; "
                    "shorten the query or raise max_length"
                )
            doc_offsets = tokenizer(di, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
            end = doc_offsets[min(keep, len(doc_offsets)) - 1][1]
            if end >= len(di):  # the document tokenizes differently alone: drop one more character
                end = len(di) - 1
            di = di[:end]
            ids, grp = _encode_one(tokenizer, t, qi, di)
            cut = True
        rows.append(ids)
        groups.append(grp)
        truncated.append(cut)
    n_pos = max(len(r) for r in rows)
    b = len(rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((b, n_pos), 0 if pad is None else pad, dtype=torch.long)
    mask = torch.zeros((b, n_pos), dtype=torch.long)
    grp_t = torch.full((b, n_pos), PAD, dtype=torch.long)
    for i, (r, g) in enumerate(zip(rows, groups)):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        grp_t[i, : len(r)] = torch.tensor(g)
    _warn_truncated(sum(truncated), b, max_length, "pairs")
    return PairBatch(input_ids, torch.zeros_like(input_ids), mask, grp_t, torch.tensor(truncated), q, d)


__all__: Sequence[str] = [
    "KNOWN_MODELS",
    "POSITIONS",
    "TEMPLATES",
    "RerankTemplate",
    "answer_token_ids",
    "get_template",
    "template_for",
    "tokenize_template",
]
