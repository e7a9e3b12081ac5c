"""Neuron sets: top-k / top-fraction selection, set algebra, random baselines, rank fusion and chance overlap."""

from __future__ import annotations

import copy
import json
import math
import pickle
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest
import torch

from mechir_nig.errors import InputError
from mechir_nig.sets import (
    NeuronSet,
    expected_overlap,
    fuse_scores,
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
    """A wrong type or shape: our InputError, or jaxtyping's TypeCheckError when the test run installs the
    jaxtyping import hook with beartype (``--jaxtyping-packages=mechir_nig,beartype.beartype``)."""
    return pytest.raises((InputError, TypeCheckError), match=f"{match}|Type-check error")


# 3 layers x 4 neurons; flat index = layer * 4 + neuron
SCORES = torch.tensor(
    [
        [0.1, 0.9, 0.3, 0.9],  # (0, 1) and (0, 3) tie at 0.9
        [0.5, -0.2, 0.7, 0.0],
        [0.9, 0.2, -0.8, 0.4],  # (2, 0) ties with (0, 1) and (0, 3)
    ]
)


def ns(pairs, n_layers=3, d_mlp=4, name=""):
    return NeuronSet(pairs, n_layers=n_layers, d_mlp=d_mlp, name=name)


# -- select_top ----------------------------------------------------------------------------------------------
def test_select_top_k_and_deterministic_ties():
    top = select_top(SCORES, k=4, name="top4")
    assert list(top) == [(0, 1), (0, 3), (1, 2), (2, 0)]
    assert top.name == "top4"
    assert top.scores == pytest.approx({(0, 1): 0.9, (0, 3): 0.9, (2, 0): 0.9, (1, 2): 0.7})
    # three-way tie at 0.9: the lower flat indices (0, 1) and (0, 3) win over (2, 0)
    assert list(select_top(SCORES, k=2)) == [(0, 1), (0, 3)]
    assert list(select_top(SCORES, k=1)) == [(0, 1)]
    # same result on a repeated call and on a float64 copy
    assert select_top(SCORES, k=2) == select_top(SCORES.double(), k=2)


def test_select_top_smallest_and_all():
    low = select_top(SCORES, k=2, largest=False)
    assert list(low) == [(1, 1), (2, 2)]
    assert low.scores == pytest.approx({(2, 2): -0.8, (1, 1): -0.2})
    assert len(select_top(SCORES, k=12)) == 12
    assert len(select_top(SCORES, fraction=1.0)) == 12


def test_select_top_ties_at_zero_prefer_lower_index():
    z = torch.zeros(2, 3)
    assert list(select_top(z, k=2)) == [(0, 0), (0, 1)]
    assert list(select_top(z, k=2, largest=False)) == [(0, 0), (0, 1)]


def test_select_top_fraction_sizes():
    # 12 candidates: 0.25 -> 3; 0.01 -> max(1, round(0.12)) = 1; 0.5 -> 6
    assert list(select_top(SCORES, fraction=0.25)) == [(0, 1), (0, 3), (2, 0)]
    assert list(select_top(SCORES, fraction=0.01)) == [(0, 1)]
    assert len(select_top(SCORES, fraction=0.5)) == 6
    # 4 candidates (one layer): 0.5 -> 2
    assert list(select_top(SCORES, fraction=0.5, layers=[1])) == [(1, 0), (1, 2)]


def test_select_top_layers_restriction():
    top = select_top(SCORES, k=2, layers=[2, 1])
    assert list(top) == [(1, 2), (2, 0)]
    assert top.layer_profile() == [0, 1, 1]
    assert list(select_top(SCORES, k=1, layers=(1,))) == [(1, 2)]
    assert list(select_top(SCORES, k=4, layers=[1])) == [(1, 0), (1, 1), (1, 2), (1, 3)]


def test_select_top_bad_inputs():
    with pytest.raises(InputError, match="exactly one of k"):
        select_top(SCORES)
    with pytest.raises(InputError, match="exactly one of k"):
        select_top(SCORES, k=2, fraction=0.1)
    with pytest.raises(InputError, match=r"k must be between 1 and the number of candidate neurons \(12\)"):
        select_top(SCORES, k=13)
    with pytest.raises(InputError, match=r"number of candidate neurons \(4\), got 5"):
        select_top(SCORES, k=5, layers=[0])
    with pytest.raises(InputError, match="k must be between 1"):
        select_top(SCORES, k=0)
    with bad_type("k must be an integer"):
        select_top(SCORES, k=2.0)
    with bad_type("k must be an integer, got the bool"):
        select_top(SCORES, k=True)
    with pytest.raises(InputError, match=r"fraction must be in \(0, 1\]"):
        select_top(SCORES, fraction=0.0)
    with pytest.raises(InputError, match=r"fraction must be in \(0, 1\]"):
        select_top(SCORES, fraction=1.5)
    with bad_type("fraction must be a real number"):
        select_top(SCORES, fraction="10%")
    with bad_type("2-D tensor"):
        select_top(SCORES.flatten(), k=1)
    with bad_type("2-D tensor"):
        select_top(SCORES[None], k=1)
    with bad_type("must be a torch.Tensor"):
        select_top(SCORES.tolist(), k=1)
    with bad_type("real-valued"):
        select_top(SCORES > 0, k=1)
    bad = SCORES.clone()
    bad[0, 0] = bad[2, 3] = float("nan")
    with pytest.raises(InputError, match="has 2 NaN value"):
        select_top(bad, k=1)
    bad = SCORES.clone()
    bad[1, 1] = float("inf")
    with pytest.raises(InputError, match="1 infinite value"):
        select_top(bad, k=1)
    with pytest.raises(InputError, match=r"layers \[3\] are out of range for a model with 3 layers"):
        select_top(SCORES, k=1, layers=[0, 3])
    with pytest.raises(InputError, match="duplicates"):
        select_top(SCORES, k=1, layers=[1, 1])
    with pytest.raises(InputError, match="layers is empty"):
        select_top(SCORES, k=1, layers=[])
    with bad_type("largest must be a bool"):
        select_top(SCORES, k=1, largest="yes")


# -- NeuronSet ----------------------------------------------------------------------------------------------
A = [(0, 0), (0, 1), (1, 2), (2, 3)]
B = [(0, 1), (1, 2), (1, 3), (2, 0)]


def test_set_algebra_and_jaccard():
    a, b = ns(A, name="a"), ns(B, name="b")
    assert len(a) == 4 and (0, 1) in a and (1, 3) not in a and "x" not in a
    assert list(a & b) == [(0, 1), (1, 2)]
    assert list(a | b) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 0), (2, 3)]
    assert list(a - b) == [(0, 0), (2, 3)]
    assert list(b - a) == [(1, 3), (2, 0)]
    assert a.overlap(b) == 2
    assert a.jaccard(b) == pytest.approx(1 / 3)  # |A∩B| = 2, |A∪B| = 6
    assert a.jaccard(a) == 1.0
    assert ns([]).jaccard(ns([])) == 0.0
    assert (a & b).name == "(a & b)"
    assert (a | ns(B)).name == ""
    assert (a & b).scores is None


