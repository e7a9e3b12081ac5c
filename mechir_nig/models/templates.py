"""Rerank templates: the prompt text around a query and a document, and the two answer tokens.

A generative reranker (a decoder LLM such as Qwen3-Reranker, or monoT5) reads the pair through a
prompt and is scored by ``log_softmax([logit_neg, logit_pos])[1]`` at the template's ``position``
(``"last"``: the last non-padding token of a decoder; ``"decoder_start"``: the first decoder step of an
encoder-decoder).

Token groups come from character offsets into the formatted text: tokens overlapping the query are
``query``, tokens overlapping the document are ``doc``; the token at position 0 is ``cls`` (what a
cross-encoder's ``[CLS]`` is), the tokenizer's special tokens (``<|im_start|>``, T5's ``</s>``) are
``sep``, and every other token of the template text (``<Instruct>: ...``, ``Query:``) is ``prompt``. So
``by_group()`` of a templated family has five groups (``cls``, ``query``, ``sep``, ``doc``, ``prompt``)
and still sums to ``per_neuron()``; position-group ablation and attention blocking take ``"prompt"``.
The NIG baseline ``pad`` replaces query and document tokens only, never the template.

Example:
    >>> t = get_template("monot5")
    >>> t.prompt.format(query="q", doc="d")
    'Query: q Document: d Relevant:'
    >>> t.answer_tokens, t.position
    (('false', 'true'), 'decoder_start')
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mechir_nig.errors import InputError, ModelLoadError
from mechir_nig.models.tokenization import (
    CLS,
    DOC,
    PROMPT,
    QUERY,
    SEP,
    PairBatch,
    _check_max_length,
    _pack,
    check_pairs,
)

POSITIONS = ("last", "decoder_start")


@dataclass(frozen=True)
class RerankTemplate:
    """A prompt with ``{query}`` and ``{doc}`` (and optionally ``{instruction}``) and two answer tokens.

    Attributes:
        name: the template's name (``"monot5"``, ``"qwen3-reranker"`` or a user's).
        prompt: the whole input text; special tokens are written as text.
        answer_tokens: ``(negative, positive)``, e.g. ``("no", "yes")``.
        position: ``"last"`` (decoder) or ``"decoder_start"`` (encoder-decoder).
        instruction: the default text for ``{instruction}``.
        add_special_tokens: whether the tokenizer's own special tokens are added (T5's ``</s>``).

    Example:
        >>> t = RerankTemplate("mine", "Q: {query}\\nD: {doc}\\nRelevant:", ("no", "yes"))
        >>> t.format("a", "b")
        ('Q: a\\nD: b\\nRelevant:', (3, 4), (8, 9))
    """

    name: str
    prompt: str
    answer_tokens: tuple[str, str]
    position: str = "last"
    instruction: str | None = None
    add_special_tokens: bool = False

    def __post_init__(self) -> None:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None]
        for need in ("query", "doc"):
            if fields.count(need) != 1:
                raise InputError(
                    f"template {self.name!r}: the prompt must hold {{{need}}} exactly once "
                    f"(it holds it {fields.count(need)} times); write literal braces as {{{{ and }}}}"
                )
        other = set(fields) - {"query", "doc", "instruction"}
        if other:
            raise InputError(
                f"template {self.name!r}: unknown placeholders {sorted(other)}; use {{query}}, {{doc}}, {{instruction}}"
            )
        if "instruction" in fields and self.instruction is None:
            raise InputError(
                f"template {self.name!r} has {{instruction}}: give instruction= its default text"
            )
        if len(self.answer_tokens) != 2 or not all(isinstance(a, str) and a for a in self.answer_tokens):
            raise InputError(
                f"template {self.name!r}: answer_tokens must be two strings (negative, positive)"
            )
        if self.position not in POSITIONS:
            raise InputError(f"template {self.name!r}: position must be one of {POSITIONS}")

    def format(self, query: str, doc: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """(the text, the query's character span, the document's character span)."""
        out, spans = "", {}
        for literal, fld, _, _ in string.Formatter().parse(self.prompt):
            out += literal
            if fld is None:
                continue
            value = {"query": query, "doc": doc, "instruction": self.instruction or ""}[fld]
            spans[fld] = (len(out), len(out) + len(value))
            out += value
        return out, spans["query"], spans["doc"]


TEMPLATES: Mapping[str, RerankTemplate] = {
    "qwen3-reranker": RerankTemplate(
        name="qwen3-reranker",
        prompt=(
            "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
            'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
            "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ),
        answer_tokens=("no", "yes"),
        position="last",
        instruction="Given a web search query, retrieve relevant passages that answer the query",
    ),
    "monot5": RerankTemplate(
        name="monot5",
        prompt="Query: {query} Document: {doc} Relevant:",
        answer_tokens=("false", "true"),
        position="decoder_start",
        add_special_tokens=True,
    ),
}
"""Built-in templates by name (Qwen3-Reranker's model-card formatting; monoT5's)."""

KNOWN_MODELS: Mapping[str, str] = {
    "Qwen/Qwen3-Reranker": "qwen3-reranker",
    "castorini/monot5": "monot5",
}
"""Hub-id prefixes -> the template their checkpoints are scored with."""


def get_template(template: str | RerankTemplate) -> RerankTemplate:
    """A built-in template by name, or ``template`` itself.

    Example:
        >>> get_template("qwen3-reranker").answer_tokens
        ('no', 'yes')
    """
    if isinstance(template, RerankTemplate):
        return template
    if isinstance(template, str) and template in TEMPLATES:
        return TEMPLATES[template]
    raise InputError(
        f"unknown template {template!r}; use one of {sorted(TEMPLATES)} or a RerankTemplate(name, prompt, "
        "answer_tokens)"
    )


def template_for(name: str) -> str | None:
    """The built-in template a known hub id uses (``None`` when the id is not known).

    Example:
        >>> template_for("Qwen/Qwen3-Reranker-0.6B"), template_for("gpt2")
        ('qwen3-reranker', None)
    """
    for prefix, t in KNOWN_MODELS.items():
        if name.startswith(prefix):
            return t
    return None


def answer_token_ids(template: str | RerankTemplate, tokenizer: Any, source: str) -> tuple[int, int]:
    """Token ids of the (negative, positive) answer tokens; ``ModelLoadError`` naming ``source`` when one is
    not a single token of the tokenizer.

    Example:
        >>> from mechir_nig.testing import decoder_tokenizer
        >>> tok = decoder_tokenizer(["what is a neuron"])  # has "yes" and "no" as tokens
        >>> no, yes = answer_token_ids("qwen3-reranker", tok, "/path/to/model")
        >>> tok.convert_ids_to_tokens([no, yes])
        ['no', 'yes']
    """
    t = get_template(template)
    out = []
    for a in t.answer_tokens:
        ids = tokenizer(a, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ModelLoadError(
                f"template {t.name!r}: the answer token {a!r} is {len(ids)} tokens of the tokenizer of {source}, "
                "not one; the score reads one logit per answer: pass a template whose answer_tokens are single "
                "tokens of this tokenizer (e.g. its vocabulary's ' yes'/' no'), or the tokenizer saved with "
                "the model"
            )
        out.append(int(ids[0]))
    return out[0], out[1]


def _encode_one(
    tokenizer: Any, t: RerankTemplate, q: str, d: str, special: set[int]
) -> tuple[list[int], list[int]]:
    text, (qs, qe), (ds, de) = t.format(q, d)
    enc = tokenizer(text, add_special_tokens=t.add_special_tokens, return_offsets_mapping=True, verbose=False)
    groups = []
    for p, ((s, e), tid) in enumerate(zip(enc["offset_mapping"], enc["input_ids"], strict=True)):
        if e > s and s < qe and e > qs:
            groups.append(QUERY)
        elif e > s and s < de and e > ds:
            groups.append(DOC)
        elif p == 0:
            groups.append(CLS)
        else:
            groups.append(SEP if tid in special else PROMPT)
    return list(enc["input_ids"]), groups


def _special_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's special tokens: its named ones and the added tokens marked special."""
    out = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    out.update(int(i) for i, t in added.items() if getattr(t, "special", False))
    return out


