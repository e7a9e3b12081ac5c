"""Re-rank first-stage candidates with a model and measure runs with ir_measures.

:func:`rerank` scores every (query, candidate document) pair with a model and returns a run
``{query_id: {doc_id: score}}``. A cross-encoder (``model.pairwise`` true, e.g. ``HookedCrossEncoder``)
scores pairs with ``model.score(queries, docs, batch_size=...)``; a bi-encoder (``model.pairwise`` false
with ``encode`` and ``similarity_fn``, e.g. ``HookedBiEncoder``) encodes every distinct query and every
distinct document text **once** per run and scores pairs by the similarity of the embeddings. An
ablated model is the same model inside ``model.hooks(...)``.
:func:`evaluate` measures a run against qrels through ir_measures (MacAvaney et al., ECIR 2022), with
its measure names (``nDCG@10``, ``RR@10``, ``AP@100``, ``P@10``, ``R@1000``, ``P(rel=2)@10``, ...).

Conventions (those of ir_measures / ``trec_eval -c``): the queries evaluated are those of the qrels;
a query with qrels but no results in the run scores 0 (``EvalResult.report`` counts them and
``query_ids=`` restricts the evaluation to a subset); run queries without qrels are ignored. Gains are
the relevance grades (nDCG uses ``rel / log2(rank + 1)``); a document is relevant for binary measures
(RR, AP, P, R, ...) when its grade is ``>= relevance_threshold`` (default 1; a threshold above 1 is
passed to ir_measures as ``rel=``, e.g. ``RR(rel=2)@10``). ``grade_map=`` maps another scale first
(``None`` marks unjudged), e.g. ``{1: 1, 0: 0, -1: None}`` for a scale with -1 for unjudged; non-binary
grades without a stated scale draw a :class:`~mechir_nig.errors.DataWarning`.

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
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mechir_nig._validate import check_bool, check_int
from mechir_nig._warn import caller_stacklevel
from mechir_nig.data.collection import (
    Collection,
    Run,
    check_grade_map,
    check_relevance_threshold,
    map_grades,
    scale_warning,
    select_query_ids,
)
from mechir_nig.errors import DataWarning, InputError

if TYPE_CHECKING:
    from mechir_nig.models.protocol import BiEncoderModel, HookedModel, Scorer

__all__ = ["DEFAULT_MEASURES", "EvalResult", "evaluate", "rerank"]

DEFAULT_MEASURES = ("nDCG@10", "RR@10", "AP@100", "P@10")
_MEASURE_EXAMPLES = "'nDCG@10', 'RR@10', 'AP@100', 'P@10', 'R@1000', 'P(rel=2)@10', 'Judged@10'"
_CHUNK_BATCHES = 16  # pairs handed to model.score per call = batch_size * _CHUNK_BATCHES
_SIMILARITY_CHUNK = 65_536  # pairs whose embeddings are gathered at once for a bi-encoder


def candidate_pairs(
    collection: Any, candidates: Mapping[str, Iterable[str]], query_ids: Iterable[str]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The ``(query id, document id)`` pairs of the candidates of ``query_ids``, in order, and the texts of
    their documents (one ``get_docs`` lookup).

    Raises:
        InputError: a candidate document is not in ``collection``.

    Example:
        >>> from mechir_nig.data import load_collection
        >>> col = load_collection("embedded")
        >>> q = next(iter(col.queries))
        >>> candidate_pairs(col, {q: ["zz"]}, [q])
        Traceback (most recent call last):
        ...
        mechir_nig.errors.InputError: 1 candidate documents are not in collection 'embedded' (e.g. ['zz']): build candidates from the same collection
    """
    pairs = [(q, d) for q in query_ids for d in candidates[q]]
    docs = collection.get_docs(d for _, d in pairs)
    unknown = sorted({d for _, d in pairs if d not in docs})
    if unknown:
        raise InputError(
            f"{len(unknown)} candidate documents are not in collection {getattr(collection, 'name', '')!r} (e.g. "
            f"{unknown[:5]}): build candidates from the same collection"
        )
    return pairs, docs


def _is_bi_encoder(model: object) -> bool:
    """A model that embeds queries and documents apart (``pairwise`` false, ``encode``, ``similarity_fn``)."""
    return (
        getattr(model, "pairwise", True) is False
        and callable(getattr(model, "encode", None))
        and callable(getattr(model, "similarity_fn", None))
    )


def _check_scores(values: Any, pairs: list[tuple[str, str]], what: str) -> Any:
    """``values`` as a float64 CPU tensor of one finite score per pair, else an InputError."""
    import torch

    values = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if values.shape != (len(pairs),):
        raise InputError(
            f"{what} returned shape {tuple(values.shape)} for {len(pairs)} pairs: it must return one score per pair"
        )
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        q, d = pairs[int(bad[0])]
        raise InputError(
            f"{what} returned {values[int(bad[0])].item()} for query {q!r}, document {d!r} "
            f"({len(bad)} non-finite scores in this chunk): check the model's inputs and weights"
        )
    return values