def test_set_iteration_sorted_dedup_and_equality():
    s = ns([(2, 1), (0, 3), (2, 0), (0, 3)])
    assert list(s) == [(0, 3), (2, 0), (2, 1)]
    assert len(s) == 3
    assert s == ns([(0, 3), (2, 0), (2, 1)], name="other name")
    assert s != ns([(0, 3), (2, 0), (2, 1)], n_layers=4)
    assert len({s, ns([(2, 0), (0, 3), (2, 1)])}) == 1
    # numpy and torch integers are accepted
    assert (np.int64(1), torch.tensor(2)) in ns([(np.int64(1), torch.tensor(2))])


def test_set_is_immutable():
    s = ns(A)
    with pytest.raises(AttributeError, match="immutable"):
        s.name = "x"
    with pytest.raises(TypeError):
        s.scores[(0, 0)] = 1.0  # scores is a read-only mapping (None here)
    t = select_top(SCORES, k=2)
    with pytest.raises(TypeError):
        t.scores[(0, 1)] = 0.0


def test_mask_round_trip():
    s = ns(A, name="a")
    mask = s.to_mask()
    assert mask.dtype == torch.bool and mask.shape == (3, 4)
    assert int(mask.sum()) == 4 and bool(mask[1, 2]) and not bool(mask[1, 3])
    back = NeuronSet.from_mask(mask, name="back")
    assert back == s and back.name == "back" and back.universe == (3, 4)
    assert NeuronSet.from_mask(torch.zeros(2, 5, dtype=torch.bool)) == ns([], n_layers=2, d_mlp=5)
    assert not ns([]).to_mask().any()
    with bad_type(r"bool tensor.*mask.bool\(\)"):
        NeuronSet.from_mask(mask.int())
    with bad_type("2-D"):
        NeuronSet.from_mask(mask.flatten())
    with bad_type("must be a torch.Tensor"):
        NeuronSet.from_mask(mask.tolist())


