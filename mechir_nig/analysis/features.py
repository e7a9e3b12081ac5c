"""IR features of (query, document) pairs, per document token and per pair, for probing a model.

Terms are the collection's words as :func:`~mechir_nig.interventions.perturb.term_idf` and ``BM25Index``
see them: lowercased ``\\w\\w+`` words. Each model token of a document belongs to the word whose
characters contain its first character (tokenizer offsets: a fast tokenizer is needed), or to no word
(punctuation, one-letter words). With ``tf(w, d)`` the count of word ``w`` in document ``d``, ``|d|`` its
word count, ``avgdl`` the mean word count of the collection's documents, ``N`` their number and ``df(w)``
the number of documents holding ``w``:

==================  =================================================================================
per token           value at a document token of word ``w`` (0 elsewhere; ``mask`` says where defined)
==================  =================================================================================
``match``           1 when the token's id is one of the query's token ids (no special tokens), else 0
``query_term``      1 when ``w`` is a query term (:func:`~mechir_nig.interventions.perturb.query_terms`:
                    stopwords removed), else 0
``tf``              ``tf(w, d)``
``idf``             ``log(1 + (N - df(w) + 0.5) / (df(w) + 0.5))`` (Lucene's BM25 IDF, ``term_idf``; a
                    word absent from the collection has ``df = 0``)
``bm25``            ``idf(w) · tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))`` (``k1 = 1.5``, ``b = 0.75``)
``query_tf``        ``tf`` at query-term tokens, 0 at other tokens
``query_bm25``      ``bm25`` at query-term tokens, 0 at other tokens
==================  =================================================================================

==================  =================================================================================
per pair            value
==================  =================================================================================
``doc_length``      ``|d|`` (words, stopwords included)
``matched_terms``   how many distinct query terms occur in ``d``
``query_tf``        ``Σ_{q ∈ query terms} tf(q, d)``
``bm25``            ``Σ_{q ∈ query terms} bm25(q, d)``: the BM25 score with the formula above (it differs
                    from ``BM25Index``, which also drops stopwords from ``|d|`` and ``avgdl``)
==================  =================================================================================

Example:
    >>> stats = collection_statistics({"d1": "cats purr", "d2": "dogs bark loudly", "d3": "cats"})
    >>> stats.n_docs, stats.avgdl, round(stats.idf["cats"], 4)
    (3, 2.0, 0.47)
    >>> feats = ir_features(ce, stats, [("why do cats purr", "cats purr, cats nap")])
    >>> feats.tokens["query_tf"][0][feats.mask[0]].tolist()  # cats, pu, ##rr, cats, nap
    [2.0, 1.0, 1.0, 2.0, 0.0]
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechir_nig.data.collection import Collection, LazyDocs
from mechir_nig.errors import InputError
from mechir_nig.interventions.perturb import _WORD, query_terms, term_idf
from mechir_nig.models.protocol import HookedModel
from mechir_nig.models.tokenization import DOC, PairBatch, TextBatch, check_pairs

__all__ = [
    "PAIR_FEATURES",
    "TOKEN_FEATURES",
    "CollectionStatistics",
    "IRFeatures",
    "collection_statistics",
    "ir_features",
    "split_pairs",
    "token_words",
]

TOKEN_FEATURES = ("match", "query_term", "tf", "idf", "bm25", "query_tf", "query_bm25")
"""Per-token features of :func:`ir_features` (``[batch, pos]``)."""
PAIR_FEATURES = ("doc_length", "matched_terms", "query_tf", "bm25")
"""Per-pair features of :func:`ir_features` (``[batch]``)."""


@dataclass(frozen=True)
class CollectionStatistics:
    """What the features need of a collection: IDF per term, the document count and mean length.

    Attributes:
        idf: ``{term: idf}`` (:func:`~mechir_nig.interventions.perturb.term_idf`).
        n_docs: ``N``, the number of documents.
        avgdl: the mean word count of a document.
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.

    Example:
        >>> stats = CollectionStatistics({"cats": 0.47}, n_docs=3, avgdl=2.0)
        >>> round(stats.bm25("cats", tf=2, length=4), 4), round(stats.idf_of("unseen"), 4)
        (0.5081, 2.0794)
    """

    idf: Mapping[str, float]
    n_docs: int
    avgdl: float
    k1: float = 1.5
    b: float = 0.75

    def idf_of(self, term: str) -> float:
        """``idf[term]``, or the IDF of a term in no document (``df = 0``)."""
        got = self.idf.get(term)
        return math.log(1.0 + (self.n_docs + 0.5) / 0.5) if got is None else got

    def bm25(self, term: str, tf: int, length: int) -> float:
        """The BM25 weight of ``term`` occurring ``tf`` times in a document of ``length`` words."""
        if tf == 0:
            return 0.0
        norm = self.k1 * (1.0 - self.b + self.b * length / self.avgdl)
        return self.idf_of(term) * tf * (self.k1 + 1.0) / (tf + norm)


def collection_statistics(
    docs: Mapping | Collection, *, k1: float = 1.5, b: float = 0.75
) -> CollectionStatistics:
    """IDF per term, document count and mean document length of ``docs`` (``{doc_id: text}`` or a
    :class:`~mechir_nig.data.Collection`; every document is read twice).

    Raises:
        InputError: empty ``docs``, ``k1 < 0`` or ``b`` outside ``[0, 1]``.
        DataError: documents loaded with ``lazy=True`` (they are not to be read in full).

    Example:
        >>> collection_statistics({"d1": "neurons fire", "d2": "the brain has neurons"}).avgdl
        3.0
    """
    texts = docs.docs if isinstance(docs, Collection) else docs
    if isinstance(texts, LazyDocs):
        texts.require_in_memory("collection statistics (IDF, mean length)")
    if not isinstance(texts, Mapping) or not texts:
        raise InputError("docs must be a non-empty dict {doc_id: text} or a Collection")
    if k1 < 0 or not 0 <= b <= 1:
        raise InputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    idf = term_idf(texts)
    lengths = [len(_WORD.findall(str(t))) for t in texts.values()]
    return CollectionStatistics(idf, len(lengths), sum(lengths) / len(lengths), k1, b)


def token_words(tokenizer: Any, text: str) -> tuple[list[int], list[str | None]]:
    """Token ids of ``text`` (no special tokens) and the word (lowercased ``\\w\\w+``) of each token: the
    word containing the token's first character, ``None`` for a token in no word.

    Raises:
        InputError: a tokenizer without offsets (a slow, pure-Python tokenizer).

    Example:
        >>> token_words(ce.tokenizer, "Cats purr!")[1]  # cats pu ##rr !
        ['cats', 'purr', 'purr', None]
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            "IR features need a fast tokenizer (offsets of each token); load the model's fast one"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    spans = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
    starts = [s for s, _, _ in spans]
    words: list[str | None] = []
    for s, e in enc["offset_mapping"]:
        i = bisect.bisect_right(starts, s) - 1
        words.append(spans[i][2] if i >= 0 and spans[i][0] <= s < spans[i][1] and e > s else None)
    return list(enc["input_ids"]), words


