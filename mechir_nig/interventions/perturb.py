"""Text perturbations of a document (TFC1, TDC, term removal, a random-term control) and their alignment.

Perturbations (diagnostic axioms after Câmara & Hauff, 2020, and Chen et al., 2024, "Axiomatic Causal
Interventions for Reverse Engineering Relevance Computation in Neural Retrieval Models"):

- :func:`tfc1`: inject a query term into the document (at its ``"start"``, ``"middle"`` or ``"end"``);
- :func:`tdc`: inject the query term of highest IDF in a collection (:func:`term_idf`);
- :func:`remove_term`: delete every occurrence of a term from the document;
- :func:`random_term`: the control, inject a random collection term that is not a query term (no
  synonym check);
- any callable ``(query, doc) -> doc`` (:func:`perturb_docs` applies one to many pairs).

Alignment (:func:`align`). Patching needs a clean and a perturbed input of the same length, position by
position. MechIR pads the shorter document with a filler token, which the model then reads: the "clean"
run is no longer the clean input and its score moves. Here the two token sequences of each pair are
aligned with ``difflib.SequenceMatcher`` over the token ids of the whole pair (query and specials are
identical on both sides, so they align as they are):

- ``equal`` blocks share aligned positions;
- ``replace`` blocks of equal length (a token substitution) share aligned positions;
- every other change (``insert``, ``delete``, ``replace`` of unequal length) gets its own positions: the
  clean tokens first, then the perturbed ones, each a **masked slot** on the side that lacks it.

A masked slot has ``attention_mask`` 0 and holds the other side's token id, token type and position
id. Every real token keeps its original position id (explicit ``position_ids``), and nothing attends to a
masked slot, so each aligned side scores exactly as its unaligned input (tested to 1e-6): the alignment
is neutral. A slot still computes a residual stream (the token as read in the other side's context,
unseen by the rest): that is what patching writes into the other run at that position.

Example:
    >>> al = align(ce, ["what is a neuron"], ["A cell of the nervous system."], tfc1)
    >>> int(al.changed.sum()), al.perturbed_tokens[0][-3:]  # "neuron" injected at the end: 2 word pieces
    (2, ['ne', '##uron', '[SEP]'])
"""

from __future__ import annotations

import difflib
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from jaxtyping import Bool
from torch import Tensor

from mechir_nig.errors import InputError
from mechir_nig.models.protocol import BiEncoderModel, HookedModel
from mechir_nig.models.tokenization import PAD, PairBatch, TextBatch, check_pairs

__all__ = [
    "TERM_RULES",
    "Alignment",
    "align",
    "perturb_docs",
    "query_terms",
    "random_term",
    "remove_term",
    "tdc",
    "term_idf",
    "tfc1",
    "tfc1_term",
]

WHERE = ("start", "middle", "end")
TERM_RULES = {
    "given": "the term the caller gave (term= / --term)",
    "first query term": (
        "the query's first term that is not a stopword (the default rule; idf= / --term-rule idf injects the "
        "query term of highest IDF instead)"
    ),
    "highest-IDF query term": "the query term of highest IDF in the collection (the most discriminative one, as TDC)",
}
"""Why :func:`tfc1` injected its term: each reason :func:`tfc1_term` returns, explained (results and
reports state it next to the injected terms)."""
_WORD = re.compile(r"\w\w+")
Perturbation = Callable[[str, str], str]


def _stopwords() -> frozenset[str]:
    try:
        from bm25s.stopwords import STOPWORDS_EN_PLUS
    except ImportError:  # pragma: no cover - bm25s is a dependency
        return frozenset()
    return frozenset(STOPWORDS_EN_PLUS)


def query_terms(query: str) -> list[str]:
    """The query's terms: lowercased words of 2+ characters (``\\w\\w+``, as ``BM25Index``), English
    stopwords removed, in query order without repeats.

    Example:
        >>> query_terms("What is a neuron? A neuron in the brain")
        ['neuron', 'brain']
    """
    stop = _stopwords()
    return list(dict.fromkeys(t for t in _WORD.findall(query.lower()) if t not in stop))


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} must be a non-empty string, got {text!r}")
    return text


