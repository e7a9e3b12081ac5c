"""BM25 candidates come from one batched bm25s ``retrieve`` call, identical to the per-query search."""

from __future__ import annotations

import numpy as np
import pytest

from mechir_nig.data import BM25Index, Collection, bm25_candidates, load_collection


def per_query_run(index: BM25Index, queries: dict[str, str], k: int) -> dict[str, dict[str, float]]:
    """The implementation before batching: score every document for each query, stable argsort."""
    run = {}
    for qid, text in queries.items():
        scores = index.scores(text)
        order = np.argsort(-scores, kind="stable")[:k]
        run[qid] = {index.doc_ids[i]: float(scores[i]) for i in order if scores[i] > 0}
    return run


def assert_same_run(batched, reference):
    assert list(batched) == list(reference)
    for qid in reference:
        assert list(batched[qid]) == list(reference[qid]), qid  # same documents in the same order
        assert np.allclose(list(batched[qid].values()), list(reference[qid].values()), rtol=0, atol=1e-6), qid


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10, 59, 60, 100])
def test_batched_run_equals_per_query_search_on_embedded(k):
    col = load_collection("embedded")
    index = BM25Index(col)
    batched = index.run(col.queries, k)
    assert_same_run(batched, per_query_run(index, col.queries, k))
    assert_same_run(batched, {qid: index.search(text, k) for qid, text in col.queries.items()})
    assert bm25_candidates(col, k=k) == batched


def test_one_retrieve_call_for_all_queries(monkeypatch):
    col = load_collection("embedded")
    index = BM25Index(col)
    calls = []
    original = index._bm25.retrieve

    def counting(query_tokens, **kwargs):
        calls.append(len(query_tokens))
        return original(query_tokens, **kwargs)

    monkeypatch.setattr(index._bm25, "retrieve", counting)
    index.run(col.queries, 10)
    assert calls == [len(col.queries)]


def test_ties_across_the_cutoff_match_the_stable_order(monkeypatch):
    # d1..d4 are the same text: they tie at ranks 2-5 of "black holes" (after g) and of "stars" (after
    # e); a cut-off inside the tie must keep the lowest document indices, as the stable argsort did.
    docs = {f"d{i}": "black holes form from stars" for i in range(1, 5)}
    docs |= {"e": "stars shine", "f": "rice cooking", "g": "black cats and holes in socks"}
    col = Collection(docs=docs, queries={"q1": "black holes", "q2": "stars", "q3": "the of", "q4": "rice"})
    index = BM25Index(col)
    fallbacks = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda text, k=100: fallbacks.append(text) or search(text, k))
    for k in range(1, 9):
        fallbacks.clear()
        batched = index.run(col.queries, k)
        assert_same_run(batched, per_query_run(index, col.queries, k))
        assert batched["q3"] == {}  # stopwords only
        if k in (2, 3, 4):  # the four tied documents straddle the cut-off for both queries
            assert fallbacks == ["black holes", "stars"], k
        else:
            assert fallbacks == [], k
    assert list(index.run(col.queries, 3)["q1"]) == ["g", "d1", "d2"]
    assert list(index.run(col.queries, 3)["q2"]) == ["e", "d1", "d2"]


@pytest.mark.slow
def test_batched_run_equals_per_query_search_on_vaswani():
    from pathlib import Path

    vaswani = Path(__file__).resolve().parents[2] / "shared" / "data" / "vaswani"
    if not (vaswani / "doc-text.trec").is_file():
        pytest.skip(f"the Vaswani collection is not at {vaswani} (shared data folder absent)")
    col = load_collection(vaswani)
    index = BM25Index(col)
    assert_same_run(index.run(col.queries, 100), per_query_run(index, col.queries, 100))
