"""Re-ranking with a model and ir_measures evaluation checked against hand-computed figures."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from ir_measures import Qrel, ScoredDoc

from mechir_nig.data import Collection, DataWarning, bm25_candidates, load_collection
from mechir_nig.errors import DataError, InputError
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
    with pytest.raises(InputError, match="batch_size must be an int >= 1"):
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


# --------------------------------------------------------------------------------------------------
# rerank with a bi-encoder: every distinct text encoded once
# --------------------------------------------------------------------------------------------------


class BagOfWordsBiEncoder:
    """A stand-in for HookedBiEncoder (pairwise False): embeddings are word counts over a fixed vocabulary."""

    pairwise = False

    def __init__(self, vocabulary: list[str]) -> None:
        self.vocabulary = {w: i for i, w in enumerate(vocabulary)}
        self.encoded: list[str] = []

    def encode(self, texts: list[str], *, batch_size: int = 32) -> torch.Tensor:
        self.encoded.extend(texts)
        out = torch.zeros(len(texts), len(self.vocabulary), dtype=torch.float64)
        for row, text in enumerate(texts):
            for w in re.findall(r"\w+", text.lower()):
                if w in self.vocabulary:
                    out[row, self.vocabulary[w]] += 1
        return out

    def similarity_fn(self, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return (q * d).sum(-1)

    def score(self, queries: list[str], docs: list[str], *, batch_size: int = 32) -> torch.Tensor:
        return self.similarity_fn(self.encode(queries), self.encode(docs))


def repeated_candidates(col):
    """Top-20 BM25 candidates: the 60 documents recur across the 15 queries."""
    candidates = bm25_candidates(col, k=20)
    pairs = [(q, d) for q, docs in candidates.items() for d in docs]
    assert len({d for _, d in pairs}) < len(pairs)  # documents repeat across queries
    return candidates, pairs


def test_rerank_bi_encoder_encodes_each_distinct_text_once():
    col = load_collection("embedded")
    candidates, pairs = repeated_candidates(col)
    vocabulary = sorted({w for t in [*col.docs.values(), *col.queries.values()] for w in words(t)})
    model = BagOfWordsBiEncoder(vocabulary)
    run = rerank(model, col, candidates, batch_size=4)
    distinct = {col.queries[q] for q, _ in pairs} | {col.docs[d] for _, d in pairs}
    assert sorted(model.encoded) == sorted(distinct)  # each distinct text exactly once
    expected = model.score([col.queries[q] for q, _ in pairs], [col.docs[d] for _, d in pairs])
    for (qid, did), value in zip(pairs, expected.tolist(), strict=True):
        assert run[qid][did] == pytest.approx(value, abs=1e-6)
    assert all(list(docs.values()) == sorted(docs.values(), reverse=True) for docs in run.values())


@pytest.mark.slow
def test_rerank_real_bi_encoder_matches_score(minilm_be, monkeypatch):
    col = load_collection("embedded")
    candidates, pairs = repeated_candidates(col)
    queries = [col.queries[q] for q, _ in pairs]
    docs = [col.docs[d] for _, d in pairs]
    expected = minilm_be.score(queries, docs, batch_size=8)
    assert minilm_be.pairwise is False
    encoded: list[str] = []
    encode = minilm_be.encode

    def counting(texts, **kwargs):
        encoded.extend(texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(minilm_be, "encode", counting)
    run = rerank(minilm_be, col, candidates, batch_size=8)
    assert len(encoded) == len(set(encoded)) == len(set(queries)) + len(set(docs))
    assert set(encoded) == set(queries) | set(docs)
    got = torch.tensor([run[q][d] for q, d in pairs], dtype=torch.float64)
    assert torch.allclose(got, expected.to(torch.float64), rtol=0, atol=1e-6)


def test_rerank_cross_encoder_path_is_kept_for_pairwise_models():
    col = load_collection("embedded")

    class Pairwise(OverlapModel):
        pairwise = True

        def encode(self, texts, **kwargs):  # pragma: no cover - must not be used
            raise AssertionError("a pairwise model is scored by pairs")

        def similarity_fn(self, q, d):  # pragma: no cover
            raise AssertionError("a pairwise model is scored by pairs")

    model = Pairwise()
    run = rerank(model, col, {"q02": {"d05": 0.0, "d01": 0.0}})
    assert run["q02"]["d05"] == 3.0 and model.calls == [(2, 32)]

    class BadEncoder(BagOfWordsBiEncoder):
        def encode(self, texts, *, batch_size=32):
            return super().encode(texts)[:1]

    with pytest.raises(InputError, match=r"model.encode returned shape \(1, 2\) for 2 texts"):
        rerank(BadEncoder(["moon", "phases"]), col, {"q02": {"d05": 0.0, "d01": 0.0}})


# --------------------------------------------------------------------------------------------------
# Relevance grades: grade maps and thresholds
# --------------------------------------------------------------------------------------------------

# Scale: 1 relevant (best), 0 non-relevant, -1 unjudged.
SCALE_QRELS = {"q1": {"a": 1, "b": 0, "c": -1, "d": 1}, "q2": {"x": -1, "y": 1, "z": 0}}
# q1 ranks c, b, a, e (d, relevant, is not retrieved); q2 ranks x, z, y.
SCALE_RUN = {"q1": {"c": 4.0, "b": 3.0, "a": 2.0, "e": 1.0}, "q2": {"x": 3.0, "z": 2.0, "y": 1.0}}
SCALE_MAP = {1: 1, 0: 0, -1: None}


def test_evaluate_scale_with_minus_one_unjudged_once_mapped():
    log2 = math.log2
    expected = {
        # q1: first relevant (a) at rank 3; q2: first relevant (y) at rank 3
        "RR@10": (1 / 3 + 1 / 3) / 2,
        # q1: DCG a at rank 3 = 1/log2(4); ideal a, d at ranks 1, 2. q2: y at rank 3; ideal y at rank 1.
        "nDCG@10": ((1 / log2(4)) / (1 / log2(2) + 1 / log2(3)) + (1 / log2(4)) / 1) / 2,
        # retrieved documents that are judged: q1 b, a of 4 (c is unjudged); q2 z, y of 3 (x is unjudged)
        "Judged@10": (2 / 4 + 2 / 3) / 2,
    }
    measures = list(expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a mapped scale draws no warning
        mapped = evaluate(SCALE_RUN, SCALE_QRELS, measures, grade_map=SCALE_MAP, per_query=True)
    assert mapped == pytest.approx(expected)
    assert mapped.per_query["q2"]["RR@10"] == pytest.approx(1 / 3)
    qrels = [Qrel(q, d, r) for q, docs in SCALE_QRELS.items() for d, r in docs.items()]
    col = Collection(
        docs=dict.fromkeys("abcdexyz", "text"),
        queries={"q1": "one", "q2": "two"},
        qrels=qrels,
        grade_map=SCALE_MAP,
    )
    assert evaluate(SCALE_RUN, col, measures) == pytest.approx(expected)
    # Unmapped, -1 reads as a judged non-relevant grade: Judged@10 counts c and x, and a warning says
    # how to map the scale.
    with pytest.warns(
        DataWarning, match=r"grades \[-1, 0, 1\] are not binary.*grade_map=\{1: 1, 0: 0, -1: None\}"
    ):
        raw = evaluate(SCALE_RUN, SCALE_QRELS, measures)
    assert raw["Judged@10"] == pytest.approx((3 / 4 + 3 / 3) / 2)


def test_evaluate_graded_scale_with_one_as_best_and_a_threshold():
    # 1 highly relevant (best), 0 partially relevant, -1 non-relevant, -2 unjudged
    qrels = {"q1": {"a": 1, "b": 0, "c": -2, "d": -1}}
    run = {"q1": {"c": 4.0, "b": 3.0, "a": 2.0, "e": 1.0}}
    grade_map = {1: 2, 0: 1, -1: 0, -2: None}
    log2 = math.log2
    ndcg = (1 / log2(3) + 2 / log2(4)) / (2 / log2(2) + 1 / log2(3))  # b (1) at rank 2, a (2) at rank 3
    result = evaluate(run, qrels, ["nDCG@10", "RR@10"], grade_map=grade_map)
    assert result == pytest.approx({"nDCG@10": ndcg, "RR@10": 1 / 2})  # b is relevant at threshold 1
    strict = evaluate(
        run, qrels, ["nDCG@10", "RR@10", "P(rel=1)@2"], grade_map=grade_map, relevance_threshold=2
    )
    # Binary measures are asked at rel=2 (and named so); nDCG and an explicit rel= are untouched
    # (ir_measures names P(rel=1)@2 "P@2": rel=1 is its default).
    assert strict == pytest.approx({"nDCG@10": ndcg, "RR(rel=2)@10": 1 / 3, "P@2": 1 / 2})
    with pytest.warns(DataWarning, match="not binary"):
        unmapped = evaluate(run, qrels, ["nDCG@10"])
    assert unmapped["nDCG@10"] == pytest.approx((1 / log2(4)) / 1)  # only a has a positive gain


def test_evaluate_threshold_from_the_collection_and_errors():
    qrels = [Qrel(q, d, r) for q, docs in QRELS.items() for d, r in docs.items()]
    col = Collection(
        docs=dict.fromkeys("abcdxyz", "text"),
        queries={"q1": "one", "q2": "two"},
        qrels=qrels,
        relevance_threshold=2,
    )
    # Only c (grade 2, q1) is relevant at threshold 2, and it was not retrieved.
    assert evaluate(RUN, col, ["RR@10", "nDCG@10"]) == pytest.approx(
        {"RR(rel=2)@10": 0.0, "nDCG@10": evaluate(RUN, QRELS, "nDCG@10", relevance_threshold=1)["nDCG@10"]}
    )
    assert evaluate(RUN, col, ["RR@10"], relevance_threshold=1) == {"RR@10": 0.75}  # the argument wins
    mapped = Collection(
        docs=dict.fromkeys("abcdxyz", "text"),
        queries={"q1": "one", "q2": "two"},
        qrels=qrels,
        grade_map={0: 0, 1: 1, 2: 1},
    )
    assert mapped.qrels_dict()["q1"] == {"a": 1, "b": 0, "c": 1}
    with pytest.raises(InputError, match="its qrels are mapped already"):
        evaluate(RUN, mapped, grade_map={0: 0, 1: 1})
    with pytest.raises(DataError, match=r"grades 2 \(1 judgements\) are not in grade_map"):
        evaluate(RUN, QRELS, grade_map={0: 0, 1: 1})
    with pytest.raises(InputError, match="relevance_threshold must be an int >= 1"):
        evaluate(RUN, QRELS, relevance_threshold=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(RUN, QRELS, ["RR@10"], relevance_threshold=1)  # a stated scale: no warning