def _inject(doc: str, term: str, where: str) -> str:
    if where not in WHERE:
        raise InputError(f"where must be one of {WHERE}, got {where!r}")
    if where == "start":
        return f"{term} {doc}"
    if where == "end":
        return f"{doc} {term}"
    words = doc.split(" ")
    mid = len(words) // 2
    return " ".join([*words[:mid], term, *words[mid:]])


def tfc1(
    query: str,
    doc: str,
    term: str | None = None,
    where: str = "end",
    idf: Mapping[str, float] | Any = None,
) -> str:
    """TFC1: the document with one query term injected (one more occurrence of a query term).

    Which term (:func:`tfc1_term` says it and why): ``term`` when given; else with ``idf`` the query
    term of highest IDF (as :func:`tdc` picks it: the most discriminative one); else the query's first
    term (:func:`query_terms`: the first word of 2+ characters that is not a stopword, e.g. "papers"
    for "what papers are there ...").

    Args:
        query: the pair's query.
        doc: the pair's document.
        term: the term to inject (default: chosen as above).
        where: ``"start"``, ``"middle"`` (at the middle word boundary) or ``"end"``.
        idf: ``{term: idf}`` from :func:`term_idf` (or a collection / docs dict it is computed from):
            inject the query term of highest IDF instead of the first one.

    Raises:
        InputError: for an empty query/document, a query without terms, or an unknown ``where``.

    Example:
        >>> tfc1("what is a neuron", "A cell of the nervous system.")
        'A cell of the nervous system. neuron'
        >>> tfc1("what is a neuron", "A cell of the nervous system.", term="brain", where="middle")
        'A cell of brain the nervous system.'
        >>> idf = term_idf({"d1": "papers on neurons", "d2": "papers on rice", "d3": "papers"})
        >>> tfc1("what papers are there on neurons", "A cell.", idf=idf)  # the rarer term, not "papers"
        'A cell. neurons'
    """
    _check_text(query, "query")
    _check_text(doc, "doc")
    term, _ = tfc1_term(query, term, idf)
    return _inject(doc, term, where)


def tfc1_term(query: str, term: str | None = None, idf: Mapping[str, float] | Any = None) -> tuple[str, str]:
    """The term :func:`tfc1` injects into a pair of ``query``, and why it was chosen.

    Args:
        query: the pair's query.
        term: a term given by the caller (returned as it is).
        idf: ``{term: idf}`` (or what :func:`term_idf` computes it from): the query term of highest IDF.

    Returns:
        ``(term, reason)``, reason one of ``"given"``, ``"highest-IDF query term"``, ``"first query term"``
        (explained in :data:`TERM_RULES`).

    Raises:
        InputError: for an empty query, a query without terms, or (with ``idf``) none of them in ``idf``.

    Example:
        >>> tfc1_term("what papers are there on neurons")
        ('papers', 'first query term')
        >>> tfc1_term("what papers are there on neurons", idf={"papers": 0.1, "neurons": 1.2})
        ('neurons', 'highest-IDF query term')
    """
    _check_text(query, "query")
    if term is not None:
        return _check_text(term, "term"), "given"
    terms = query_terms(query)
    if not terms:
        raise InputError(f"query {query!r} has no terms (only stopwords/short words); pass term=")
    if idf is None:
        return terms[0], "first query term"
    table = idf if _is_idf(idf) else term_idf(idf)
    known = [t for t in terms if t in table]
    if not known:
        raise InputError(f"no term of query {query!r} is in the IDF table; pass term= or leave idf out")
    return max(known, key=lambda t: table[t]), "highest-IDF query term"


def term_idf(docs: Mapping[str, str] | Any) -> dict[str, float]:
    """IDF of every term of a collection: ``log(1 + (N - df + 0.5) / (df + 0.5))`` (Lucene's BM25 IDF).

    Terms are tokenized as :func:`query_terms` (lowercased ``\\w\\w+``); ``docs`` is ``{doc_id: text}`` or
    a :class:`~mechir_nig.data.Collection` (reads every document once).

    Example:
        >>> idf = term_idf({"d1": "neurons fire", "d2": "the brain has neurons", "d3": "rice"})
        >>> round(idf["neurons"], 3), round(idf["brain"], 3)  # rarer terms weigh more
        (0.47, 0.981)
    """
    texts = getattr(docs, "docs", docs)
    if not isinstance(texts, Mapping) or not texts:
        raise InputError("docs must be a non-empty dict {doc_id: text} or a Collection")
    df: Counter[str] = Counter()
    n = 0
    for text in texts.values():
        n += 1
        df.update(set(_WORD.findall(str(text).lower())))
    return {t: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}