def _score_pairs(
    model: HookedModel | Scorer,
    pairs: list[tuple[str, str]],
    queries: Any,
    docs: Any,
    batch_size: int,
    bar: Any,
) -> list[float]:
    """Cross-encoder scores in chunks of ``batch_size * 16`` pairs (the model sorts by length inside)."""
    chunk = batch_size * _CHUNK_BATCHES
    scores: list[float] = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        out = model.score([queries[q] for q, _ in part], [docs[d] for _, d in part], batch_size=batch_size)
        scores.extend(_check_scores(out, part, "model.score").tolist())
        bar.update(len(part))
    return scores


def _score_embeddings(
    model: BiEncoderModel | Scorer,
    pairs: list[tuple[str, str]],
    queries: Any,
    docs: Any,
    batch_size: int,
    bar: Any,
) -> list[float]:
    """Bi-encoder scores: each distinct query and document text encoded once, pairs scored by similarity
    (per side for a :class:`~mechir_nig.models.protocol.Scorer`, e.g. an ``Ablation``)."""
    import torch

    from mechir_nig.models.protocol import Scorer

    q_texts = list(dict.fromkeys(queries[q] for q, _ in pairs))
    d_texts = list(dict.fromkeys(docs[d] for _, d in pairs))
    q_row = {t: i for i, t in enumerate(q_texts)}
    d_row = {t: i for i, t in enumerate(d_texts)}
    embeddings = []
    # a Scorer (an Ablation) declares the sides it encodes apart
    for texts, side in ((q_texts, "query"), (d_texts, "doc")):
        emb = torch.as_tensor(
            model.encode(texts, side=side, batch_size=batch_size)
            if isinstance(model, Scorer)
            else model.encode(texts, batch_size=batch_size)
        )
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise InputError(
                f"model.encode returned shape {tuple(emb.shape)} for {len(texts)} texts: it must return "
                "one embedding row per text"
            )
        embeddings.append(emb)
        bar.update(len(texts))
    q_emb, d_emb = embeddings
    q_idx = torch.tensor([q_row[queries[q]] for q, _ in pairs], dtype=torch.long)
    d_idx = torch.tensor([d_row[docs[d]] for _, d in pairs], dtype=torch.long)
    scores: list[float] = []
    for start in range(0, len(pairs), _SIMILARITY_CHUNK):
        end = start + _SIMILARITY_CHUNK
        out = model.similarity_fn(q_emb[q_idx[start:end]], d_emb[d_idx[start:end]])
        scores.extend(_check_scores(out, pairs[start:end], "model.similarity_fn").tolist())
    return scores