def tokenize_template(
    tokenizer: Any,
    template: str | RerankTemplate,
    queries: Any,
    docs: Any,
    *,
    max_length: int,
    n_ctx: int,
) -> PairBatch:
    """Format each pair with ``template``, tokenize the whole text (so tokens merge as the model card's
    code tokenizes them), and give token groups from character offsets (see the module docstring).

    The query is kept whole; a document too long for ``max_length`` is cut from its end (at a token's
    character offset) and reported in ``batch.truncated`` with a ``TruncationWarning``.

    Example:
        >>> from mechir_nig.testing import decoder_tokenizer
        >>> tok = decoder_tokenizer(["what is a neuron", "A neuron is a cell."])
        >>> batch = tokenize_template(tok, "qwen3-reranker", ["q"], ["d"], max_length=512, n_ctx=512)
        >>> len(batch), bool(batch.truncated.any())  # one pair, nothing cut
        (1, False)
    """
    t = get_template(template)
    q, d = check_pairs(queries, docs)
    _check_max_length(max_length, n_ctx)
    rows, groups, truncated = [], [], []
    special = _special_ids(tokenizer)
    for i, (qi, di) in enumerate(zip(q, d, strict=True)):
        ids, g = _encode_one(tokenizer, t, qi, di, special)
        if QUERY not in g or DOC not in g:
            raise InputError(
                f"pair {i}: {'queries' if QUERY not in g else 'docs'}[{i}] has no tokens after tokenization; "
                "give it real text"
            )
        cut = False
        while len(ids) > max_length:
            doc_pos = [p for p, x in enumerate(g) if x == DOC]
            keep = len(doc_pos) - (len(ids) - max_length)
            if keep < 1:
                raise InputError(
                    f"queries[{i}] with the template {t.name!r} leaves no room for its document within "
                    f"max_length={max_length}; shorten the query or raise max_length (at most {n_ctx})"
                )
            offsets = tokenizer(
                t.format(qi, di)[0], add_special_tokens=t.add_special_tokens, return_offsets_mapping=True
            )["offset_mapping"]
            ds = t.format(qi, di)[2][0]
            new = di[: offsets[doc_pos[keep]][0] - ds].rstrip()
            if not new or new == di:
                new = di[: max(1, len(di) - 1)]
            di, cut = new, True
            ids, g = _encode_one(tokenizer, t, qi, di, special)
        rows.append(ids)
        groups.append(g)
        truncated.append(cut)
    types = [[0] * len(r) for r in rows]
    tensors = _pack(rows, groups, types, tokenizer.pad_token_id, truncated, max_length, "documents")
    return PairBatch(**tensors, queries=q, docs=d)


__all__ = [
    "KNOWN_MODELS",
    "POSITIONS",
    "RerankTemplate",
    "TEMPLATES",
    "answer_token_ids",
    "get_template",
    "template_for",
    "tokenize_template",
]
