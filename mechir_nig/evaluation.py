"""Re-rank first-stage candidates with a model and measure runs with ir_measures.

:func:`rerank` scores every (query, candidate document) pair with ``model.score(queries, docs,
batch_size=...)`` (``HookedCrossEncoder`` and ``HookedBiEncoder`` both have it; an ablated model is
the same model inside ``model.hooks(...)``) and returns a run ``{query_id: {doc_id: score}}``.
:func:`evaluate` measures a run against qrels through ir_measures (MacAvaney et al., ECIR 2022), with
its measure names (``nDCG@10``, ``RR@10``, ``AP@100``, ``P@10``, ``R@1000``, ``P(rel=2)@10``, ...).

Conventions (those of ir_measures / ``trec_eval -c``): the queries evaluated are those of the qrels;
a query with qrels but no results in the run scores 0 (``EvalResult.report`` counts them and
``query_ids=`` restricts the evaluation to a subset); run queries without qrels are ignored. Gains are
the relevance grades (nDCG uses ``rel / log2(rank + 1)``); a document is relevant for binary measures
when its grade is ``>= 1``.

Example:
    >>> from mechir_nig.data import bm25_candidates, load_collection
    >>> from mechir_nig.evaluation import evaluate
    >>> col = load_collection("embedded")
    >>> result = evaluate(bm25_candidates(col, k=100), col)
    >>> sorted(result)
    ['AP@100', 'P@10', 'RR@10', 'nDCG@10']
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from mechir_nig.data.collections import Collection, DataWarning, Run, _select_query_ids
from mechir_nig.errors import InputError

__all__ = ["DEFAULT_MEASURES", "EvalResult", "evaluate", "rerank"]

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "AP@100", "P@10")
_MEASURE_EXAMPLES = "'nDCG@10', 'RR@10', 'AP@100', 'P@10', 'R@1000', 'P(rel=2)@10', 'Judged@10'"
_CHUNK_BATCHES = 16  # pairs handed to model.score per call = batch_size * _CHUNK_BATCHES


def rerank(
    model: Any,
    collection: Collection,
    candidates: Mapping[str, Mapping[str, float]],
    *,
    batch_size: int = 32,
    query_ids: Iterable[str] | None = None,
    progress: bool = False,
) -> Run:
    """Score first-stage candidates with a model: a new run over the same (query, document) pairs.

    Pairs are handed to ``model.score`` in chunks of ``batch_size * 16`` (the model batches and sorts by
    length inside a chunk), under ``torch.no_grad``; chunking never changes the scores.

    Args:
        model: any object with ``score(queries: list[str], docs: list[str], batch_size=int)`` returning one
            score per pair (a tensor or sequence of length ``n``), e.g. ``HookedCrossEncoder``.
        collection: supplies the query and document texts.
        candidates: the run to re-rank, ``{query_id: {doc_id: score}}`` (scores are ignored).
        batch_size: passed to ``model.score``.
        query_ids: re-rank only these queries of ``candidates`` (default: all, in its order).
        progress: show a tqdm progress bar over pairs.

    Returns:
        The run ``{query_id: {doc_id: model score}}``, best first within each query; every selected query
        is a key (empty when it had no candidates).

    Raises:
        InputError: for a model without ``score``, ``batch_size < 1``, query ids not in ``candidates`` or
            not in the collection, candidate documents not in the collection, or a model returning the
            wrong number of scores or non-finite scores.

    Example:
        >>> from mechir_nig import HookedCrossEncoder  # doctest: +SKIP
        >>> ce = HookedCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> run = rerank(ce, col, bm25_candidates(col, k=100), batch_size=64)  # doctest: +SKIP
        >>> evaluate(run, col)["nDCG@10"]  # doctest: +SKIP
    """
    import torch
    from tqdm.auto import tqdm

    if not callable(getattr(model, "score", None)):
        raise InputError(
            f"model must have a score(queries, docs, batch_size=...) method, got {type(model).__name__}"
        )
    if not isinstance(collection, Collection):
        raise InputError(
            f"collection must be a Collection (see load_collection), got {type(collection).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(candidates, Mapping):
        raise InputError("candidates must be a run dict {query_id: {doc_id: score}} (e.g. bm25_candidates)")
    ids = _select_query_ids(candidates, query_ids, "candidates")
    unknown_q = [q for q in ids if q not in collection.queries]
    if unknown_q:
        raise InputError(
            f"{len(unknown_q)} candidate queries are not in collection {collection.name!r} (e.g. {unknown_q[:5]}): "
            "build candidates from the same collection"
        )
    pairs = [(qid, did) for qid in ids for did in candidates[qid]]
    unknown_d = sorted({did for _, did in pairs if did not in collection.docs})
    if unknown_d:
        raise InputError(
            f"{len(unknown_d)} candidate documents are not in collection {collection.name!r} (e.g. "
            f"{unknown_d[:5]}): build candidates from the same collection"
        )

    chunk = batch_size * _CHUNK_BATCHES
    scores: list[float] = []
    bar = tqdm(total=len(pairs), desc="rerank", unit="pair", disable=not progress)
    with torch.no_grad(), bar:
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            out = model.score(
                [collection.queries[q] for q, _ in part],
                [collection.docs[d] for _, d in part],
                batch_size=batch_size,
            )
            values = torch.as_tensor(out).detach().to("cpu", torch.float64)
            if values.shape != (len(part),):
                raise InputError(
                    f"model.score returned shape {tuple(values.shape)} for {len(part)} pairs: it must return "
                    "one score per pair"
                )
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                q, d = part[int(bad[0])]
                raise InputError(
                    f"model.score returned {values[int(bad[0])].item()} for query {q!r}, document {d!r} "
                    f"({len(bad)} non-finite scores in this chunk): check the model's inputs and weights"
                )
            scores.extend(values.tolist())
            bar.update(len(part))

    run: Run = {qid: {} for qid in ids}
    for (qid, did), score in zip(pairs, scores, strict=True):
        run[qid][did] = score
    return {qid: dict(sorted(docs.items(), key=lambda kv: -kv[1])) for qid, docs in run.items()}


class EvalResult(dict):
    """``{measure_name: value}`` averaged over queries, with per-query values and a report.

    Attributes:
        per_query: ``{query_id: {measure_name: value}}`` when ``evaluate(..., per_query=True)``, else
            ``None``.
        report: ``queries`` (queries evaluated: those with qrels), ``qrels_queries_missing_from_run``
            (evaluated queries with no result, scored 0) and ``run_queries_without_qrels`` (ignored).
    """

    per_query: dict[str, dict[str, float]] | None
    report: dict[str, int]

    def __init__(
        self,
        values: Mapping[str, float],
        per_query: dict[str, dict[str, float]] | None = None,
        report: dict[str, int] | None = None,
    ) -> None:
        super().__init__(values)
        self.per_query = per_query
        self.report = dict(report or {})


def _parse_measures(measures: str | Any | Iterable[str | Any]) -> list[Any]:
    import ir_measures
    from ir_measures.measures.base import Measure

    if isinstance(measures, str | Measure):
        measures = [measures]
    parsed: list[Any] = []
    for m in measures:
        if isinstance(m, Measure):
            parsed.append(m)
            continue
        if not isinstance(m, str):
            raise InputError(f"measures must be ir_measures names or Measure objects, got {m!r}")
        try:
            parsed.append(ir_measures.parse_measure(m))
        except Exception as e:
            raise InputError(
                f"unknown measure {m!r} ({type(e).__name__}: {e}): use ir_measures names such as "
                f"{_MEASURE_EXAMPLES}"
            ) from None
    if not parsed:
        raise InputError(f"measures is empty: pass ir_measures names such as {_MEASURE_EXAMPLES}")
    return list(dict.fromkeys(parsed))


def _qrels_dict(qrels: Any) -> dict[str, dict[str, int]]:
    if isinstance(qrels, Collection):
        return qrels.qrels_dict()
    if isinstance(qrels, Mapping):
        return {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    out: dict[str, dict[str, int]] = {}
    try:
        for q in qrels:
            out.setdefault(q.query_id, {})[q.doc_id] = int(q.relevance)
    except (TypeError, AttributeError):
        raise InputError(
            "qrels must be a Collection, a dict {query_id: {doc_id: relevance}} or ir_measures Qrel records"
        ) from None
    return out


def _run_dict(run: Any) -> Run:
    if isinstance(run, Mapping):
        return {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    out: Run = {}
    try:
        for s in run:
            out.setdefault(s.query_id, {})[s.doc_id] = float(s.score)
    except (TypeError, AttributeError):
        raise InputError(
            "run must be a dict {query_id: {doc_id: score}} or ir_measures ScoredDoc records"
        ) from None
    return out


def evaluate(
    run: Mapping[str, Mapping[str, float]] | Iterable[Any],
    qrels: Collection | Mapping[str, Mapping[str, int]] | Iterable[Any],
    measures: Any = DEFAULT_MEASURES,  # a name, an ir_measures Measure, or an iterable of either
    *,
    per_query: bool = False,
    query_ids: Iterable[str] | None = None,
) -> EvalResult:
    """Measure a run against qrels with ir_measures.

    Args:
        run: ``{query_id: {doc_id: score}}`` or ir_measures ``ScoredDoc`` records.
        qrels: a :class:`~mechir_nig.data.Collection` (its qrels), ``{query_id: {doc_id: relevance}}`` or
            ir_measures ``Qrel`` records.
        measures: ir_measures names or ``Measure`` objects (default nDCG@10, RR@10, AP@100, P@10).
        per_query: also compute every measure per query (``EvalResult.per_query``).
        query_ids: evaluate only these queries (default: every query with qrels); they must have qrels.

    Returns:
        An :class:`EvalResult`: ``{measure_name: mean over the evaluated queries}`` with measure names as
        ir_measures writes them (``str(measure)``), plus ``per_query`` and ``report``.

    Raises:
        InputError: for unknown measure names (the message lists valid examples), an empty run or qrels,
            a run sharing no query with the qrels, or ``query_ids`` without qrels.

    Example:
        >>> qrels = {"1": {"a": 1, "b": 0}, "2": {"c": 1}}
        >>> run = {"1": {"b": 2.0, "a": 1.0}, "2": {"c": 5.0}}
        >>> evaluate(run, qrels, ["RR@10", "P@1"])
        {'RR@10': 0.75, 'P@1': 0.5}
    """
    import ir_measures

    parsed = _parse_measures(measures)
    if not isinstance(per_query, bool):
        raise InputError(f"per_query must be True or False, got {per_query!r}")
    qrels_d = _qrels_dict(qrels)
    run_d = _run_dict(run)
    if not qrels_d:
        raise InputError("qrels are empty: evaluate against a collection with judgements")
    if not run_d:
        raise InputError("the run is empty: pass {query_id: {doc_id: score}} with at least one query")
    if query_ids is not None:
        ids = _select_query_ids(qrels_d, query_ids, "the qrels")
        qrels_d = {q: qrels_d[q] for q in ids}
        run_d = {q: run_d[q] for q in ids if q in run_d}
    missing = [q for q in qrels_d if not run_d.get(q)]
    if len(missing) == len(qrels_d):
        raise InputError(
            "no evaluated query has results in the run: check that the run and the qrels come from the same "
            "collection (query ids must match)"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(qrels_d)} queries with qrels have no results in the run and score 0 "
            f"(e.g. {missing[:3]}); pass query_ids= to evaluate a subset",
            DataWarning,
            stacklevel=2,
        )
    report = {
        "queries": len(qrels_d),
        "qrels_queries_missing_from_run": len(missing),
        "run_queries_without_qrels": sum(1 for q in run_d if q not in qrels_d),
    }
    aggregate = ir_measures.calc_aggregate(parsed, qrels_d, run_d)
    values = {str(m): float(aggregate[m]) for m in parsed}
    per_q: dict[str, dict[str, float]] | None = None
    if per_query:
        per_q = {q: {} for q in qrels_d}
        for metric in ir_measures.iter_calc(parsed, qrels_d, run_d):
            per_q.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    return EvalResult(values, per_q, report)
