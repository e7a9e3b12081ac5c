"""The report's neuron-set text from a fixed small results folder (hand-made attribution and pruning
result): the ranking scheme where a study's neurons are listed, "k of n active on the baseline" for every
selected set, the relevant / non-relevant overlap with its hypergeometric p-value next to it, and the
documents that moved most for the query whose ranking changed most."""

from __future__ import annotations

import html
import re

import pytest
import torch

from mechir_nig.attribution.stats import CollectionAttribution
from mechir_nig.experiments.pruning import PruningResult
from mechir_nig.report import FILES, build
from mechir_nig.sets import NeuronSet
from mechir_nig.statistics import overlap_p_value

D = 100  # 2 layers x 100 neurons: the top 1 % sets have 2 neurons


def neurons(pairs):
    return NeuronSet(pairs, n_layers=2, d_mlp=D)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("fixed")
    stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=D)
    for label, top in (("relevant", [(0, 0, 5.0), (1, 3, 4.0)]), ("nonrelevant", [(0, 0, 6.0), (1, 7, 5.0)])):
        g = torch.arange(2 * D, dtype=torch.float64).view(2, D) * 1e-4  # small, distinct
        for layer, n, v in top:
            g[layer, n] = v
        by_group = torch.zeros(1, 2, 4, D, dtype=torch.float64)
        by_group[0, :, 3] = g  # the document group
        stats.update(label, by_group)
    stats.meta.update({"model_name": "fixed-model", "collection": "fixed"})
    stats.save(out / FILES["attribution"])
    mean = torch.zeros(2, D)
    mean[0, 0], mean[1, 3], mean[0, 5] = 0.5, -0.3, 0.05  # (1, 7) and (1, 9): 0
    runs = [
        {
            "condition": "unpruned",
            "mode": "none",
            "fraction": 0.0,
            "seed": 0,
            "n_neurons": 0,
            "nDCG@10": 0.75,
        },
        {
            "condition": "nig_top",
            "mode": "baseline",
            "fraction": 0.01,
            "seed": 0,
            "n_neurons": 2,
            "nDCG@10": 0.5,
        },
        {
            "condition": "random",
            "mode": "baseline",
            "fraction": 0.01,
            "seed": 0,
            "n_neurons": 2,
            "nDCG@10": 0.7,
        },
    ]
    pq = [
        {"q1": {"nDCG@10": 1.0}, "q2": {"nDCG@10": 0.5}},
        {"q1": {"nDCG@10": 0.5}, "q2": {"nDCG@10": 0.5}},
        {"q1": {"nDCG@10": 0.9}, "q2": {"nDCG@10": 0.5}},
    ]
    moved_top = {
        "depth": 10,
        "changed": ["q1", "q2"],
        "docs": {
            "q1": {"up": [["d9", 7, 1]], "down": [["d1", 1, 4]]},  # 6 + 3 ranks: the largest change
            "q2": {"up": [["d4", 2, 1]], "down": [["d2", 1, 2]]},
        },
    }
    result = PruningResult(
        ["nDCG@10"],
        runs,
        pq,
        {
            "nig_top|0.01|0": neurons([(0, 0), (1, 3)]).to_json(),
            "random|0.01|0": neurons([(0, 5), (1, 9)]).to_json(),
        },
        ["q3"],
        ["q1", "q2"],
        {"scheme": "relevant", "model": "fixed-model"},
        {},
        [{"depth": 10, "changed": [], "docs": {}}, moved_top, {"depth": 10, "changed": [], "docs": {}}],
        [0.5, 1.5, 1.25],
        {"threshold": 0.1, "n_inputs": 4, "layers": [0, 1], "baseline_mean": mean.tolist()},
    )
    result.save(out / FILES["pruning"])
    text = html.unescape(re.sub(r"<[^>]+>", " ", build(out).read_text(encoding="utf-8")))
    return re.sub(r"\s+", " ", text)


def test_the_pruning_sets_name_their_scheme_and_baseline_active_share(page):
    assert "Ablated sets, ranked by the relevant scheme" in page
    assert "nig_top 0.01 – 2 L0 1, L1 1 2 of 2 active on the baseline L0N0, L1N3" in page
    assert "random 0.01 0 2 L0 1, L1 1 0 of 2 active on the baseline L0N5, L1N9" in page
    assert "|mean activation| > 0.1 on the [PAD] baseline inputs of 4 relevant pairs" in page
    assert "seconds per evaluation min 0.50, median 1.25, max 1.50 (3 evaluations)" in page


def test_the_label_sets_show_baseline_activity_next_to_their_overlap(page):
    p = overlap_p_value(1, 2, 2, 2 * D)  # 1 - C(198, 2) / C(200, 2)
    assert p == pytest.approx(1 - (198 * 197) / (200 * 199), rel=1e-12)
    shared = f"1 shared (chance 0.02, hypergeometric p = {p:.3g})"
    assert f"relevant 2 L0 1, L1 1 2 of 2 active on the baseline {shared} with the nonrelevant set" in page
    assert f"nonrelevant 2 L0 1, L1 1 1 of 2 active on the baseline {shared} with the relevant set" in page
    assert "Top 20 neurons by difference mean NIG" in page  # the attribution's own list says its scheme


def test_the_documents_that_moved_most_for_the_query_that_changed_most(page):
    assert "Documents that moved most for query q1 (nig_top, baseline, fraction 0.01; 2 of 2 queries" in page
    assert "up d9 7 1 down d1 1 4" in page
