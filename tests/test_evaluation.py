"""Re-ranking with a model and ir_measures evaluation checked against hand-computed figures."""

from __future__ import annotations

import math
import re

import pytest
import torch
from ir_measures import Qrel, ScoredDoc

from mechir_nig.data import Collection, DataWarning, bm25_candidates, load_collection
from mechir_nig.errors import InputError
from mechir_nig.evaluation import DEFAULT_MEASURES, EvalResult, evaluate, rerank


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class OverlapModel:
    """A stand-in for HookedCrossEncoder: the score is the number of query words found in the document."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def score(self, queries: list[str], docs: list[str], *, batch_size: int = 32) -> torch.Tensor:
        self.calls.append((len(queries), batch_size))
        return torch.tensor([float(len(words(q) & words(d))) for q, d in zip(queries, docs, strict=True)])


# --------------------------------------------------------------------------------------------------
# rerank
# --------------------------------------------------------------------------------------------------


def test_rerank_scores_every_candidate_with_the_model():
    col = load_collection("embedded")
    candidates = bm25_candidates(col, k=10)
    model = OverlapModel()
    run = rerank(model, col, candidates, batch_size=4)
    assert list(run) == list(candidates)
    for qid, docs in run.items():
        assert set(docs) == set(candidates[qid])
        for did, score in docs.items():
            assert score == len(words(col.queries[qid]) & words(col.docs[did]))
        assert list(docs.values()) == sorted(docs.values(), reverse=True)
    n_pairs = sum(len(d) for d in candidates.values())
    assert sum(n for n, _ in model.calls) == n_pairs
    assert {bs for _, bs in model.calls} == {4}
    assert len(model.calls) == math.ceil(n_pairs / (4 * 16))  # chunks of batch_size * 16 pairs
    assert rerank(OverlapModel(), col, candidates, batch_size=1) == run  # chunking never changes scores
    # q02 "why does the moon have phases" and d05 ("The Moon's phases occur ...") share the, moon, phases.
    assert run["q02"]["d05"] == 3.0


def test_rerank_subset_and_empty_queries():
    col = load_collection("embedded")
    run = rerank(OverlapModel(), col, {"q01": {"d01": 0.0, "d04": 0.0}, "q02": {}}, query_ids=["q02", "q01"])
    assert list(run) == ["q02", "q01"]
    assert run["q02"] == {}
    # q01 "how do mitochondria produce energy in cells": d01 shares "mitochondria" and "in" ("cell's" is
    # not "cells"); d04 shares nothing.
    assert run["q01"] == {"d01": 2.0, "d04": 0.0}


def test_rerank_errors():
    col = load_collection("embedded")
    cands = {"q01": {"d01": 1.0}}
    with pytest.raises(InputError, match="must have a score"):
        rerank(object(), col, cands)
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        rerank(OverlapModel(), col, cands, batch_size=0)
    with pytest.raises(
        InputError, match=r"1 candidate documents are not in collection 'embedded' \(e.g. \['zz'\]\)"
    ):
        rerank(OverlapModel(), col, {"q01": {"d01": 1.0, "zz": 0.5}})
    with pytest.raises(InputError, match="candidate queries are not in collection"):
        rerank(OverlapModel(), col, {"q99": {"d01": 1.0}})
    with pytest.raises(InputError, match=r"query ids are not in candidates \(e.g. \['q02'\]\)"):
        rerank(OverlapModel(), col, cands, query_ids=["q02"])

    class Column(OverlapModel):
        def score(self, queries, docs, *, batch_size=32):
            return super().score(queries, docs, batch_size=batch_size)[:, None]

    with pytest.raises(InputError, match=r"returned shape \(1, 1\) for 1 pairs"):
        rerank(Column(), col, cands)

    class Broken(OverlapModel):
        def score(self, queries, docs, *, batch_size=32):
            return torch.full((len(queries),), float("nan"))

    with pytest.raises(InputError, match="returned nan for query 'q01', document 'd01'"):
        rerank(Broken(), col, cands)


# --------------------------------------------------------------------------------------------------
# evaluate: hand-computed figures
# --------------------------------------------------------------------------------------------------

# q1 judges a (1), b (0), c (2); q2 judges x (1), y (1), z (0).
QRELS = {"q1": {"a": 1, "b": 0, "c": 2}, "q2": {"x": 1, "y": 1, "z": 0}}
# q1 ranks b, a, d (c is not retrieved); q2 ranks x, z, y. No ties.
RUN = {"q1": {"b": 3.0, "a": 2.0, "d": 1.0}, "q2": {"x": 0.9, "z": 0.8, "y": 0.7}}


def hand_computed() -> dict[str, dict[str, float]]:
    log2 = math.log2
    return {
        "q1": {
            # first relevant document (a) at rank 2
            "RR@10": 1 / 2,
            # one relevant document retrieved, divided by the cut-off 10
            "P@10": 1 / 10,
            # DCG: a (gain 1) at rank 2 -> 1/log2(3); ideal: c (2) then a (1) -> 2/log2(2) + 1/log2(3)
            "nDCG@10": (1 / log2(3)) / (2 / log2(2) + 1 / log2(3)),
            # precision 1/2 at a; c (relevant) never retrieved contributes 0; R = 2
            "AP@100": (1 / 2 + 0) / 2,
        },
        "q2": {
            "RR@10": 1 / 1,
            "P@10": 2 / 10,
            # DCG: x at rank 1, y at rank 3 -> 1/log2(2) + 1/log2(4); ideal: x, y at ranks 1, 2
            "nDCG@10": (1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3)),
            # precision 1/1 at x and 2/3 at y; R = 2
            "AP@100": (1 / 1 + 2 / 3) / 2,
        },
    }


def test_evaluate_matches_hand_computed_values():
    expected = hand_computed()
    result = evaluate(RUN, QRELS, per_query=True)
    assert isinstance(result, EvalResult) and list(result) == list(DEFAULT_MEASURES)
    assert result["RR@10"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert result["P@10"] == pytest.approx((0.1 + 0.2) / 2)
    assert result["nDCG@10"] == pytest.approx(
        (0.6309297535714575 / 2.6309297535714575 + 1.5 / 1.6309297535714575) / 2
    )
    assert result["AP@100"] == pytest.approx((0.25 + 5 / 6) / 2)
    for name in DEFAULT_MEASURES:
        assert result[name] == pytest.approx((expected["q1"][name] + expected["q2"][name]) / 2), name
    assert result.per_query.keys() == {"q1", "q2"}
    for qid in ("q1", "q2"):
        assert result.per_query[qid] == pytest.approx(expected[qid]), qid
    assert result.report == {
        "queries": 2,
        "qrels_queries_missing_from_run": 0,
        "run_queries_without_qrels": 0,
    }
    assert evaluate(RUN, QRELS).per_query is None


def test_evaluate_accepts_records_and_collections():
    qrels = [Qrel(q, d, r) for q, docs in QRELS.items() for d, r in docs.items()]
    run = [ScoredDoc(q, d, s) for q, docs in RUN.items() for d, s in docs.items()]
    as_dicts = evaluate(RUN, QRELS, ["nDCG@10", "RR@10"])
    assert evaluate(run, qrels, ["nDCG@10", "RR@10"]) == as_dicts
    col = Collection(docs=dict.fromkeys("abcdxyz", "text"), queries={"q1": "one", "q2": "two"}, qrels=qrels)
    assert evaluate(RUN, col, ["nDCG@10", "RR@10"]) == as_dicts
    import ir_measures

    assert evaluate(RUN, QRELS, ir_measures.RR @ 10) == {"RR@10": 0.75}
    # Graded threshold: only c (grade 2) counts, and it was not retrieved.
    assert evaluate(RUN, QRELS, "P(rel=2)@10", query_ids=["q1"]) == {"P(rel=2)@10": 0.0}


def test_evaluate_missing_and_extra_queries():
    run = {"q1": RUN["q1"], "q9": {"a": 1.0}}
    with pytest.warns(DataWarning, match=r"1 of 2 queries with qrels have no results in the run and score 0"):
        result = evaluate(run, QRELS, ["RR@10"], per_query=True)
    assert result["RR@10"] == pytest.approx((1 / 2 + 0) / 2)  # q2 counts as 0; q9 (no qrels) is ignored
    assert result.per_query == {"q1": {"RR@10": 0.5}, "q2": {"RR@10": 0.0}}
    assert result.report == {
        "queries": 2,
        "qrels_queries_missing_from_run": 1,
        "run_queries_without_qrels": 1,
    }
    subset = evaluate(run, QRELS, ["RR@10"], query_ids=["q1"])
    assert subset == {"RR@10": 0.5} and subset.report["queries"] == 1


def test_evaluate_errors():
    with pytest.raises(InputError, match=r"unknown measure 'ndcg_cut_10'.*such as 'nDCG@10', 'RR@10'"):
        evaluate(RUN, QRELS, ["nDCG@10", "ndcg_cut_10"])
    with pytest.raises(InputError, match="unknown measure 'nDCG@x'"):
        evaluate(RUN, QRELS, "nDCG@x")
    with pytest.raises(InputError, match="measures is empty"):
        evaluate(RUN, QRELS, [])
    with pytest.raises(InputError, match="the run is empty"):
        evaluate({}, QRELS)
    with pytest.raises(InputError, match="qrels are empty"):
        evaluate(RUN, {})
    with pytest.raises(InputError, match="same collection"):
        evaluate({"other": {"a": 1.0}}, QRELS)
    with pytest.raises(InputError, match=r"not in the qrels \(e.g. \['q7'\]\)"):
        evaluate(RUN, QRELS, query_ids=["q7"])
    with pytest.raises(InputError, match="qrels must be"):
        evaluate(RUN, [1, 2, 3])


def test_rerank_then_evaluate_on_the_embedded_collection():
    col = load_collection("embedded")
    candidates = bm25_candidates(col, k=20)
    bm25 = evaluate(candidates, col, per_query=True)
    overlap = evaluate(rerank(OverlapModel(), col, candidates), col)
    for result in (bm25, overlap):
        assert set(result) == set(DEFAULT_MEASURES)
        assert all(0.0 <= v <= 1.0 for v in result.values())
    assert bm25["nDCG@10"] > 0.7  # BM25 is strong on these short, keyword-rich documents
    assert bm25.per_query["q02"]["RR@10"] == 1.0  # d05 (grade 2) is ranked first
