"""Component sets keyed by site (issue 8): head sets, candidate pools, chance over the pool, random baselines."""

from __future__ import annotations

import copy
import json
import math
import pickle

import pytest
import torch

from mechir_nig.errors import InputError
from mechir_nig.sets import (
    KINDS,
    SITES,
    ComponentSet,
    NeuronSet,
    chance_pool,
    expected_overlap,
    intersection,
    overlap_report,
    random_like,
    rank_fusion,
    select_top,
    union,
)

try:
    from jaxtyping import TypeCheckError
except ImportError:  # older jaxtyping
    TypeCheckError = InputError


def bad_type(match: str):
    """Our InputError, or jaxtyping's TypeCheckError under the jaxtyping/beartype import hook."""
    return pytest.raises((InputError, TypeCheckError), match=f"{match}|Type-check error")


def heads(pairs, n_layers=3, n_heads=4, **kw):
    return ComponentSet(pairs, kind="head", n_layers=n_layers, width=n_heads, **kw)


def hand_expected(a: int, b: int, n: int) -> tuple[float, float]:
    """E|A∩B| and E[|A∩B| / |A∪B|] of two uniformly random sets of sizes a, b of n elements, by hand."""
    total = math.comb(n, b)
    p = {
        x: math.comb(a, x) * math.comb(n - a, b - x) / total for x in range(max(0, a + b - n), min(a, b) + 1)
    }
    return sum(x * px for x, px in p.items()), sum(x / (a + b - x) * px for x, px in p.items())


# -- the site vocabulary of sets ----------------------------------------------------------------------------
def test_set_kinds_and_sites():
    assert KINDS == ("mlp", "head")
    assert SITES["mlp"].format(layer=2) == "blocks.2.mlp.hook_post"
    assert SITES["head"].format(layer=0) == "blocks.0.attn.hook_z"


# -- head sets -----------------------------------------------------------------------------------------------
def test_head_set_views_hook_names_and_repr():
    h = heads([(2, 3), (0, 1), (2, 0)], name="h")
    assert h.kind == "head" and h.universe == (3, 4) and list(h) == [(0, 1), (2, 0), (2, 3)]
    assert h.to_hook_names() == {"blocks.0.attn.hook_z": [1], "blocks.2.attn.hook_z": [0, 3]}
    mask = h.to_mask()
    assert mask.shape == (3, 4) and mask.dtype == torch.bool and int(mask.sum()) == 3 and bool(mask[2, 3])
    assert ComponentSet.from_mask(mask, kind="head") == h
    assert h.layer_profile() == [1, 0, 2] and h.by_layer() == {0: [1], 2: [0, 3]}
    assert repr(h) == "ComponentSet(kind='head', name='h', size=3, universe=3x4, profile=[1, 0, 2])"
    assert type(h) is ComponentSet and not isinstance(h, NeuronSet)
    assert (2, 3) in h and (3, 0) not in h and (0, 4) not in h and "x" not in h


def test_select_top_heads_from_per_head_scores():
    # per_head() is [batch, layer, n_heads]; summed over pairs it is the [n_layers, n_heads] score
    per_head = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4) % 5
    scores = per_head.sum(0)  # [[0, 2, 4, 6], [8, 0, 2, 4], [6, 8, 0, 2]] + ...
    top = select_top(scores, k=3, kind="head", name="top heads")
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices[:3]
    want = sorted(divmod(int(i), 4) for i in order)
    assert list(top) == want and top.kind == "head" and type(top) is ComponentSet
    assert top.scores == pytest.approx({p: float(scores[p]) for p in want})
    assert top.to_hook_names() == {
        f"blocks.{layer}.attn.hook_z": [h for lay, h in want if lay == layer]
        for layer in sorted({l for l, _ in want})
    }
    sub = select_top(scores, k=2, kind="head", layers=[1])
    assert sub.pool_layers == (1,) and sub.pool_size == 4 and sub.layer_profile() == [0, 2, 0]
    with pytest.raises(InputError, match=r"number of candidate heads \(4\), got 5"):
        select_top(scores, k=5, kind="head", layers=[0])
    with bad_type("kind must be one of"):
        select_top(scores, k=1, kind="neuron")