def rerank(
    model: HookedModel | Scorer,
    collection: Collection,
    candidates: Mapping[str, Mapping[str, float]],
    *,
    batch_size: int = 32,
    query_ids: Iterable[str] | None = None,
    progress: bool = False,
) -> Run:
    """Score first-stage candidates with a model: a new run over the same (query, document) pairs.

    ``model`` may also be an ablation context (``with ablate(model, ...) as ab: rerank(ab, ...)``): a
    bi-encoder then encodes each side through ``ab.encode(..., side=...)``, so only the ablation's
    ``side`` is ablated (e.g. ``side="doc"``: documents ablated, queries clean).

    A cross-encoder (``model.pairwise`` true, or any model with only ``score``) gets the pairs in chunks
    of ``batch_size * 16`` through ``model.score`` (the model batches and sorts by length inside a
    chunk). A bi-encoder (``model.pairwise`` false, with ``encode`` and ``similarity_fn``) encodes every
    distinct query text and every distinct document text of the run once (``model.encode``, length-sorted
    batches of ``batch_size``) and scores each pair with ``model.similarity_fn(q_emb, d_emb)``: the same
    scores as ``model.score(queries, docs)``, with each repeated document encoded once instead of once
    per query. All under ``torch.no_grad``; chunking never changes the scores. Document texts are fetched
    with one :meth:`~mechir_nig.data.Collection.get_docs` call (a lazy docstore sees only the candidates).

    Args:
        model: a ``HookedCrossEncoder``/``HookedBiEncoder`` or any object with
            ``score(queries: list[str], docs: list[str], batch_size=int)`` returning one score per pair.
        collection: supplies the query and document texts.
        candidates: the run to re-rank, ``{query_id: {doc_id: score}}`` (scores are ignored).
        batch_size: texts (bi-encoder) or pairs (cross-encoder) per forward pass.
        query_ids: re-rank only these queries of ``candidates`` (default: all, in its order).
        progress: show a tqdm progress bar (over pairs, or over texts for a bi-encoder).

    Returns:
        The run ``{query_id: {doc_id: model score}}``, best first within each query; every selected query
        is a key (empty when it had no candidates). (Under ``torchrun``,
        ``mechir_nig.experiments.collection.rerank_sharded`` splits the queries over the ranks.)

    Raises:
        InputError: for a model without ``score``, ``batch_size < 1``, query ids not in ``candidates`` or
            not in the collection, candidate documents not in the collection, or a model returning the
            wrong number of scores (or embeddings) or non-finite scores.

    Example:
        >>> from mechir_nig import HookedCrossEncoder  # doctest: +SKIP
        >>> ce = HookedCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> run = rerank(ce, col, bm25_candidates(col, k=10), batch_size=64)
        >>> round(evaluate(run, col)["nDCG@10"], 3)  # a seeded head, not a trained re-ranker
        0.62
    """
    import torch
    from tqdm.auto import tqdm

    bi_encoder = _is_bi_encoder(model)
    if not bi_encoder and not callable(getattr(model, "score", None)):
        raise InputError(
            f"model must have a score(queries, docs, batch_size=...) method, got {type(model).__name__}"
        )
    if not isinstance(collection, Collection):
        raise InputError(
            f"collection must be a Collection (see load_collection), got {type(collection).__name__}"
        )
    check_int(batch_size, "batch_size", minimum=1)
    if not isinstance(candidates, Mapping):
        raise InputError("candidates must be a run dict {query_id: {doc_id: score}} (e.g. bm25_candidates)")
    ids = select_query_ids(candidates, query_ids, "candidates")
    unknown_q = [q for q in ids if q not in collection.queries]
    if unknown_q:
        raise InputError(
            f"{len(unknown_q)} candidate queries are not in collection {collection.name!r} (e.g. {unknown_q[:5]}): "
            "build candidates from the same collection"
        )
    pairs, docs = candidate_pairs(collection, candidates, ids)

    # _is_bi_encoder checked encode and similarity_fn: the model is a BiEncoderModel or a Scorer
    score: Callable[..., list[float]] = _score_embeddings if bi_encoder else _score_pairs
    total = len(pairs)
    if bi_encoder:
        total = len({collection.queries[q] for q, _ in pairs}) + len({docs[d] for _, d in pairs})
    bar = tqdm(total=total, desc="rerank", unit="text" if bi_encoder else "pair", disable=not progress)
    with torch.no_grad(), bar:
        scores = score(model, pairs, collection.queries, docs, batch_size, bar) if pairs else []

    run: Run = {qid: {} for qid in ids}
    for (qid, did), value in zip(pairs, scores, strict=True):
        run[qid][did] = value
    return {qid: dict(sorted(ranked.items(), key=lambda kv: -kv[1])) for qid, ranked in run.items()}