def split_pairs(pairs: Any) -> tuple[list[str], list[str], list[str]]:
    """``(queries, docs, keys)`` of ``pairs``: ``(query, doc)`` tuples or records with ``.query`` and
    ``.doc`` (``JudgedPair``); ``keys`` are the query ids where records have them, else the query texts
    (what probe folds hold out together).

    Example:
        >>> split_pairs([("q a", "d a"), ("q a", "d b")])
        (['q a', 'q a'], ['d a', 'd b'], ['q a', 'q a'])
    """
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Sequence) or not pairs:
        raise InputError("pairs must be a non-empty list of (query, doc) tuples or JudgedPair records")
    queries, docs, keys = [], [], []
    for i, p in enumerate(pairs):
        if hasattr(p, "query") and hasattr(p, "doc"):
            q, d, key = p.query, p.doc, getattr(p, "query_id", p.query)
        elif isinstance(p, tuple | list) and len(p) == 2:
            q, d = p
            key = q
        else:
            raise InputError(f"pairs[{i}] must be a (query, doc) tuple or a JudgedPair, got {p!r}")
        queries.append(q)
        docs.append(d)
        keys.append(str(key))
    q, d = check_pairs(queries, docs)
    return q, d, keys


@dataclass
class IRFeatures:
    """IR features of tokenized pairs (see the module docstring for the formulas).

    Shapes:
        tokens: ``{name: [batch, pos]}`` float64, positions of ``batch`` (0 where undefined).
        mask: ``[batch, pos]`` bool, the document tokens that belong to a word.
        pairs: ``{name: [batch]}`` float64.

    Attributes:
        batch: what the model reads: the pairs' ``PairBatch`` (cross-encoder) or the documents'
            ``TextBatch`` (bi-encoder: the document side).
        keys: the fold key of each pair (query id or text).

    Example:
        >>> feats = ir_features(ce, {"d1": "cats purr", "d2": "dogs"}, [("cats", "cats nap")])
        >>> feats["tf"].shape, feats["doc_length"].shape  # [batch, pos], [batch]
        (torch.Size([1, 6]), torch.Size([1]))
    """

    tokens: dict[str, Float[Tensor, "batch pos"]]
    mask: Bool[Tensor, "batch pos"]
    pairs: dict[str, Float[Tensor, " batch"]]
    batch: PairBatch | TextBatch
    keys: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Tensor:
        """A feature by name, per token first (``query_tf`` is the per-token one; ``pairs["query_tf"]``
        the per-pair sum)."""
        if name in self.tokens:
            return self.tokens[name]
        if name in self.pairs:
            return self.pairs[name]
        raise InputError(f"unknown IR feature {name!r}: per token {TOKEN_FEATURES}, per pair {PAIR_FEATURES}")