def test_mlp_sets_are_neuron_sets_everywhere():
    s = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    generic = ComponentSet([(0, 1)], kind="mlp", n_layers=3, width=4)
    assert generic == NeuronSet([(0, 1)], n_layers=3, d_mlp=4)
    assert hash(generic) == hash(NeuronSet([(0, 1)], n_layers=3, d_mlp=4))
    results = [
        select_top(s, k=2),
        rank_fusion([s, s], k=2),
        random_like(generic, seed=0),
        generic & generic,
        union([generic]),
        ComponentSet.from_mask(generic.to_mask(), kind="mlp"),
        ComponentSet.from_json(generic.to_json()),
        pickle.loads(pickle.dumps(generic)),
    ]
    assert all(type(r) is NeuronSet and r.d_mlp == 4 for r in results)


def test_head_json_pickle_round_trip():
    h = select_top(
        torch.tensor([[0.1, 0.5], [0.9, 0.2], [0.3, 0.0]]), k=2, kind="head", layers=[1, 2], name="h"
    )
    data = json.loads(json.dumps(h.to_json()))
    assert data == {
        "name": "h",
        "n_layers": 3,
        "n_heads": 2,
        "heads": [[1, 0], [2, 0]],
        "scores": [[1, 0, pytest.approx(0.9)], [2, 0, pytest.approx(0.3)]],
        "pool_layers": [1, 2],
    }
    for back in (ComponentSet.from_json(data), pickle.loads(pickle.dumps(h)), copy.deepcopy(h)):
        assert back == h and back.kind == "head" and back.pool_layers == (1, 2) and back.name == "h"
        assert back.scores == pytest.approx(dict(h.scores))
    with pytest.raises(
        InputError, match="holds a set of heads, not neurons; load it with ComponentSet.from_json"
    ):
        NeuronSet.from_json(data)
    with pytest.raises(InputError, match="either 'd_mlp' and 'neurons'"):
        ComponentSet.from_json({**data, "d_mlp": 2})
    with pytest.raises(InputError, match=r"missing keys \['heads'\]"):
        ComponentSet.from_json({"n_layers": 3, "n_heads": 2})


