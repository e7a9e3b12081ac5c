"""Warnings point at the user's line and say each thing once: DataWarning's stacklevel, one
TruncationWarning per attribute_collection call with the counts of all its batches."""

from __future__ import annotations

import warnings

import pytest

from mechir_nig import TruncationWarning, attribute_collection
from mechir_nig.data import DataWarning, JudgedPair
from mechir_nig.evaluation import evaluate
from mechir_nig.models.tokenization import truncation_summary


def test_data_warning_names_the_callers_line():
    with pytest.warns(DataWarning) as caught:
        evaluate({"q1": {"d1": 1.0}}, {"q1": {"d1": 3, "d2": 0}}, measures=["nDCG@10"])
    assert [w.filename for w in caught] == [__file__]


def test_truncation_warned_once_per_attribute_collection_call(tiny_ce):
    long_doc = " ".join(["neurons"] * 200)
    pairs = [
        JudgedPair(f"q{i}", f"d{i}", "what is a neuron", long_doc if i % 2 == 0 else "a cell", 1, "relevant")
        for i in range(6)
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribute_collection(tiny_ce, pairs, n_steps=2, batch_size=2, progress=False)
    trunc = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(trunc) == 1  # 3 batches, one warning
    assert str(trunc[0].message).startswith("3 of 6 documents over 3 batches longer than max_length=")
    assert trunc[0].filename == __file__


def test_truncation_summary_nests_and_is_silent_without_truncation(tiny_ce):
    with warnings.catch_warnings(record=True) as caught, truncation_summary():
        warnings.simplefilter("always")
        with truncation_summary():
            tiny_ce.tokenize(["what is a neuron"], ["a cell"])
    assert [w for w in caught if issubclass(w.category, TruncationWarning)] == []
