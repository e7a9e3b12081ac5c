"""``reduce="group"`` / ``"neuron"``: accumulated directly, equal to the per-token result's sums."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import HookedCrossEncoder, InputError
from mechir_nig.attribution import NeuronAttribution, neuron_integrated_gradients
from mechir_nig.models.tokenization import GROUPS

Q5, D5 = QUERIES + ["neuron"], DOCS + ["Neurons fire."]


def heads_by_group(attr):
    onehot = torch.nn.functional.one_hot(attr.groups, len(GROUPS))[..., :4].to(attr.head_values.dtype)
    return torch.einsum("blph,bpg->blgh", attr.head_values, onehot)


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("ibs", [None, 1, 3, 7, 10])
def test_group_and_neuron_equal_token_sums(tiny_ce, ibs):
    """Windows of 1, 3, 7, 10 points split pairs (10 points per pair at n_steps=9)."""
    token = neuron_integrated_gradients(tiny_ce, Q5, D5, n_steps=9, heads=True)
    group = neuron_integrated_gradients(
        tiny_ce, Q5, D5, n_steps=9, heads=True, reduce="group", internal_batch_size=ibs
    )
    neuron = neuron_integrated_gradients(
        tiny_ce, Q5, D5, n_steps=9, heads=True, reduce="neuron", internal_batch_size=ibs
    )
    n, n_layers, d_mlp, n_heads = len(Q5), tiny_ce.cfg.n_layers, tiny_ce.cfg.d_mlp, tiny_ce.cfg.n_heads
    # what is held: no token axis
    assert group.reduce == "group" and group.values.shape == (n, n_layers, 4, d_mlp)
    assert neuron.reduce == "neuron" and neuron.values.shape == (n, n_layers, d_mlp)
    assert group.head_values.shape == (n, n_layers, 4, n_heads)
    assert neuron.head_values.shape == (n, n_layers, n_heads)
    assert max_diff(group.values, token.by_group()) <= 1e-6
    assert max_diff(group.by_group(), token.by_group()) <= 1e-6
    assert max_diff(group.per_neuron(), token.per_neuron()) <= 1e-6
    assert max_diff(neuron.values, token.per_neuron()) <= 1e-6
    assert max_diff(neuron.per_neuron(), token.per_neuron()) <= 1e-6
    assert max_diff(group.head_values, heads_by_group(token)) <= 1e-6
    assert max_diff(group.per_head(), token.per_head()) <= 1e-6
    assert max_diff(neuron.per_head(), token.per_head()) <= 1e-6
    assert [t[:2] for t in neuron.top_neurons(3)] == [t[:2] for t in token.top_neurons(3)]
    # the scores and completeness are the same whatever is kept
    assert max_diff(group.scores, token.scores) <= 1e-6 and torch.equal(group.groups, token.groups)


def test_group_reduce_two_labels_mask_baseline(tiny_ce2_dir):
    ce = HookedCrossEncoder.from_pretrained(tiny_ce2_dir)
    token = neuron_integrated_gradients(ce, Q5, D5, n_steps=6, baseline="mask", layers=[0, 2])
    for ibs in (2, 5):
        group = neuron_integrated_gradients(
            ce, Q5, D5, n_steps=6, baseline="mask", layers=[0, 2], reduce="group", internal_batch_size=ibs
        )
        assert group.layers == [0, 2]
        assert max_diff(group.values, token.by_group()) <= 1e-6


def test_bi_encoder_query_side_groups(minilm_be):
    """The interpolated query of a bi-encoder is tokenized as ``doc``; its group sums move to ``query``."""
    kw = {"n_steps": 4, "side": "query", "layers": [2]}
    token = neuron_integrated_gradients(minilm_be, Q5[:2], D5[:2], **kw)
    group = neuron_integrated_gradients(minilm_be, Q5[:2], D5[:2], reduce="group", **kw)
    assert group.values[:, :, GROUPS.index("doc")].abs().sum() == 0
    assert group.values[:, :, GROUPS.index("query")].abs().sum() > 0
    scale = token.by_group().abs().max().item()
    assert max_diff(group.values, token.by_group()) <= 1e-6 * scale


def test_methods_that_need_tokens_say_which_reduce(tiny_ce):
    group = neuron_integrated_gradients(tiny_ce, Q5[:2], D5[:2], n_steps=2, reduce="group")
    neuron = neuron_integrated_gradients(tiny_ce, Q5[:2], D5[:2], n_steps=2, reduce="neuron")
    with pytest.raises(
        InputError, match=r"per_token\(\) needs values per token.*reduce='group'.*reduce='token'"
    ):
        group.per_token()
    with pytest.raises(
        InputError, match=r"by_group\(\) needs values per token group.*reduce='token' or reduce='group'"
    ):
        neuron.by_group()
    with pytest.raises(InputError, match="no head attributions: call with heads=True"):
        neuron.per_head()
    token = neuron_integrated_gradients(tiny_ce, Q5[:2], D5[:2], n_steps=2)
    assert torch.equal(token.per_token(), token.values)


def test_save_load_keeps_reduce(tiny_ce, tmp_path):
    group = neuron_integrated_gradients(tiny_ce, Q5, D5, n_steps=3, reduce="group")
    back = NeuronAttribution.load(group.save(tmp_path / "g.safetensors"))
    assert back.reduce == "group" and torch.equal(back.by_group(), group.values)
    assert torch.equal(back.n_steps_used, torch.full((len(Q5),), 3))
    # files written before reduce= existed hold per-token values (and no checksum)
    import json

    from safetensors.torch import load_file, save_file

    token = neuron_integrated_gradients(tiny_ce, Q5, D5, n_steps=3)
    path = token.save(tmp_path / "t.safetensors")
    save_file(load_file(str(path)), str(path))
    side = path.with_suffix(path.suffix + ".json")
    info = json.loads(side.read_text())
    info.pop("reduce")
    side.write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="no checksum"):
        assert NeuronAttribution.load(path).reduce == "token"


def test_bad_reduce(tiny_ce):
    with pytest.raises(InputError, match=r"reduce must be one of \('token', 'group', 'neuron'\)"):
        neuron_integrated_gradients(tiny_ce, Q5[:1], D5[:1], n_steps=2, reduce="pair")