def test_profile_by_layer_hook_names_repr():
    s = ns([(2, 3), (0, 1), (2, 0), (0, 0)], name="s")
    assert s.layer_profile() == [2, 0, 2]
    assert s.by_layer() == {0: [0, 1], 2: [0, 3]}
    assert s.to_hook_names() == {"blocks.0.mlp.hook_post": [0, 1], "blocks.2.mlp.hook_post": [0, 3]}
    assert repr(s) == "NeuronSet(name='s', size=4, universe=3x4, profile=[2, 0, 2])"
    assert repr(ns([])) == "NeuronSet(size=0, universe=3x4, profile=[0, 0, 0])"


def test_json_pickle_copy_round_trip():
    top = select_top(SCORES, k=3, name="top3")
    data = json.loads(json.dumps(top.to_json()))
    assert data["neurons"] == [[0, 1], [0, 3], [2, 0]]
    back = NeuronSet.from_json(data)
    assert back == top and back.name == "top3" and dict(back.scores) == dict(top.scores)
    assert NeuronSet.from_json(ns(A).to_json()).scores is None
    for other in (pickle.loads(pickle.dumps(top)), copy.deepcopy(top), copy.copy(top)):
        assert other == top and other.name == top.name and dict(other.scores) == dict(top.scores)
    with pytest.raises(InputError, match=r"missing keys \['neurons'\]"):
        NeuronSet.from_json({"n_layers": 3, "d_mlp": 4})
    with pytest.raises(InputError, match=r"unknown keys \['extra'\]"):
        NeuronSet.from_json({**data, "extra": 1})
    with bad_type("to_json"):
        NeuronSet.from_json([1, 2])


def test_old_format_json_still_loads():
    # written by the release before issue 8 (no pool_layers key): loads with every layer as the pool
    old = (
        '{"name": "relevant:all", "n_layers": 3, "d_mlp": 4, "neurons": [[0, 1], [0, 3], [2, 0]], '
        '"scores": [[0, 1, 0.9], [0, 3, 0.9], [2, 0, 0.875]]}'
    )
    s = NeuronSet.from_json(json.loads(old))
    assert isinstance(s, NeuronSet) and s.kind == "mlp"
    assert list(s) == [(0, 1), (0, 3), (2, 0)] and s.name == "relevant:all" and s.universe == (3, 4)
    assert dict(s.scores) == {(0, 1): 0.9, (0, 3): 0.9, (2, 0): 0.875}
    assert s.pool_layers == (0, 1, 2) and s.pool_size == 12
    no_scores = NeuronSet.from_json(json.loads('{"n_layers": 2, "d_mlp": 5, "neurons": [[1, 4]]}'))
    assert list(no_scores) == [(1, 4)] and no_scores.scores is None and no_scores.name == ""
    # the format written now: the old keys plus pool_layers
    assert s.to_json() == {**json.loads(old), "pool_layers": [0, 1, 2]}


def test_neuron_set_bad_inputs():
    with pytest.raises(InputError, match=r"\(3, 0\) is outside the universe of 3 layers x 4"):
        ns([(3, 0)])
    with pytest.raises(InputError, match="outside the universe"):
        ns([(0, -1)])
    with bad_type(r"must be a \(layer, neuron\) tuple"):
        ns([(0, 1, 2)])
    with bad_type("layer must be an integer"):
        ns([(0.5, 1)])
    with pytest.raises(InputError, match="n_layers and d_mlp must be >= 1"):
        ns([], n_layers=0)
    with bad_type("from_mask"):
        NeuronSet(torch.ones(3, 4, dtype=torch.bool), n_layers=3, d_mlp=4)
    with pytest.raises(InputError, match="not in the set"):
        NeuronSet([(0, 0)], n_layers=3, d_mlp=4, scores={(0, 1): 1.0})
    with bad_type("must be a real number"):
        NeuronSet([(0, 0)], n_layers=3, d_mlp=4, scores={(0, 0): "high"})
    with bad_type("name must be a str"):
        ns([], name=3)
    other = ns([(0, 1)], n_layers=2)
    for op in (lambda: ns(A) & other, lambda: ns(A) | other, lambda: ns(A) - other):
        with pytest.raises(InputError, match=r"different universes \(3x4 vs 2x4\)"):
            op()
    with pytest.raises(InputError, match="different universes"):
        ns(A).jaccard(other)
    with pytest.raises(InputError, match="different universes"):
        ns(A).overlap(other)
    with bad_type("other must be a NeuronSet"):
        ns(A).jaccard({(0, 1)})
    with pytest.raises(TypeError):
        ns(A) & {(0, 1)}


