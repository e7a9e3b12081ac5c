"""Relevance grades: grade maps, relevance thresholds and the warning for an unstated scale."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from ir_measures import Qrel

from mechir_nig.data import Collection, DataWarning, judged_pairs, load_collection
from mechir_nig.errors import DataError, InputError


def files(tmp_path: Path, qrels: str) -> dict[str, Path]:
    docs = tmp_path / "docs.tsv"
    docs.write_text("a\talpha text\nb\tbeta text\nc\tgamma text\nd\tdelta text\n")
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\talpha\nq2\tbeta\n")
    path = tmp_path / "qrels.txt"
    path.write_text(qrels)
    return {"docs": docs, "queries": queries, "qrels": path}


# Scale: 1 relevant (best), 0 non-relevant, -1 unjudged.
MINUS_ONE_UNJUDGED = "q1 0 a 1\nq1 0 b 0\nq1 0 c -1\nq2 0 b 1\nq2 0 d -1\n"
TREC_DL = "q1 0 a 3\nq1 0 b 2\nq1 0 c 1\nq1 0 d 0\nq2 0 b 1\nq2 0 a 0\n"


def test_grade_map_applied_on_loading(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stated scale draws no warning
        col = load_collection(**files(tmp_path, MINUS_ONE_UNJUDGED), grade_map={1: 1, 0: 0, -1: None})
    assert col.qrels_dict() == {"q1": {"a": 1, "b": 0}, "q2": {"b": 1}}
    assert col.qrels[0] == Qrel("q1", "a", 1, "0")  # records keep their fields
    assert col.report["qrels_unjudged_dropped"] == 2 and col.report["grades"] == [0, 1]
    assert col.grade_map == {1: 1, 0: 0, -1: None} and col.relevance_threshold == 1
    pairs = judged_pairs(col, candidates={"q1": {"a": 3.0, "b": 2.0, "c": 1.0}}, query_ids=["q1"])
    assert [(p.doc_id, p.label) for p in pairs] == [("a", "relevant"), ("b", "nonrelevant")]


@pytest.mark.parametrize(
    ("qrels", "grades", "fragment"),
    [
        (MINUS_ONE_UNJUDGED, "[-1, 0, 1]", "grade_map={1: 1, 0: 0, -1: None}"),
        (TREC_DL, "[0, 1, 2, 3]", "relevance_threshold=2"),
        ("q1 0 a 2\nq1 0 b 1\n", "[1, 2]", "grade_map={2: 2, 1: 1}"),
    ],
    ids=["negative", "trec-dl", "one-two"],
)
def test_unstated_non_binary_scale_warns_how_to_map_it(tmp_path, qrels, grades, fragment):
    with pytest.warns(DataWarning) as caught:
        col = load_collection(**files(tmp_path, qrels))
    message = " ".join(str(w.message) for w in caught)
    assert f"grades {grades} are not binary" in message and fragment in message, message
    assert "None marks unjudged" in message
    assert col.relevance_threshold == 1  # unchanged behaviour: grade >= 1 is relevant
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_collection(**files(tmp_path, qrels), relevance_threshold=1)  # stating the scale silences it
        load_collection(**files(tmp_path, "q1 0 a 1\nq1 0 b 0\n"))  # binary: nothing to state


def test_relevance_threshold_in_collection_and_judged_pairs(tmp_path):
    col = load_collection(**files(tmp_path, TREC_DL), relevance_threshold=2)
    assert col.relevance_threshold == 2
    assert col.report["queries_without_relevant"] == 1  # q2's best grade is 1
    with pytest.warns(DataWarning, match=r"1 of 2 queries have no relevant pair \(e.g. \['q2'\]\)"):
        pairs = judged_pairs(col)
    assert [(p.query_id, p.doc_id, p.label) for p in pairs] == [
        ("q1", "a", "relevant"),
        ("q1", "b", "relevant"),
        ("q1", "c", "nonrelevant"),
        ("q1", "d", "nonrelevant"),
        ("q2", "b", "nonrelevant"),
        ("q2", "a", "nonrelevant"),
    ]
    assert pairs.report["relevance_threshold"] == 2
    # The argument overrides the collection's threshold.
    strict = judged_pairs(col, relevance_threshold=3, query_ids=["q1"])
    assert [p.doc_id for p in strict if p.label == "relevant"] == ["a"]
    default = judged_pairs(load_collection("embedded"), max_nonrelevant_per_query=0)
    assert default.report["relevance_threshold"] == 1


def test_grade_map_errors(tmp_path):
    from jaxtyping import TypeCheckError  # raised instead when the jaxtyping import hook runs

    paths = files(tmp_path, MINUS_ONE_UNJUDGED)
    with pytest.raises(
        DataError, match=r"grades -1 \(1 judgements\), 0 \(1 judgements\) are not in grade_map"
    ):
        Collection(
            docs={"a": "x"},
            queries={"q1": "y"},
            qrels=[Qrel("q1", "a", 1), Qrel("q1", "b", 0), Qrel("q1", "c", -1)],
            grade_map={1: 1},
        )
    with pytest.raises(DataError, match=r"-1 \(2 judgements\) are not in grade_map .*None marks unjudged"):
        load_collection(**paths, grade_map={1: 1, 0: 0})
    with pytest.raises(InputError, match="grade_map must be a non-empty dict"):
        load_collection(**paths, grade_map={})
    with pytest.raises((InputError, TypeCheckError), match="grade_map"):
        load_collection(**paths, grade_map={"1": 1})
    with pytest.raises((InputError, TypeCheckError), match="grade_map"):
        load_collection(**paths, grade_map={1: "relevant"})
    with pytest.raises(InputError, match="relevance_threshold must be an int >= 1"):
        load_collection(**paths, relevance_threshold=0)
    with pytest.raises(InputError, match="relevance_threshold must be an int >= 1"):
        judged_pairs(load_collection("embedded"), relevance_threshold=-1)