def tdc(query: str, doc: str, idf: Mapping[str, float] | Any, where: str = "end") -> str:
    """TDC: inject the query term of highest IDF (``idf`` from :func:`term_idf`, or a collection / docs
    dict it is computed from; pass a precomputed dict when perturbing many pairs).

    Query terms absent from ``idf`` are ignored; ties go to the earlier query term.

    Raises:
        InputError: when no query term is in ``idf``.

    Example:
        >>> idf = term_idf({"d1": "neurons fire", "d2": "the brain has neurons", "d3": "rice"})
        >>> tdc("brain neurons", "A cell.", idf)  # "brain" is the rarer query term
        'A cell. brain'
    """
    table = idf if _is_idf(idf) else term_idf(idf)
    terms = [t for t in query_terms(_check_text(query, "query")) if t in table]
    if not terms:
        raise InputError(
            f"no term of query {query!r} is in the collection's IDF table; use tfc1(query, doc, term=...)"
        )
    best = max(terms, key=lambda t: table[t])  # max keeps the first of equal values
    return _inject(_check_text(doc, "doc"), best, where)


def _is_idf(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not obj:
        return False
    return isinstance(next(iter(obj.values())), int | float)


def remove_term(query: str, doc: str, term: str) -> str:
    """The document with every whole-word occurrence of ``term`` removed (case-insensitive).

    Raises:
        InputError: when ``term`` does not occur in the document, or only ``term`` is left of it.

    Example:
        >>> remove_term("what is a neuron", "The neuron is a Neuron cell.", "neuron")
        'The is a cell.'
    """
    _check_text(term, "term")
    pattern = re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE)
    if not pattern.search(_check_text(doc, "doc")):
        raise InputError(f"term {term!r} does not occur in the document {doc[:60]!r}; nothing to remove")
    out = re.sub(r"\s{2,}", " ", pattern.sub("", doc)).strip()
    if not out:
        raise InputError(f"removing {term!r} leaves the document {doc[:60]!r} empty")
    return out


def random_term(
    query: str,
    doc: str,
    vocabulary: Sequence[str] | Mapping[str, float],
    *,
    seed: int | None = None,
    where: str = "end",
) -> str:
    """Control: inject a random collection term that is not a query term (no synonym check).

    ``vocabulary``: terms to draw from (a list, or the keys of :func:`term_idf`); the draw depends only on
    ``seed``, the query and the vocabulary, so a run is reproducible.

    Example:
        >>> random_term("brain neurons", "A cell.", ["rice", "food", "brain"], seed=0)
        'A cell. food'
    """
    qt = set(query_terms(_check_text(query, "query")))
    pool = sorted(
        t for t in (vocabulary.keys() if isinstance(vocabulary, Mapping) else vocabulary) if t not in qt
    )
    if not pool:
        raise InputError("vocabulary has no term outside the query; pass a collection's vocabulary")
    rng = random.Random(f"{seed}|{query}")
    return _inject(_check_text(doc, "doc"), rng.choice(pool), where)


def perturb_docs(perturbation: Perturbation, queries: Sequence[str], docs: Sequence[str]) -> list[str]:
    """``[perturbation(q, d) for q, d in pairs]``, checking it returns non-empty strings.

    Example:
        >>> perturb_docs(tfc1, ["what is a neuron", "cook rice"], ["A cell.", "Boil it."])
        ['A cell. neuron', 'Boil it. cook']
    """
    if not callable(perturbation):
        raise InputError(
            f"perturbation must be a callable (query, doc) -> doc, got {type(perturbation).__name__}"
        )
    q, d = check_pairs(queries, docs)
    out = []
    for i, (qi, di) in enumerate(zip(q, d, strict=True)):
        p = perturbation(qi, di)
        if not isinstance(p, str) or not p.strip():
            raise InputError(
                f"the perturbation returned {p!r} for pair {i}; it must return a non-empty string"
            )
        out.append(p)
    return out