class EvalResult(dict):
    """``{measure_name: value}`` averaged over queries, with per-query values and a report.

    Attributes:
        per_query: ``{query_id: {measure_name: value}}`` when ``evaluate(..., per_query=True)``, else
            ``None``.
        report: ``queries`` (queries evaluated: those with qrels), ``qrels_queries_missing_from_run``
            (evaluated queries with no result, scored 0) and ``run_queries_without_qrels`` (ignored).

    Example:
        >>> result = evaluate({"q": {"a": 1.0}}, {"q": {"a": 1}}, ["RR@10"], per_query=True)
        >>> result["RR@10"], result.per_query, result.report["queries"]
        (1.0, {'q': {'RR@10': 1.0}}, 1)
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
    out: dict[str, dict[str, int]] = {}
    try:
        if isinstance(qrels, Mapping):
            for q, docs in qrels.items():
                out[str(q)] = {str(d): _grade(r) for d, r in docs.items()}
        else:
            for q in qrels:
                out.setdefault(q.query_id, {})[q.doc_id] = _grade(q.relevance)
    except (TypeError, AttributeError, ValueError):
        raise InputError(
            "qrels must be a Collection, a dict {query_id: {doc_id: relevance}} or ir_measures Qrel records, "
            "with integer relevance grades"
        ) from None
    return out


def _grade(value: Any) -> int:
    """An integer grade (``2``, ``2.0``, ``"2"``); ValueError for anything else."""
    grade = int(value)
    if isinstance(value, bool) or grade != float(value):
        raise ValueError(value)
    return grade


def _with_grade_map(
    qrels_d: dict[str, dict[str, int]], grade_map: Mapping[int, int | None]
) -> dict[str, dict[str, int]]:
    triples = [(q, d, g) for q, docs in qrels_d.items() for d, g in docs.items()]
    grades = map_grades([g for _, _, g in triples], grade_map, "the qrels")
    out: dict[str, dict[str, int]] = {}
    for (q, d, _), g in zip(triples, grades, strict=True):
        if g is not None:
            out.setdefault(q, {})[d] = g
    return out


def _at_threshold(measures: list[Any], threshold: int) -> list[Any]:
    """Binary measures (those with a ``rel`` parameter not already set) asked at ``rel=threshold``."""
    if threshold == 1:  # ir_measures' default: nothing to change, names stay as asked
        return measures
    out = []
    for m in measures:
        if "rel" in getattr(m, "SUPPORTED_PARAMS", {}) and "rel" not in m.params:
            m = m(rel=threshold)
        out.append(m)
    return list(dict.fromkeys(out))


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
    grade_map: Mapping[int, int | None] | None = None,
    relevance_threshold: int | None = None,
) -> EvalResult:
    """Measure a run against qrels with ir_measures.

    Grades: the qrels are first mapped by ``grade_map`` (``None`` marks unjudged: the judgement is
    dropped, so e.g. ``Judged@10`` no longer counts it). nDCG uses the (mapped) grades as gains; binary
    measures take grade ``>= relevance_threshold`` as relevant: a threshold above 1 is handed to
    ir_measures as ``rel=`` (``RR@10`` is computed, and named, ``RR(rel=2)@10``). A Collection brings its
    own (already applied) ``grade_map`` and its ``relevance_threshold``. Dict or record qrels with grades
    other than 0 and 1 and neither argument draw a :class:`~mechir_nig.errors.DataWarning`.

    Args:
        run: ``{query_id: {doc_id: score}}`` or ir_measures ``ScoredDoc`` records.
        qrels: a :class:`~mechir_nig.data.Collection` (its qrels), ``{query_id: {doc_id: relevance}}`` or
            ir_measures ``Qrel`` records.
        measures: ir_measures names or ``Measure`` objects (default nDCG@10, RR@10, AP@100, P@10).
        per_query: also compute every measure per query (``EvalResult.per_query``).
        query_ids: evaluate only these queries (default: every query with qrels); they must have qrels.
        grade_map: ``{source grade: grade or None}`` applied to the qrels, e.g. ``{1: 1, 0: 0, -1: None}``.
        relevance_threshold: the lowest relevant grade for binary measures (integer >= 1; default: the
            collection's, else 1).

    Returns:
        An :class:`EvalResult`: ``{measure_name: mean over the evaluated queries}`` with measure names as
        ir_measures writes them (``str(measure)``, ``rel=`` included when a threshold was applied), plus
        ``per_query`` and ``report``.

    Raises:
        InputError: for unknown measure names (the message lists valid examples), an empty run or qrels,
            a run sharing no query with the qrels, ``query_ids`` without qrels, a bad ``grade_map`` or
            ``relevance_threshold``, or a ``grade_map`` for a Collection that already has one.
        DataError: for qrels grades missing from ``grade_map``.

    Example:
        >>> qrels = {"1": {"a": 1, "b": 0}, "2": {"c": 1}}
        >>> run = {"1": {"b": 2.0, "a": 1.0}, "2": {"c": 5.0}}
        >>> evaluate(run, qrels, ["RR@10", "P@1"])
        {'RR@10': 0.75, 'P@1': 0.5}
        >>> scale = {"1": {"a": 1, "b": -1}, "2": {"c": 1}}  # 1 relevant, 0 not, -1 unjudged
        >>> evaluate(run, scale, ["RR@10", "Judged@10"], grade_map={1: 1, 0: 0, -1: None})
        {'RR@10': 0.75, 'Judged@10': 0.75}
    """
    import ir_measures

    parsed = _parse_measures(measures)
    check_bool(per_query, "per_query")
    grade_map = check_grade_map(grade_map)
    threshold = check_relevance_threshold(relevance_threshold)
    qrels_d = _qrels_dict(qrels)
    if isinstance(qrels, Collection):
        if grade_map is not None and qrels.grade_map is not None:
            raise InputError(
                f"collection {qrels.name!r} was loaded with grade_map={qrels.grade_map}: its qrels are mapped "
                "already; pass grade_map to load_collection or to evaluate, not both"
            )
        threshold = threshold or qrels.relevance_threshold
    elif grade_map is None and threshold is None:
        message = scale_warning((g for docs in qrels_d.values() for g in docs.values()), "evaluate")
        if message:
            warnings.warn(message, DataWarning, stacklevel=caller_stacklevel())
    if grade_map is not None:
        qrels_d = _with_grade_map(qrels_d, grade_map)
    parsed = _at_threshold(parsed, threshold or 1)
    run_d = _run_dict(run)
    if not qrels_d:
        raise InputError("qrels are empty: evaluate against a collection with judgements")
    if not run_d:
        raise InputError("the run is empty: pass {query_id: {doc_id: score}} with at least one query")
    if query_ids is not None:
        ids = select_query_ids(qrels_d, query_ids, "the qrels")
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
            stacklevel=caller_stacklevel(),
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