# -- random baseline ----------------------------------------------------------------------------------------
def test_random_like_keeps_size_and_profile():
    scores = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    top = select_top(scores, k=40, layers=[0, 2, 5], name="top")
    r = random_like(top, seed=1)
    assert len(r) == 40 and r.layer_profile() == top.layer_profile()
    assert r.universe == top.universe and r.name == "random(top, seed=1)"
    assert random_like(top, seed=1) == r  # deterministic for a seed
    assert random_like(top, seed=2) != r  # differs by seed
    free = random_like(top, seed=1, same_layer_profile=False)
    assert len(free) == 40 and free.universe == (6, 50)
    assert free == random_like(top, seed=1, same_layer_profile=False)
    # drawn uniformly from the pool top was selected from (layers 0, 2, 5; issue 8: formerly all layers)
    assert free.pool_layers == top.pool_layers == (0, 2, 5)
    assert free.layer_profile() != top.layer_profile()
    assert [free.layer_profile()[layer] for layer in (1, 3, 4)] == [0, 0, 0]
    everywhere = random_like(ns(A, n_layers=3, d_mlp=4), seed=1, same_layer_profile=False)
    assert len(everywhere) == 4 and everywhere.pool_layers == (0, 1, 2)
    # a full layer stays full; an empty set stays empty
    full = ns([(1, n) for n in range(4)])
    assert random_like(full, seed=3) == full
    assert len(random_like(ns([]), seed=0)) == 0


def test_random_like_is_uniform():
    s = ns([(0, 0), (0, 1)], n_layers=1, d_mlp=4)
    counts = torch.zeros(4)
    for seed in range(600):
        counts += random_like(s, seed=seed).to_mask()[0].float()
    assert torch.allclose(counts / 600, torch.full((4,), 0.5), atol=0.07)


def test_random_like_bad_inputs():
    with bad_type("seed must be an integer"):
        random_like(ns(A), seed=1.5)
    with bad_type("components must be a NeuronSet or ComponentSet"):  # the parameter was named neuron_set
        random_like(A, seed=0)
    with bad_type("same_layer_profile must be a bool"):
        random_like(ns(A), seed=0, same_layer_profile=None)


# -- intersection / union -----------------------------------------------------------------------------------
def test_intersection_and_union_of_many():
    c = [(0, 1), (2, 3), (1, 2)]
    assert list(intersection([ns(A), ns(B), ns(c)], name="all")) == [(0, 1), (1, 2)]
    assert intersection([ns(A), ns(B), ns(c)], name="all").name == "all"
    assert list(union(iter([ns(A), ns(B), ns(c)]))) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 0), (2, 3)]
    assert intersection([ns(A)]) == ns(A) == union((ns(A),))
    assert len(intersection([ns(A), ns([(1, 1)])])) == 0
    with pytest.raises(InputError, match="sets is empty"):
        intersection([])
    with pytest.raises(InputError, match="sets is empty"):
        union([])
    with bad_type("not a single set"):
        union(ns(A))
    with bad_type("every element of sets must be a NeuronSet"):
        union([ns(A), A])
    with pytest.raises(InputError, match="different universes"):
        intersection([ns(A), ns([], d_mlp=5)])