def test_mixing_kinds_and_models_is_an_error():
    n = NeuronSet([(0, 1)], n_layers=3, d_mlp=4)
    h = heads([(0, 1)])
    for op in (lambda: n & h, lambda: n | h, lambda: h - n, lambda: n.jaccard(h), lambda: h.overlap(n)):
        with pytest.raises(
            InputError, match="a set of neurons and a set of heads|a set of heads and a set of neurons"
        ):
            op()
    with pytest.raises(InputError, match="different kinds of component"):
        intersection([n, h])
    with pytest.raises(InputError, match="a set of neurons and a set of heads"):
        overlap_report(n, h)
    assert n != h  # same members and universe, different kind
    with pytest.raises(InputError, match=r"different universes \(3x4 vs 3x12\)"):
        h & heads([], n_heads=12)  # noqa: B018
    with pytest.raises(InputError, match="different universes"):
        union([h, heads([], n_layers=6)])


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(InputError, match=r"head \(0, 4\) is outside the universe of 3 layers x 4 heads"):
        heads([(0, 4)])
    with pytest.raises(InputError, match="n_layers and n_heads must be >= 1"):
        heads([], n_heads=0)
    with bad_type("kind must be one of"):
        ComponentSet([], kind="neurons", n_layers=3, width=4)
    with pytest.raises(InputError, match=r"give kind= \(one of \('mlp', 'head'\)\)"):
        ComponentSet.from_mask(torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(InputError, match="NeuronSet holds neurons only"):
        NeuronSet.from_mask(torch.zeros(2, 2, dtype=torch.bool), kind="head")
    with pytest.raises(InputError, match=r"pool_layers \[3\] are out of range"):
        heads([], pool_layers=[3])
    with pytest.raises(InputError, match="pool_layers is empty"):
        heads([], pool_layers=[])
    with pytest.raises(InputError, match=r"\(2, 1\) is in layer 2, outside pool_layers \[0, 1\]"):
        heads([(2, 1)], pool_layers=[0, 1])
    with pytest.raises(InputError, match="sets is empty"):
        union([])
    with pytest.raises(InputError, match="score_tensors is empty"):
        rank_fusion([], k=1)
    with pytest.raises(InputError, match=r"number of candidate neurons \(8\), got 9"):
        select_top(torch.zeros(3, 4), k=9, layers=[0, 2])
    with pytest.raises(InputError, match=r"number of candidate neurons \(4\), got 5"):
        rank_fusion([torch.zeros(3, 4)], k=5, layers=[1])
    with bad_type("components must be a NeuronSet or ComponentSet"):
        random_like([(0, 1)], seed=0)


# -- candidate pools -----------------------------------------------------------------------------------------
def test_pool_recorded_by_selection_and_kept_by_json_and_algebra():
    s = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    a = select_top(s, k=3, layers=[2, 1], name="a")
    b = select_top(-s, k=3, layers=[1, 2], name="b")
    assert a.pool_layers == b.pool_layers == (1, 2) and a.pool_size == 20 and not a.full_pool
    assert repr(a).endswith("pool_layers=[1, 2])")
    assert a.pool_mask().sum() == 20 and a.pool_mask()[1:3].all()
    assert NeuronSet.from_json(json.loads(json.dumps(a.to_json()))).pool_layers == (1, 2)
    # same pool: kept by every combination
    for combined in (a & b, a | b, a - b, intersection([a, b]), union([a, b]), random_like(a, seed=0)):
        assert combined.pool_layers == (1, 2)
    # different pools: the union of the pools (it holds every member)
    c = select_top(s, k=2, layers=[3], name="c")
    for combined in (a | c, a & c, a - c, c - a, intersection([a, c]), union([c, a])):
        assert combined.pool_layers == (1, 2, 3)
    assert select_top(s, k=2).full_pool and NeuronSet([], n_layers=4, d_mlp=10).pool_layers == (0, 1, 2, 3)
    assert NeuronSet([], n_layers=4, d_mlp=10) == NeuronSet([], n_layers=4, d_mlp=10, pool_layers=[0])


def test_overlap_chance_over_one_layer_matches_hand_hypergeometric():
    g = torch.Generator().manual_seed(0)
    s1, s2 = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    a = select_top(s1, k=4, layers=[2], name="a")  # 4 of layer 2's 10 neurons
    b = select_top(s2, k=5, layers=[2], name="b")
    rep = overlap_report(a, b)
    # by hand over the pool: N = 10 neurons, X ~ Hypergeometric(N=10, K=4, n=5)
    # E[X] = Σ_x x C(4, x) C(6, 5 − x) / C(10, 5),  E[J] = Σ_x x / (9 − x) · C(4, x) C(6, 5 − x) / C(10, 5)
    total = math.comb(10, 5)
    pmf = {x: math.comb(4, x) * math.comb(6, 5 - x) / total for x in range(0, 5)}
    e_inter = sum(x * p for x, p in pmf.items())
    e_jac = sum(x / (4 + 5 - x) * p for x, p in pmf.items())
    assert e_inter == pytest.approx(2.0)  # a b / N
    assert rep["pool_layers"] == [2] and rep["pool_size"] == 10 and rep["universe"] == 40
    assert rep["expected_intersection"] == pytest.approx(e_inter, rel=1e-12)
    assert rep["expected_jaccard"] == pytest.approx(e_jac, rel=1e-12)
    assert rep["lift"] == pytest.approx(rep["jaccard"] / e_jac)
    # the whole-model figure (N = 40) of earlier releases is 4 times lower in intersection
    whole = overlap_report(a, b, pool_layers=range(4))
    assert whole["pool_size"] == 40 and whole["expected_intersection"] == pytest.approx(0.5)
    assert whole["expected_jaccard"] == pytest.approx(hand_expected(4, 5, 40)[1], rel=1e-12)
    assert whole["expected_jaccard"] < rep["expected_jaccard"] / 3
    assert rep["jaccard"] > 0 and whole["lift"] > 3 * rep["lift"]
    assert whole["jaccard"] == rep["jaccard"]
    json.dumps(rep)


def test_overlap_chance_for_heads_from_a_subset_of_layers():
    g = torch.Generator().manual_seed(3)
    s1, s2 = torch.randn(6, 12, generator=g), torch.randn(6, 12, generator=g)  # MiniLM: 6 layers x 12 heads
    a = select_top(s1, k=3, kind="head", layers=[1, 3])
    b = select_top(s2, k=4, kind="head", layers=[3, 1])
    rep = overlap_report(a, b)
    n = 2 * 12
    pmf = {x: math.comb(3, x) * math.comb(n - 3, 4 - x) / math.comb(n, 4) for x in range(0, 4)}
    assert rep["kind"] == "head" and rep["pool_layers"] == [1, 3] and rep["pool_size"] == n
    assert rep["expected_intersection"] == pytest.approx(sum(x * p for x, p in pmf.items()), rel=1e-12)
    assert rep["expected_jaccard"] == pytest.approx(sum(x / (7 - x) * p for x, p in pmf.items()), rel=1e-12)
    whole = overlap_report(a, b, pool_layers=range(6))
    assert whole["expected_jaccard"] == pytest.approx(hand_expected(3, 4, 72)[1], rel=1e-12)
    assert whole["expected_jaccard"] != pytest.approx(rep["expected_jaccard"], rel=0.5)


def test_chance_pool_nested_disjoint_and_override():
    s = torch.randn(3, 20, generator=torch.Generator().manual_seed(2))
    one = select_top(s, k=5, layers=[1], name="one")
    every = select_top(s, k=10, name="every")
    two = select_top(s, k=5, layers=[2], name="two")
    assert chance_pool(one, every) == chance_pool(every, one) == (0, 1, 2)
    assert chance_pool(one, one) == (1,)
    assert overlap_report(one, every)["pool_size"] == 60
    with pytest.raises(
        InputError, match=r"one: \[1\], two: \[2\].*neither contains the other.*pass pool_layers"
    ):
        overlap_report(one, two)
    rep = overlap_report(one, two, pool_layers=[1, 2])
    assert rep["pool_size"] == 40 and rep["expected_intersection"] == pytest.approx(25 / 40)
    with pytest.raises(InputError, match=r"leaves out layers \[2\] that hold members"):
        overlap_report(one, two, pool_layers=[0, 1])
    # a pool may leave out a layer of a set's pool that holds no member
    assert overlap_report(one, every - select_top(s, k=20, layers=[0]), pool_layers=[1, 2])["pool_size"] == 40


def test_nested_pool_chance_is_exact_by_simulation():
    # null: A uniform in its pool (layer 1), B uniform in all layers; the chance pool is all layers
    ref_a = NeuronSet([(1, i) for i in range(5)], n_layers=3, d_mlp=20, pool_layers=[1])
    ref_b = NeuronSet([(0, i) for i in range(10)], n_layers=3, d_mlp=20)
    want = overlap_report(ref_a, ref_b)
    assert want["pool_size"] == 60
    trials = 3000
    draws_a = torch.stack(
        [random_like(ref_a, seed=i, same_layer_profile=False).to_mask() for i in range(trials)]
    )
    draws_b = torch.stack(
        [random_like(ref_b, seed=trials + i, same_layer_profile=False).to_mask() for i in range(trials)]
    )
    assert not draws_a[:, [0, 2]].any()  # drawn from A's pool only
    inter = (draws_a & draws_b).sum((1, 2)).double()
    jac = inter / (draws_a | draws_b).sum((1, 2)).double()
    assert inter.mean().item() == pytest.approx(
        want["expected_intersection"], abs=0.05
    )  # sd of the mean ~0.015
    assert jac.mean().item() == pytest.approx(want["expected_jaccard"], abs=0.004)


# -- random baselines ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("same_layer_profile", [True, False])
def test_random_like_independent_across_sizes(same_layer_profile):
    s = torch.randn(2, 30, generator=torch.Generator().manual_seed(4))
    small, large = select_top(s, k=6), select_top(s, k=20)
    nested = []
    for seed in range(8):
        r_small = random_like(small, seed=seed, same_layer_profile=same_layer_profile)
        r_large = random_like(large, seed=seed, same_layer_profile=same_layer_profile)
        assert r_small == random_like(small, seed=seed, same_layer_profile=same_layer_profile)  # reproducible
        assert len(r_small) == 6 and len(r_large) == 20
        if same_layer_profile:
            assert r_small.layer_profile() == small.layer_profile()
        nested.append(len(r_small - r_large) == 0)
    assert not all(nested)  # one permutation per seed would nest them for every seed
    assert sum(nested) <= 2  # P(nested) per seed is small for independent draws


def test_random_like_heads_and_pool():
    h = select_top(
        torch.randn(6, 12, generator=torch.Generator().manual_seed(5)), k=7, kind="head", layers=[0, 4]
    )
    r = random_like(h, seed=0)
    assert r.kind == "head" and type(r) is ComponentSet and r.layer_profile() == h.layer_profile()
    assert r.pool_layers == (0, 4) and r.name == "random(set, seed=0)"
    free = [random_like(h, seed=i, same_layer_profile=False) for i in range(50)]
    counts = torch.stack([f.to_mask() for f in free]).sum(0)
    assert counts[[1, 2, 3, 5]].sum() == 0 and counts[[0, 4]].sum() == 50 * 7
    assert len({f for f in free}) > 40  # different seeds, different sets


def test_random_like_uniform_within_pool():
    ref = NeuronSet([(2, 0), (2, 1), (3, 0)], n_layers=4, d_mlp=3, pool_layers=[2, 3])
    counts = torch.zeros(4, 3)
    for seed in range(900):
        counts += random_like(ref, seed=seed, same_layer_profile=False).to_mask().float()
    assert counts[:2].sum() == 0
    assert torch.allclose(counts[2:] / 900, torch.full((2, 3), 0.5), atol=0.07)  # 3 of 6 candidates each


def test_rank_fusion_ranks_within_the_pool():
    # layer 0 holds the best scores of x; restricted to layer 1 the ranks are taken among layer 1 only
    x = torch.tensor([[9.0, 8.0, 7.0], [0.9, 0.8, 0.1]])
    y = torch.tensor([[9.0, 8.0, 7.0], [0.1, 0.8, 0.9]])
    fused = rank_fusion([x, y], k=1, layers=[1], rrf_k=0, name="f")
    # ranks in layer 1: x: 1, 2, 3; y: 3, 2, 1 -> 1 + 1/3, 1/2 + 1/2, 1/3 + 1: tie, lower index wins
    assert list(fused) == [(1, 0)] and fused.pool_layers == (1,)
    assert fused.scores[(1, 0)] == pytest.approx(4 / 3)
    assert rank_fusion([x, y], k=2, kind="head", layers=[0]).to_hook_names() == {
        "blocks.0.attn.hook_z": [0, 1]
    }


def test_expected_overlap_is_the_pool_formula():
    a = NeuronSet([(1, 0), (1, 1)], n_layers=3, d_mlp=5, pool_layers=[1])
    b = NeuronSet([(1, 1), (1, 3), (1, 4)], n_layers=3, d_mlp=5, pool_layers=[1])
    rep = overlap_report(a, b)
    chance = expected_overlap(len(a), len(b), a.pool_size)
    assert rep["expected_jaccard"] == chance["jaccard"] and rep["expected_intersection"] == 2 * 3 / 5
    assert chance["jaccard"] == pytest.approx(hand_expected(2, 3, 5)[1], rel=1e-12)