# -- alignment -------------------------------------------------------------------------------------------
@dataclass
class Alignment:
    """Clean and perturbed inputs aligned position by position (see the module docstring for the rule).

    Shapes:
        clean, perturbed: ``PairBatch`` es (a cross-encoder) or ``TextBatch`` es of the documents (a
            bi-encoder) of the same ``[batch, pos]``, with masked slots and explicit
            ``position_ids``; each scores exactly as its unaligned input.
        changed: ``[batch, pos]`` bool — positions whose tokens differ (substitutions and every slot).
        clean_tokens / perturbed_tokens: the token strings per aligned position (``""`` where that side
            has a masked slot or padding).

    Example:
        >>> al = align(ce, ["what is a neuron"], ["A cell of the nervous system."], tfc1)
        >>> al.changed.shape == al.clean.input_ids.shape  # [batch, pos]
        True
        >>> int(al.injected.sum())  # the injected "neuron" (ne ##uron): masked slots on the clean side
        2
    """

    clean: PairBatch | TextBatch
    perturbed: PairBatch | TextBatch
    changed: Bool[Tensor, "batch pos"]
    clean_tokens: list[list[str]] = field(default_factory=list)
    perturbed_tokens: list[list[str]] = field(default_factory=list)
    query_embeddings: Tensor | None = None  # [batch, d_model]: a bi-encoder's fixed query side

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def injected(self) -> Bool[Tensor, "batch pos"]:
        """Positions the perturbed side has and the clean side lacks or holds another token at."""
        return self.changed & self.perturbed.attention_mask.bool()

    @property
    def removed(self) -> Bool[Tensor, "batch pos"]:
        """Positions the clean side has and the perturbed side lacks or holds another token at."""
        return self.changed & self.clean.attention_mask.bool()

    def to(self, device: torch.device | str) -> Alignment:
        return Alignment(
            self.clean.to(device),
            self.perturbed.to(device),
            self.changed.to(device),
            self.clean_tokens,
            self.perturbed_tokens,
            None if self.query_embeddings is None else self.query_embeddings.to(device),
        )


def _row(batch: PairBatch | TextBatch, i: int) -> dict[str, list[int]]:
    n = int(batch.attention_mask[i].sum())  # tokenizer output: no masked slots inside
    return {
        "ids": batch.input_ids[i, :n].tolist(),
        "tt": batch.token_type_ids[i, :n].tolist(),
        "grp": batch.groups[i, :n].tolist(),
    }


