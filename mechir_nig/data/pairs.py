"""Judged (query, document) pairs labelled relevant or non-relevant, for attribution by label.

NIG statistics are aggregated per label: relevant pairs (grade ``>= relevance_threshold`` in the qrels,
the collection's threshold by default, 1 unless stated) against non-relevant ones. Non-relevant pairs
come from judgements below the threshold and, optionally, from first-stage
candidates that were not judged relevant (many collections, Vaswani among them, judge only relevant
documents). :func:`judged_pairs` samples both with per-query caps, seeded per query so that one query's
choice never depends on the others, and reports what it could not use. Document texts are fetched in
one :meth:`~mechir_nig.data.Collection.get_docs` call for exactly the documents the selected queries
could use (their judged documents, plus their candidates when unjudged candidates are sampled), so a
lazily loaded ir_datasets corpus is never read in full.

Example:
    >>> from mechir_nig.data import judged_pairs, load_collection
    >>> pairs = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, seed=0)
    >>> sorted({p.label for p in pairs})
    ['nonrelevant', 'relevant']
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

from mechir_nig._validate import check_int
from mechir_nig._warn import caller_stacklevel
from mechir_nig.data.collection import Collection, check_relevance_threshold, select_query_ids
from mechir_nig.errors import DataWarning, InputError

__all__ = ["JudgedPair", "JudgedPairs", "judged_pairs"]

RELEVANT: Literal["relevant"] = "relevant"
NONRELEVANT: Literal["nonrelevant"] = "nonrelevant"


class JudgedPair(NamedTuple):
    """One labelled (query, document) pair.

    Attributes:
        query_id, doc_id: ids in the collection.
        query, doc: their texts.
        relevance: the qrels grade (after the collection's ``grade_map``), or ``None`` for an unjudged
            candidate taken as non-relevant.
        label: ``"relevant"`` (``relevance >= relevance_threshold``) or ``"nonrelevant"``.

    Example:
        >>> p = JudgedPair("q1", "d7", "what is a neuron", "A neuron is a cell.", 1, "relevant")
        >>> p.label, p.relevance
        ('relevant', 1)
    """

    query_id: str
    doc_id: str
    query: str
    doc: str
    relevance: int | None
    label: Literal["relevant", "nonrelevant"]


class JudgedPairs(list):
    """A ``list`` of :class:`JudgedPair` with a ``report`` dict of what was selected and skipped.

    ``report`` keys: ``queries`` (queries considered), ``relevant`` / ``nonrelevant`` (pairs kept),
    ``queries_without_relevant`` / ``queries_without_nonrelevant`` (queries that yielded no pair of that
    label available, before any cap; their other pairs are kept) with the ids under ``..._ids``,
    ``qrels_unknown_skipped`` (judgements of the selected queries naming a document missing from the
    collection), ``qrels_unknown_queries_skipped`` (judgements naming a query missing from the
    collection, which no pair can use), ``candidates_unknown_skipped`` (with
    ``sample_nonrelevant_from_candidates``: unjudged candidates of the selected queries naming a
    document missing from the collection), ``candidates_unknown_queries`` (queries of ``candidates``
    missing from the collection) and ``relevance_threshold`` (the lowest grade taken as relevant).
    Nothing is dropped without being counted here or in ``Collection.report``.

    Example:
        >>> from mechir_nig.data import load_collection
        >>> pairs = judged_pairs(
        ...     load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1
        ... )
        >>> len(pairs), pairs.report["relevant"], pairs.report["nonrelevant"]
        (30, 15, 15)
        >>> pairs[0].query_id, pairs[0].label
        ('q01', 'relevant')
        >>> scores = ce.score(pairs.queries(), pairs.docs())  # [n] = [30]
    """

    report: dict[str, Any]

    def __init__(self, pairs: Iterable[JudgedPair] = (), report: dict[str, Any] | None = None) -> None:
        super().__init__(pairs)
        self.report = dict(report or {})

    def queries(self) -> list[str]:
        """Texts of the pairs' queries, in order (for ``model.score(pairs.queries(), pairs.docs())``)."""
        return [p.query for p in self]

    def docs(self) -> list[str]:
        """Texts of the pairs' documents, in order."""
        return [p.doc for p in self]


def _check_cap(name: str, value: int | None) -> None:
    check_int(value, name, minimum=0, allow_none=True, hint="None: no cap")


def _sample(rng: random.Random, items: list[str], cap: int | None) -> list[str]:
    """Up to ``cap`` items drawn without replacement, returned in their original order."""
    if cap is None or len(items) <= cap:
        return items
    keep = set(rng.sample(range(len(items)), cap))
    return [x for i, x in enumerate(items) if i in keep]


def judged_pairs(
    collection: Collection,
    *,
    max_relevant_per_query: int | None = None,
    max_nonrelevant_per_query: int | None = None,
    candidates: Mapping[str, Mapping[str, float]] | None = None,
    sample_nonrelevant_from_candidates: bool = False,
    query_ids: Iterable[str] | None = None,
    seed: int = 0,
    relevance_threshold: int | None = None,
) -> JudgedPairs:
    """Labelled (query, document) pairs from a collection's qrels, capped and sampled per query.

    Relevant pairs are the judgements with ``relevance >= relevance_threshold``. The non-relevant pool of
    a query is its judgements below the threshold; with ``candidates`` it is restricted to the documents the first
    stage retrieved for that query (hard negatives), and with ``sample_nonrelevant_from_candidates`` the
    unjudged candidates join the pool (relevance ``None``), i.e. the pool becomes every candidate not
    judged relevant. Caps draw uniformly without replacement with a generator seeded by ``(seed,
    query_id)``: the same arguments always give the same pairs, and adding a query changes no other.
    Judgements naming a document or query absent from the collection are skipped and counted.

    Args:
        collection: the collection (texts and qrels).
        max_relevant_per_query: at most this many relevant pairs per query (``None``: all).
        max_nonrelevant_per_query: at most this many non-relevant pairs per query (``None``: all).
        candidates: a first-stage run ``{query_id: {doc_id: score}}`` (e.g. from ``bm25_candidates``).
        sample_nonrelevant_from_candidates: also take unjudged candidates as non-relevant (needs
            ``candidates``).
        query_ids: restrict to these queries (default: every query of the collection, in its order).
        seed: seed of the sampling.
        relevance_threshold: the lowest relevant grade (integer >= 1); default: the collection's
            (``load_collection(..., relevance_threshold=...)``, 1 unless stated).

    Returns:
        A :class:`JudgedPairs` list, per query the relevant pairs (in qrels order) then the non-relevant
        ones (judged in qrels order, then unjudged in candidate rank order), with a ``report``. Queries
        left without a relevant (or non-relevant) pair are counted there and announced with a
        :class:`~mechir_nig.data.DataWarning`; their other pairs are kept.

    Raises:
        InputError: for negative or non-integer caps, unknown ``query_ids``, a bad
            ``relevance_threshold``, or ``sample_nonrelevant_from_candidates`` without ``candidates``.

    Example:
        >>> from mechir_nig.data import bm25_candidates, load_collection
        >>> col = load_collection("embedded")
        >>> run = bm25_candidates(col, k=10)
        >>> pairs = judged_pairs(col, max_nonrelevant_per_query=2, candidates=run,
        ...                      sample_nonrelevant_from_candidates=True)
    """
    if not isinstance(collection, Collection):
        raise InputError(
            f"collection must be a Collection (see load_collection), got {type(collection).__name__}"
        )
    _check_cap("max_relevant_per_query", max_relevant_per_query)
    _check_cap("max_nonrelevant_per_query", max_nonrelevant_per_query)
    if sample_nonrelevant_from_candidates and candidates is None:
        raise InputError(
            "sample_nonrelevant_from_candidates=True needs candidates=: pass a first-stage run such as "
            "bm25_candidates(collection)"
        )
    if candidates is not None and not isinstance(candidates, Mapping):
        raise InputError("candidates must be a run dict {query_id: {doc_id: score}}")
    check_int(seed, "seed")
    threshold: int = check_relevance_threshold(relevance_threshold) or collection.relevance_threshold or 1
    ids = select_query_ids(collection.queries, query_ids, f"collection {collection.name!r}")

    judged = collection.qrels_dict()
    needed = [did for qid in ids for did in judged.get(qid, {})]
    if candidates is not None and sample_nonrelevant_from_candidates:
        needed += [did for qid in ids for did in candidates.get(qid, {})]
    docs = collection.get_docs(needed)  # one lookup: a lazy docstore is asked for these ids only
    pairs = JudgedPairs()
    without_rel: list[str] = []
    without_nonrel: list[str] = []
    unknown_skipped = candidates_unknown = 0
    for qid in ids:
        judgements = judged.get(qid, {})
        unknown_skipped += sum(1 for did in judgements if did not in docs)
        relevant = [did for did, rel in judgements.items() if rel >= threshold and did in docs]
        pool = [did for did, rel in judgements.items() if rel < threshold and did in docs]
        if candidates is not None:
            ranked = candidates.get(qid, {})
            pool = [did for did in pool if did in ranked]
            if sample_nonrelevant_from_candidates:
                order = sorted(ranked, key=lambda d: -ranked[d])  # stable: ties keep run order
                unjudged = [did for did in order if did not in judgements]
                candidates_unknown += sum(1 for did in unjudged if did not in docs)
                pool += [did for did in unjudged if did in docs]
        rng = random.Random(f"{seed}\x00{qid}")
        chosen_rel = _sample(rng, relevant, max_relevant_per_query)
        chosen_non = _sample(rng, pool, max_nonrelevant_per_query)
        if not relevant and max_relevant_per_query != 0:  # a cap of 0 asked for none: nothing missing
            without_rel.append(qid)
        if not pool and max_nonrelevant_per_query != 0:
            without_nonrel.append(qid)
        query = collection.queries[qid]
        pairs.extend(JudgedPair(qid, did, query, docs[did], judgements[did], RELEVANT) for did in chosen_rel)
        pairs.extend(
            JudgedPair(qid, did, query, docs[did], judgements.get(did), NONRELEVANT) for did in chosen_non
        )
    pairs.report = {
        "queries": len(ids),
        "relevant": sum(1 for p in pairs if p.label == RELEVANT),
        "nonrelevant": sum(1 for p in pairs if p.label == NONRELEVANT),
        "queries_without_relevant": len(without_rel),
        "queries_without_relevant_ids": without_rel,
        "queries_without_nonrelevant": len(without_nonrel),
        "queries_without_nonrelevant_ids": without_nonrel,
        "qrels_unknown_skipped": unknown_skipped,
        "qrels_unknown_queries_skipped": sum(
            1 for q in collection.qrels if q.query_id not in collection.queries
        ),
        "candidates_unknown_skipped": candidates_unknown,
        "candidates_unknown_queries": sum(1 for q in candidates or {} if q not in collection.queries),
        "relevance_threshold": threshold,
    }
    missing = [
        f"{len(qs)} of {len(ids)} queries have no {label} pair (e.g. {qs[:3]})"
        for qs, label in ((without_rel, RELEVANT), (without_nonrel, NONRELEVANT))
        if qs
    ]
    if missing:
        hint = (
            ""
            if candidates is not None
            else "; pass candidates= with sample_nonrelevant_from_candidates=True"
        )
        warnings.warn(
            f"judged_pairs on {collection.name!r}: {'; '.join(missing)}; their other pairs are kept and the "
            f"counts are in .report{hint if without_nonrel else ''}",
            DataWarning,
            stacklevel=caller_stacklevel(),
        )
    return pairs