# -- rank fusion --------------------------------------------------------------------------------------------
def test_rrf_winner_by_hand():
    # 1 layer x 4 neurons. Ranks in x: n0=1, n1=2, n2=3, n3=4; in y: n2=1, n1=2, n3=3, n0=4.
    x = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    y = torch.tensor([[0.0, 0.5, 0.6, 0.2]])
    fused = fuse_scores([x, y], method="rrf", rrf_k=60)
    expected = [1 / 61 + 1 / 64, 1 / 62 + 1 / 62, 1 / 63 + 1 / 61, 1 / 64 + 1 / 63]
    assert fused.dtype == torch.float64
    assert fused[0].tolist() == pytest.approx(expected, rel=1e-15)
    # 1/61 + 1/63 = 0.032266 > 2/62 = 0.032258 > 1/61 + 1/64 = 0.032018 > 1/64 + 1/63: n2, n1, n0, n3
    top = rank_fusion([x, y], k=2, name="fused")
    assert list(top) == [(0, 1), (0, 2)] and top.name == "fused"
    assert top.scores[(0, 2)] == pytest.approx(1 / 63 + 1 / 61)
    assert list(rank_fusion([x, y], k=1)) == [(0, 2)]
    assert list(rank_fusion([x, y], k=3)) == [(0, 0), (0, 1), (0, 2)]
    # rrf_k = 0: n0 = 1 + 1/4, n1 = 1/2 + 1/2, n2 = 1/3 + 1, n3 = 1/4 + 1/3
    assert fuse_scores([x, y], rrf_k=0)[0].tolist() == pytest.approx([1.25, 1.0, 4 / 3, 7 / 12])
    assert list(rank_fusion((x, y), k=2, rrf_k=0)) == [(0, 0), (0, 2)]


def test_borda_and_ties_share_rank():
    x = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    y = torch.tensor([[0.0, 0.5, 0.6, 0.2]])
    # complements N - rank with N = 4: x gives 3, 2, 1, 0; y gives 0, 2, 3, 1
    assert fuse_scores([x, y], method="borda")[0].tolist() == [3.0, 4.0, 4.0, 1.0]
    assert list(rank_fusion([x, y], k=1, method="borda")) == [(0, 1)]  # tie 4 = 4: lower index wins
    # tied scores share the best rank: ranks 1, 1, 3, 4
    tied = torch.tensor([[0.5, 0.5, 0.2, 0.1]])
    assert fuse_scores([tied], rrf_k=0)[0].tolist() == pytest.approx([1.0, 1.0, 1 / 3, 1 / 4])
    # one tensor: fusion keeps its order
    assert rank_fusion([SCORES], k=3) == select_top(SCORES, k=3)
    assert rank_fusion([SCORES, SCORES], fraction=0.25, method="borda") == select_top(SCORES, k=3)


def test_rank_fusion_bad_inputs():
    x = torch.zeros(3, 4)
    with pytest.raises(InputError, match="different shapes"):
        rank_fusion([x, torch.zeros(3, 5)], k=1)
    with pytest.raises(InputError, match="score_tensors is empty"):
        rank_fusion([], k=1)
    with bad_type("list or tuple"):
        rank_fusion(x, k=1)
    with pytest.raises(InputError, match=r"unknown method 'mean'; choose one of \('rrf', 'borda'\)"):
        rank_fusion([x, x], k=1, method="mean")
    with pytest.raises(InputError, match="rrf_k must be a finite number >= 0"):
        rank_fusion([x, x], k=1, rrf_k=-1)
    with pytest.raises(InputError, match="rrf_k only applies to method='rrf'"):
        rank_fusion([x, x], k=1, method="borda", rrf_k=10)
    with pytest.raises(InputError, match="exactly one of k"):
        rank_fusion([x, x])
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match=r"score_tensors\[1\] has 1 NaN"):
        rank_fusion([x, bad], k=1)


# -- chance overlap -----------------------------------------------------------------------------------------
def exact_expected_jaccard(a: int, b: int, n: int) -> Fraction:
    """E[|A∩B| / |A∪B|] in exact rational arithmetic from the hypergeometric pmf with integer binomials."""
    total = Fraction(0)
    for x in range(max(0, a + b - n), min(a, b) + 1):
        total += Fraction(math.comb(a, x) * math.comb(n - a, b - x) * x, a + b - x)
    return total / math.comb(n, b)