def _align_pair(c: dict[str, list[int]], p: dict[str, list[int]]) -> list[tuple[int | None, int | None]]:
    """Aligned positions as ``(clean index | None, perturbed index | None)``; ``None`` is a masked slot."""
    out: list[tuple[int | None, int | None]] = []
    sm = difflib.SequenceMatcher(None, c["ids"], p["ids"], autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            out += list(zip(range(i1, i2), range(j1, j2), strict=True))
        else:
            out += [(i, None) for i in range(i1, i2)]
            out += [(None, j) for j in range(j1, j2)]
    return out


def align(
    model: HookedModel,
    queries: Sequence[str],
    docs: Sequence[str],
    perturbed: Sequence[str] | Perturbation,
    *,
    max_length: int | None = None,
) -> Alignment:
    """Tokenize clean and perturbed pairs and align them position by position (a cross-encoder).

    Args:
        model: a ``HookedCrossEncoder`` (the pairs are aligned) or a ``HookedBiEncoder`` (the documents
            are aligned; the query embeddings, the fixed side, are kept in ``query_embeddings``).
        queries: the clean pairs' queries.
        docs: the clean pairs' documents.
        perturbed: the perturbed documents, or a perturbation ``(query, doc) -> doc`` applied to each pair.
        max_length: tokenization length (default the model's).

    Returns:
        An :class:`Alignment`.

    Raises:
        InputError: naming the pair, when a perturbation changes no token, or only tokens past
            ``max_length`` (truncated away).

    Example:
        >>> al = align(ce, queries, docs, tfc1)
        >>> al.clean.input_ids.shape == al.perturbed.input_ids.shape  # both [batch, pos]
        True
        >>> torch.allclose(ce(al.clean), ce.score(queries, docs), atol=1e-5)  # [batch]: the unaligned scores
        True
    """
    q, d = check_pairs(queries, docs)
    pert = perturb_docs(perturbed, q, d) if callable(perturbed) else check_pairs(q, perturbed)[1]
    pairwise = getattr(model, "pairwise", True)
    if pairwise:
        cb = model.tokenize(q, d, max_length=max_length).to("cpu")
        pb = model.tokenize(q, pert, max_length=max_length).to("cpu")
    else:
        cb = model.tokenize(d, max_length=max_length, what="docs").to("cpu")
        pb = model.tokenize(pert, max_length=max_length, what="docs").to("cpu")
    tok = model.tokenizer
    pad_id = int(tok.pad_token_id)
    rows = []
    for i in range(len(q)):
        c, p = _row(cb, i), _row(pb, i)
        if c["ids"] == p["ids"]:
            if bool(cb.truncated[i]) or bool(pb.truncated[i]):
                raise InputError(
                    f"pair {i} (query {q[i][:40]!r}): the perturbation falls past max_length (truncated "
                    "away), the model sees no change; perturb earlier in the document or raise max_length"
                )
            raise InputError(
                f"pair {i} (query {q[i][:40]!r}): the perturbed document has the same tokens as the clean "
                "one; the perturbation changes nothing"
            )
        rows.append((c, p, _align_pair(c, p)))
    n_pos = max(len(r[2]) for r in rows)
    b = len(q)

    def blank() -> dict[str, Tensor]:
        return {
            "input_ids": torch.full((b, n_pos), pad_id, dtype=torch.long),
            "token_type_ids": torch.zeros((b, n_pos), dtype=torch.long),
            "attention_mask": torch.zeros((b, n_pos), dtype=torch.long),
            "groups": torch.full((b, n_pos), PAD, dtype=torch.long),
            "position_ids": torch.zeros((b, n_pos), dtype=torch.long),
        }

    sides = (blank(), blank())
    changed = torch.zeros((b, n_pos), dtype=torch.bool)
    tokens: tuple[list[list[str]], list[list[str]]] = ([], [])
    for i, (c, p, pairs) in enumerate(rows):
        src = (c, p)
        strings = ([""] * n_pos, [""] * n_pos)
        for a, (ci, pi) in enumerate(pairs):
            idx = (ci, pi)
            for s in (0, 1):
                own = idx[s]
                take = s if own is not None else 1 - s  # a slot holds the other side's token
                k = int(idx[take])  # type: ignore[arg-type]  # one side always has the token
                t = sides[s]
                t["input_ids"][i, a] = src[take]["ids"][k]
                t["token_type_ids"][i, a] = src[take]["tt"][k]
                t["groups"][i, a] = src[take]["grp"][k]
                t["position_ids"][i, a] = k
                t["attention_mask"][i, a] = int(own is not None)
                if own is not None:
                    strings[s][a] = tok.convert_ids_to_tokens(src[s]["ids"][own])
            changed[i, a] = ci is None or pi is None or c["ids"][ci] != p["ids"][pi]
        tokens[0].append(strings[0])
        tokens[1].append(strings[1])
    if pairwise:
        clean: PairBatch | TextBatch = PairBatch(**sides[0], truncated=cb.truncated, queries=q, docs=d)
        pert_batch: PairBatch | TextBatch = PairBatch(
            **sides[1], truncated=pb.truncated, queries=q, docs=pert
        )
        q_emb = None
    else:
        clean = TextBatch(**sides[0], truncated=cb.truncated, texts=d)
        pert_batch = TextBatch(**sides[1], truncated=pb.truncated, texts=pert)
        q_emb = cast(BiEncoderModel, model).encode(q, max_length=max_length)
    al = Alignment(clean, pert_batch, changed, tokens[0], tokens[1], q_emb)
    return al.to(model.device)