def ir_features(
    model: HookedModel,
    collection: Mapping | Collection | CollectionStatistics,
    pairs: Any,
    *,
    max_length: int | None = None,
) -> IRFeatures:
    """IR features of ``pairs`` on the tokens ``model`` reads (the module docstring has the formulas).

    Args:
        model: a ``HookedModel`` with a fast tokenizer; a cross-encoder reads the pairs, a bi-encoder
            the documents (the document side).
        collection: a ``Collection``, ``{doc_id: text}``, or its :func:`collection_statistics` (pass
            those when computing features for many batches).
        pairs: ``(query, doc)`` tuples or ``JudgedPair`` records.
        max_length: the tokenization length (default the model's).

    Returns:
        :class:`IRFeatures` with the batch it describes.

    Raises:
        InputError: bad pairs; a tokenizer without offsets; a batch whose document tokens are not the
            document's own tokenization (a template that rewrites the document).

    Example:
        >>> feats = ir_features(ce, {"d1": "cats purr", "d2": "dogs bark"}, [("cats", "cats nap")])
        >>> feats.pairs["matched_terms"].tolist(), feats.pairs["doc_length"].tolist()
        ([1.0], [2.0])
    """
    stats = collection if isinstance(collection, CollectionStatistics) else collection_statistics(collection)
    queries, docs, keys = split_pairs(pairs)
    tok = model.tokenizer
    batch = (
        model.tokenize(queries, docs, max_length=max_length)
        if model.pairwise
        else model.tokenize(docs, max_length=max_length)
    )
    shape = tuple(batch.input_ids.shape)
    tokens = {name: torch.zeros(shape, dtype=torch.float64) for name in TOKEN_FEATURES}
    mask = torch.zeros(shape, dtype=torch.bool)
    per_pair: dict[str, list[float]] = {name: [] for name in PAIR_FEATURES}
    for i, (q, d) in enumerate(zip(queries, docs, strict=True)):
        ids, words = token_words(tok, d)
        positions = (batch.groups[i] == DOC).nonzero().flatten().tolist()
        got = batch.input_ids[i, positions].tolist()
        if got != ids[: len(got)]:
            raise InputError(
                f"pair {i}: the model's document tokens are not the document's own tokenization; IR features "
                "need a model whose input holds the document's tokens unchanged"
            )
        counts = Counter(_WORD.findall(d.lower()))
        length = sum(counts.values())
        terms = set(query_terms(q))
        q_ids = set(tok(q, add_special_tokens=False, verbose=False)["input_ids"])
        for p, t, w in zip(positions, got, words, strict=False):
            tokens["match"][i, p] = float(t in q_ids)
            if w is None:
                continue
            mask[i, p] = True
            is_q = float(w in terms)
            tf = counts[w]
            weight = stats.bm25(w, tf, length)
            for name, v in (
                ("query_term", is_q),
                ("tf", tf),
                ("idf", stats.idf_of(w)),
                ("bm25", weight),
                ("query_tf", tf * is_q),
                ("query_bm25", weight * is_q),
            ):
                tokens[name][i, p] = v
        per_pair["doc_length"].append(float(length))
        per_pair["matched_terms"].append(float(sum(counts[t] > 0 for t in terms)))
        per_pair["query_tf"].append(float(sum(counts[t] for t in terms)))
        per_pair["bm25"].append(sum(stats.bm25(t, counts[t], length) for t in terms))
    pair_t = {k: torch.tensor(v, dtype=torch.float64) for k, v in per_pair.items()}
    return IRFeatures(tokens, mask, pair_t, batch, keys)