def test_expected_overlap_matches_enumeration():
    n, a, b = 12, 4, 5
    fixed = set(range(a))  # by symmetry A can be fixed; B runs over all C(12, 5) = 792 subsets
    total, count = Fraction(0), 0
    for subset in combinations(range(n), b):
        s = set(subset)
        total += Fraction(len(fixed & s), len(fixed | s))
        count += 1
    assert count == 792
    got = expected_overlap(a, b, n)
    assert got["intersection"] == a * b / n
    assert got["union"] == pytest.approx(a + b - a * b / n)
    assert abs(got["jaccard"] - float(total / count)) < 1e-12
    assert abs(got["jaccard"] - float(exact_expected_jaccard(a, b, n))) < 1e-12


@pytest.mark.parametrize("a,b,n", [(300, 400, 20_000), (50, 60, 100), (7, 7, 9), (1, 1, 1), (10, 3, 10)])
def test_expected_overlap_matches_exact_rational(a, b, n):
    got = expected_overlap(a, b, n)
    assert got["intersection"] == a * b / n
    assert got["jaccard"] == pytest.approx(float(exact_expected_jaccard(a, b, n)), rel=1e-12, abs=1e-15)


def test_expected_overlap_edge_cases():
    assert expected_overlap(0, 5, 10) == {"intersection": 0.0, "union": 5.0, "jaccard": 0.0}
    assert expected_overlap(0, 0, 10)["jaccard"] == 0.0
    assert expected_overlap(10, 10, 10)["jaccard"] == 1.0  # both sets are the universe
    assert expected_overlap(10, 4, 10)["jaccard"] == pytest.approx(0.4)  # A = universe: J = b / N
    assert expected_overlap(6, 6, 10)["jaccard"] > 0.2  # forced intersection >= 2


def test_expected_overlap_matches_simulation():
    n, a, b = 2000, 600, 600  # E|A∩B| = 180, relative sd ~4.4% per trial: ~0.1% over 2000 trials
    want = expected_overlap(a, b, n)
    g = torch.Generator().manual_seed(0)
    trials = 2000
    order = torch.rand(trials, n, generator=g).argsort(1)
    in_a = torch.zeros(trials, n, dtype=torch.bool)
    in_b = torch.zeros(trials, n, dtype=torch.bool)
    in_a.scatter_(1, order[:, :a], True)  # A and B drawn independently: B from a second permutation
    in_b.scatter_(1, torch.rand(trials, n, generator=g).argsort(1)[:, :b], True)
    inter = (in_a & in_b).sum(1).double()
    jac = inter / (in_a | in_b).sum(1).double()
    assert inter.mean().item() == pytest.approx(want["intersection"], rel=0.01)
    assert jac.mean().item() == pytest.approx(want["jaccard"], rel=0.01)


def test_expected_overlap_large_matches_hypergeometric_sampler():
    n, a, b = 1_000_000, 10_000, 10_000
    got = expected_overlap(a, b, n)
    x = np.random.default_rng(0).hypergeometric(a, n - a, b, size=200_000)
    assert x.mean() == pytest.approx(got["intersection"], rel=0.01)
    assert np.mean(x / (a + b - x)) == pytest.approx(got["jaccard"], rel=0.01)


def test_expected_overlap_bad_inputs():
    with pytest.raises(InputError, match="universe must be >= 1"):
        expected_overlap(0, 0, 0)
    with pytest.raises(InputError, match="between 0 and the universe size 10, got size_a=11"):
        expected_overlap(11, 2, 10)
    with pytest.raises(InputError, match="size_b=-1"):
        expected_overlap(1, -1, 10)
    with bad_type("size_a must be an integer"):
        expected_overlap(1.0, 2, 10)


def test_overlap_report():
    a, b = ns(A, name="a"), ns(B, name="b")
    rep = overlap_report(a, b)
    chance = expected_overlap(4, 4, 12)
    assert rep["name_a"] == "a" and rep["name_b"] == "b" and rep["universe"] == 12
    assert (rep["size_a"], rep["size_b"], rep["intersection"], rep["union"]) == (4, 4, 2, 6)
    assert rep["jaccard"] == pytest.approx(1 / 3)
    assert rep["expected_intersection"] == pytest.approx(16 / 12)
    assert rep["expected_jaccard"] == chance["jaccard"]
    assert rep["lift"] == pytest.approx((1 / 3) / chance["jaccard"])
    assert math.isnan(overlap_report(ns([]), b)["lift"])
    json.dumps(rep)  # plain types only
    with pytest.raises(InputError, match="different universes"):
        overlap_report(a, ns([], d_mlp=5))
    with bad_type("b must be a NeuronSet"):
        overlap_report(a, B)
