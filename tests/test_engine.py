"""The one intervention engine (issue 15): ablate, patch and faithfulness write through it and agree."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.experiments.faithfulness import masked_scores, single_neuron_effects
from mechir_nig.interventions import ablate, patch, perturb
from mechir_nig.interventions.engine import Engine, Intervention, Source, Value, Zero, write
from mechir_nig.sets import NeuronSet

NEURON = (1, 5)


@pytest.fixture(scope="module")
def aligned(tiny_ce):
    """Aligned inputs: a query term inserted at the start of each document, so the clean run has a masked
    slot and explicit position_ids that are not 0..n-1."""
    return perturb.align(tiny_ce, QUERIES[:3], DOCS[:3], lambda q, d: perturb.tfc1(q, d, where="start"))


def one(model, pair=NEURON):
    return NeuronSet([pair], n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)


def neuron_masks(model, n_rows, pair=NEURON):
    masks = torch.zeros(n_rows, model.cfg.n_layers, model.cfg.d_mlp, dtype=torch.bool)
    masks[:, pair[0], pair[1]] = True
    return masks


class ZeroOnBatch(Value):
    """Zero in the forwards of one batch (by its token ids), the activation itself elsewhere."""

    def __init__(self, input_ids):
        self.input_ids = input_ids

    def __call__(self, act, name, frame):
        b = frame.batch
        hit = b is not None and torch.equal(b.input_ids.to(self.input_ids.device), self.input_ids)
        return act.new_zeros(()) if hit else act


def test_zero_ablating_one_neuron_agrees_across_ablate_patch_and_faithfulness(tiny_ce, aligned):
    clean = aligned.clean
    with ablate(tiny_ce, one(tiny_ce), mode="zero"):
        by_ablate = tiny_ce(clean)
    b = len(clean)
    by_faith = masked_scores(tiny_ce, clean, None, torch.arange(b), neuron_masks(tiny_ce, b))
    drops = single_neuron_effects(tiny_ce, clean, None, torch.tensor([[NEURON]] * b), mode="zero")
    # patching from a run whose activation of the neuron is zero: the perturbed run, zeroed at the neuron
    zero_source = Intervention(
        "mlp_post", NEURON[0], ZeroOnBatch(aligned.perturbed.input_ids), units=torch.tensor([NEURON[1]])
    )
    with Engine(tiny_ce, [zero_source]):
        res = patch(tiny_ce, aligned, sites="neurons", direction="noise", metric="raw", layers=[NEURON[0]])
    by_patch = res.patched["neurons"][:, 0, NEURON[1]]
    torch.testing.assert_close(by_faith, by_ablate, atol=1e-6, rtol=0)
    torch.testing.assert_close(by_patch, by_ablate, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny_ce(clean) - drops[:, 0], by_ablate, atol=1e-6, rtol=0)
    assert not torch.allclose(by_ablate, tiny_ce(clean), atol=1e-4)  # the neuron matters


def test_faithfulness_baseline_equals_ablate_baseline_with_position_ids(tiny_ce, aligned):
    clean = aligned.clean
    assert clean.position_ids is not None
    arange = torch.arange(clean.input_ids.shape[1]).expand_as(clean.position_ids)
    assert not torch.equal(clean.position_ids, arange)  # the position ids matter here
    b = len(clean)
    got = masked_scores(tiny_ce, clean, None, torch.arange(b), neuron_masks(tiny_ce, b), mode="baseline")
    with ablate(tiny_ce, one(tiny_ce), mode="baseline"):
        expected = tiny_ce(clean)
        rows = torch.cat([tiny_ce(clean.select([i])) for i in range(b)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=0)
    # ignoring the position ids in the baseline pass (the old faithfulness engine) gives other scores
    plain = dataclasses.replace(clean, position_ids=None)
    wrong = masked_scores(tiny_ce, plain, None, torch.arange(b), neuron_masks(tiny_ce, b), mode="baseline")
    assert not torch.allclose(wrong, got, atol=1e-6)


@pytest.mark.parametrize("mode", ["zero", "baseline"])
def test_chunk_size_never_changes_results(tiny_ce, aligned, mode):
    batch = tiny_ce.tokenize(QUERIES, DOCS)
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(7, tiny_ce.cfg.n_layers, tiny_ce.cfg.d_mlp, generator=gen) < 0.05
    rows = torch.randint(len(batch), (7,), generator=gen)
    a = masked_scores(tiny_ce, batch, None, rows, masks, mode=mode, chunk_size=1)
    b = masked_scores(tiny_ce, batch, None, rows, masks, mode=mode, chunk_size=64)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    if mode == "zero":
        p1 = patch(tiny_ce, aligned, sites=("resid_pre", "head_pos"), chunk_size=1, metric="raw")
        p2 = patch(tiny_ce, aligned, sites=("resid_pre", "head_pos"), metric="raw")
        for s in ("resid_pre", "head_pos"):
            torch.testing.assert_close(p1[s], p2[s], atol=1e-6, rtol=0, equal_nan=True)


def no_hooks_left(model):
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_hooks_are_removed_after_an_exception(tiny_ce):
    batch = tiny_ce.tokenize(QUERIES[:2], DOCS[:2])
    clean = tiny_ce(batch)
    with pytest.raises(RuntimeError, match="boom"), Engine(tiny_ce, [Intervention("z", 0, Zero())]):
        tiny_ce(batch)
        raise RuntimeError("boom")
    assert no_hooks_left(tiny_ce)

    def fails(act, name):
        raise RuntimeError("inside a hook")

    from mechir_nig.interventions.engine import Function

    with (
        pytest.raises(RuntimeError, match="inside a hook"),
        Engine(tiny_ce, [Intervention("mlp_post", 1, Function(fails))]),
    ):
        tiny_ce(batch)
    assert no_hooks_left(tiny_ce)
    bad = torch.ones(1, 1, dtype=torch.bool)
    with (
        pytest.raises(InputError, match="shaped like the batch"),
        ablate(tiny_ce, one(tiny_ce), positions=bad),
    ):
        tiny_ce(batch)
    assert no_hooks_left(tiny_ce)
    assert torch.equal(tiny_ce(batch), clean)


def test_writer_layouts_and_values():
    # heads: [batch, pos, n_heads, d_head]; pattern: [batch, n_heads, q, k] (the query position is the unit's row)
    act = torch.ones(1, 2, 3, 2)
    where = torch.zeros(1, 2, 3, dtype=torch.bool)
    where[0, 1, 2] = True
    out = write(act, "z", where, torch.tensor(0.0))
    assert out[0, 1, 2].eq(0).all() and out.sum() == act.sum() - 2
    pat = torch.ones(1, 3, 2, 2)
    out = write(pat, "pattern", where, torch.tensor(0.0))
    assert out[0, 2, 1].eq(0).all() and out.sum() == pat.sum() - 2
    # a Source writes row rows[i] of another run into row i
    src = {"blocks.0.hook_resid_pre": torch.arange(6.0).view(3, 2, 1)}
    it = Intervention(
        "resid_pre",
        0,
        Source(src, torch.tensor([2, 0])),
        positions=torch.tensor([[True, False], [False, True]]),
    )
    from mechir_nig.interventions.engine import Frame

    act = torch.full((2, 2, 1), -1.0)
    got = write(
        act, "resid_pre", it.where(act, Frame(None, None)), it.value(act, it.hook_name, Frame(None, None))
    )
    assert got.flatten().tolist() == [4.0, -1.0, -1.0, 1.0]


def test_a_position_set_is_ablated_like_a_neuron_set(tiny_ce):
    """ComponentSet covers every site: a set of resid_pre positions goes through ablate as NeuronSets do."""
    import json

    from mechir_nig.attribution.baselines import baseline_embeddings
    from mechir_nig.sets import ComponentSet

    batch = tiny_ce.tokenize(QUERIES[:2], DOCS[:2])
    n_pos = batch.input_ids.shape[1]
    s = ComponentSet([(1, 0), (1, 2)], kind="resid_pre", n_layers=tiny_ce.cfg.n_layers, width=n_pos)
    assert ComponentSet.from_json(json.loads(json.dumps(s.to_json()))) == s
    name = "blocks.1.hook_resid_pre"

    def by_hand(value):
        def fn(act, hook):
            act = act.clone()
            act[:, [0, 2]] = value[:, [0, 2]] if isinstance(value, torch.Tensor) else value
            return act

        return tiny_ce.run_with_hooks(batch, fwd_hooks=[(name, fn)])

    with ablate(tiny_ce, s, mode="zero"):
        torch.testing.assert_close(tiny_ce(batch), by_hand(0.0), atol=1e-6, rtol=0)
    emb = baseline_embeddings(tiny_ce, batch.input_ids, batch.groups, "pad")
    _, base = tiny_ce.run_with_cache(
        None, batch.token_type_ids, batch.attention_mask, input_embeds=emb, names_filter=[name]
    )
    with ablate(tiny_ce, s, mode="baseline"):
        torch.testing.assert_close(tiny_ce(batch), by_hand(base[name]), atol=1e-6, rtol=0)
    too_wide = ComponentSet(
        [(0, 0)], kind="resid_pre", n_layers=tiny_ce.cfg.n_layers, width=tiny_ce.cfg.n_ctx + 1
    )
    with pytest.raises(InputError, match="select the set from this model"):
        ablate(tiny_ce, too_wide)
