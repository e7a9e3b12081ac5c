"""Pruning study and faithfulness (issue 9) on a tiny seeded cross-encoder and the embedded collection."""

from __future__ import annotations

import pytest
import torch

from mechir_nig.data import bm25_candidates, load_collection
from mechir_nig.errors import InputError
from mechir_nig.experiments.pruning import CONDITIONS, pruning_study, split_queries
from mechir_nig.sets import ComponentSet


@pytest.fixture(scope="module")
def col():
    return load_collection("embedded")


@pytest.fixture(scope="module")
def study(tiny_ce, col):
    ranking = torch.randn(tiny_ce.cfg.n_layers, tiny_ce.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    return pruning_study(
        tiny_ce,
        col,
        bm25_candidates(col, k=5),
        ranking,
        fractions=(0.0, 0.05),
        seeds=2,
        modes=("zero", "baseline"),
        progress=False,
    )


def test_fraction_zero_equals_unpruned_exactly(study):
    rows = study.table()
    base = next(r for r in rows if r["condition"] == "unpruned")
    zero = [r for r in rows if r["fraction"] == 0.0 and r["condition"] != "unpruned"]
    assert len(zero) == len(CONDITIONS) * 2
    for r in zero:
        assert r["n_neurons"] == 0
        assert r["nDCG@10"] == base["nDCG@10"] and r["RR@10"] == base["RR@10"]
    for i, run in enumerate(study.runs):
        if run["fraction"] == 0.0:
            assert study.per_query[i] == study.per_query[0]


def test_table_has_every_condition_mode_and_fraction(study):
    keys = {(r["condition"], r["mode"], r["fraction"]) for r in study.table()}
    want = {(c, m, f) for c in CONDITIONS for m in ("zero", "baseline") for f in (0.0, 0.05)}
    assert want | {("unpruned", "none", 0.0)} == keys
    top = next(r for r in study.table() if r["condition"] == "nig_top" and r["fraction"] == 0.05)
    assert top["n_neurons"] == round(0.05 * 2 * 64)
    assert "nig_top" in study.to_markdown()
    d = study.to_dict()
    assert d["settings"]["split"].startswith("selection and evaluation queries are disjoint")


def test_random_sets_keep_per_layer_counts(study):
    top = ComponentSet.from_json(study.sets["nig_top|0.05|0"])
    for s in range(2):
        r = ComponentSet.from_json(study.sets[f"random|0.05|{s}"])
        assert r.layer_profile() == top.layer_profile() and r != top


def test_held_out_queries_are_disjoint(study, col, tiny_ce):
    assert study.eval_queries and study.select_queries
    assert not set(study.eval_queries) & set(study.select_queries)
    sel, ev = split_queries(col)
    assert set(study.eval_queries) <= set(ev)
    with pytest.raises(InputError, match="held-out"):
        pruning_study(
            tiny_ce,
            col,
            bm25_candidates(col, k=5),
            torch.zeros(2, 64),
            select_queries=ev,
            eval_queries=ev,
            fractions=(0.0,),
            progress=False,
        )


def test_save_round_trip(study, tmp_path):
    import json

    data = json.loads(study.save(tmp_path / "p.json").read_text())
    assert len(data["runs"]) == len(study.runs) and data["eval_queries"] == study.eval_queries


@pytest.mark.parametrize("mode", ["zero", "baseline", "mean"])
def test_batched_single_neuron_ablation_equals_a_loop(tiny_ce, mode):
    from conftest import DOCS, QUERIES

    from mechir_nig.experiments.faithfulness import single_neuron_effects
    from mechir_nig.interventions import AblationReference, ablate
    from mechir_nig.sets import NeuronSet

    batch, other = tiny_ce.attribution_inputs(QUERIES, DOCS)
    gen = torch.Generator().manual_seed(1)
    neurons = torch.stack(
        [torch.randint(2, (4, 5), generator=gen), torch.randint(64, (4, 5), generator=gen)], -1
    )
    ref = AblationReference.compute(tiny_ce, QUERIES, DOCS) if mode == "mean" else None
    got = single_neuron_effects(tiny_ce, batch, other, neurons, mode=mode, reference=ref, chunk_size=3)
    clean = tiny_ce(batch)
    for i in range(4):
        one = batch.select(torch.tensor([i]))
        for j in range(5):
            s = NeuronSet([tuple(neurons[i, j].tolist())], n_layers=2, d_mlp=64)
            with ablate(tiny_ce, s, mode=mode, reference=ref):
                expected = clean[i] - tiny_ce(one)[0]
            assert abs(float(got[i, j]) - float(expected)) < 1e-5


def test_faithfulness_report(tiny_ce):
    from conftest import DOCS, QUERIES

    from mechir_nig.experiments.faithfulness import faithfulness

    res = faithfulness(tiny_ce, QUERIES, DOCS, k=5, curve_k=3, seeds=2, n_steps=8, chunk_size=7)
    assert set(res.spearman) == {"baseline", "zero", "mean"}
    for mode in res.spearman:
        assert set(res.spearman[mode]) == {"nig", "act_x_grad", "activation"}
        assert all(-1.0 <= v <= 1.0 for v in res.spearman[mode].values())
        assert len(res.curve[mode]["nig"]) == len(res.curve[mode]["random"]) == 3
    # chunking never changes results
    again = faithfulness(tiny_ce, QUERIES, DOCS, k=5, curve_k=3, seeds=2, n_steps=8, chunk_size=64)
    torch.testing.assert_close(again.drops["zero"], res.drops["zero"], atol=1e-6, rtol=0)


def test_a_query_without_candidates_is_warned_and_not_evaluated(study, col, tiny_ce):
    """An evaluation query with an empty candidate list has no ranking to measure: both pruning_study and
    HeldOutRerank name it in a warning and leave it out (before, pruning_study scored it as 0 silently)."""
    from mechir_nig.experiments.heldout import HeldOutRerank

    cands = dict(bm25_candidates(col, k=5))
    gone = study.eval_queries[0]
    cands[gone] = {}
    with pytest.warns(UserWarning, match=r"pruning_study: 1 of \d+ evaluation queries have no candidates"):
        res = pruning_study(
            tiny_ce,
            col,
            cands,
            torch.zeros(2, 64),
            fractions=(0.0,),
            seeds=1,
            modes=("zero",),
            progress=False,
        )
    assert res.eval_queries == study.eval_queries[1:]
    assert res.per_query[0] == {q: v for q, v in study.per_query[0].items() if q != gone}
    with pytest.warns(UserWarning, match=r"held: 1 of \d+ evaluation queries have no candidates"):
        ev = HeldOutRerank.prepare(tiny_ce, col, cands, what="held")
    assert ev.queries == study.eval_queries[1:]
    assert {q for q, _ in ev.pairs} == set(study.eval_queries[1:])


def test_a_candidate_document_not_in_the_collection_is_refused(study, col, tiny_ce):
    """The pairs come from evaluation.candidate_pairs (as rerank's): an unknown document is an InputError
    naming it, not a KeyError after the setup."""
    cands = dict(bm25_candidates(col, k=5))
    cands[study.eval_queries[0]] = {"zz": 1.0}
    with pytest.raises(
        InputError, match=r"1 candidate documents are not in collection 'embedded' \(e.g. \['zz'\]\)"
    ):
        pruning_study(tiny_ce, col, cands, torch.zeros(2, 64), fractions=(0.0,), seeds=1, progress=False)
