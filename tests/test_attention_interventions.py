"""block_attention against the same block written by hand into the HF model's attention mask."""

from __future__ import annotations

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.interventions.attention import GROUPS, attention_block_hooks, block_attention, blocked_keys


def _hf_blocked(hf, batch, monkeypatch, from_g, to_g, layers, heads=None, extra=(), add=None):
    """HF scores with ``from_g -> to_g`` attention masked by hand: the additive mask of the chosen layers
    (and heads) set to the dtype minimum at the blocked (query, key) pairs (or ``add`` added there)."""
    import transformers.models.bert.modeling_bert as mb

    real = mb.eager_attention_forward
    targets = {hf.bert.encoder.layer[layer].attention.self for layer in layers}
    g, m = batch.groups, batch.attention_mask.bool()
    blocked = (g == GROUPS[from_g])[:, :, None] & (g == GROUPS[to_g])[:, None, :] & m[:, None, :]
    blocked = blocked[:, None].expand(-1, hf.config.num_attention_heads, -1, -1).clone()
    if heads is not None:
        keep = torch.ones(hf.config.num_attention_heads, dtype=torch.bool)
        keep[heads] = False
        blocked[:, keep] = False

    def eager(module, query, key, value, attention_mask, **kw):
        if module in targets and add is None:
            attention_mask = attention_mask.masked_fill(blocked, torch.finfo(query.dtype).min)
        elif module in targets:
            attention_mask = attention_mask + blocked.to(query.dtype) * add
        return real(module, query, key, value, attention_mask, **kw)

    monkeypatch.setattr(mb, "eager_attention_forward", eager)
    with torch.no_grad(), hf_hooks.edits(hf, list(extra)):
        return hf_hooks.score(hf, batch)


@pytest.mark.parametrize(
    ("from_g", "to_g", "layers", "heads"),
    [("query", "doc", None, None), ("cls", "query", [1], [0]), ("doc", "query", [0], None)],
)
def test_block_equals_a_hand_hf_mask(ce64, hf64, monkeypatch, from_g, to_g, layers, heads):
    batch = ce64.tokenize(QUERIES[:3], DOCS[:3])
    plain = ce64(batch)
    with block_attention(ce64, from_g, to_g, layers=layers, heads=heads):
        got = ce64(batch)
    hand = _hf_blocked(hf64, batch, monkeypatch, from_g, to_g, layers or range(ce64.cfg.n_layers), heads)
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the block changes the scores
    # the hooks give the same through run_with_hooks
    hooks = attention_block_hooks(ce64, from_g, to_g, layers=layers, heads=heads)
    torch.testing.assert_close(ce64.run_with_hooks(batch, fwd_hooks=hooks), got)
    torch.testing.assert_close(ce64(batch), plain)  # nothing left behind


def test_block_composes_with_ablate(ce64, hf64, monkeypatch):
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.sets import NeuronSet

    batch = ce64.tokenize(QUERIES[:2], DOCS[:2])
    nset = NeuronSet([(0, 3), (1, 9)], n_layers=ce64.cfg.n_layers, d_mlp=ce64.cfg.d_mlp)
    with block_attention(ce64, "query", "doc"), ablate(ce64, nset):
        got = ce64(batch)

    def zero(unit):
        def fn(t):
            t = t.clone()
            t[..., unit] = 0
            return t

        return fn

    extra = [("mlp_post", 0, zero(3)), ("mlp_post", 1, zero(9))]
    hand = _hf_blocked(hf64, batch, monkeypatch, "query", "doc", range(ce64.cfg.n_layers), extra=extra)
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=0)


def test_rows_left_without_keys_are_not_blocked_and_errors():
    g = torch.tensor([[GROUPS["doc"]] * 4])
    assert not blocked_keys(g, torch.ones(1, 4), GROUPS["doc"], GROUPS["doc"]).any()
    g = torch.tensor([[0, 1, 2, 3, 3, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 1]])
    b = blocked_keys(g, mask, GROUPS["query"], GROUPS["doc"])
    assert b[0, 1].tolist() == [False, False, False, True, False, False]  # a masked key is not "blocked"


def test_errors_say_what_to_fix(ce64):
    with pytest.raises(InputError, match="from_group"):
        attention_block_hooks(ce64, "title", "doc")
    with pytest.raises(InputError, match="layers"):
        attention_block_hooks(ce64, "query", "doc", layers=[9])
    batch = ce64.tokenize(QUERIES[:1], DOCS[:1])
    resid = ce64.encoder_forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, stop_at_layer=0)
    with pytest.raises(InputError, match="token groups"), block_attention(ce64, "query", "doc"):
        ce64.encoder_forward(
            None, batch.token_type_ids, batch.attention_mask, residual=resid, start_at_layer=0
        )


@pytest.mark.parametrize("weight", [0.25, 3.0])
def test_reweighting_equals_a_hand_hf_mask_and_renormalises_rows(ce64, hf64, monkeypatch, weight):
    """``weight=w``: log w added to the HF additive mask by hand gives the same scores; the pattern is
    ``w p / (1 - P + w P)`` on query->doc entries (``P``: the row's doc mass), unchanged elsewhere up to
    the row's renormalisation; ``w = 1`` changes nothing."""
    import math

    batch = ce64.tokenize(QUERIES[:3], DOCS[:3])
    with block_attention(ce64, "query", "doc", layers=[0], weight=weight):  # layer 1's query rows: no path
        got = ce64(batch)
    hand = _hf_blocked(hf64, batch, monkeypatch, "query", "doc", [0], add=math.log(weight))
    torch.testing.assert_close(got, hand, atol=1e-8, rtol=0)
    assert (got - ce64(batch)).abs().max() > 1e-4
    with block_attention(ce64, "query", "doc", weight=1.0):  # log 1 = 0 added: nothing changes
        one = ce64(batch)
    torch.testing.assert_close(one, ce64(batch), atol=1e-12, rtol=0)

    name = "blocks.1.attn.hook_pattern"
    _, clean = ce64.run_with_cache(batch, names_filter=name)
    with block_attention(ce64, "query", "doc", layers=[1], weight=weight):
        _, edited = ce64.run_with_cache(batch, names_filter=name)
    p, q = clean[name], edited[name]  # [batch, head, query_pos, key_pos]
    g, m = batch.groups, batch.attention_mask.bool()
    sel = ((g == GROUPS["query"])[:, :, None] & (g == GROUPS["doc"])[:, None, :] & m[:, None, :])[:, None]
    mass = (p * sel).sum(-1, keepdim=True)  # P per row
    is_query_row = (g == GROUPS["query"])[:, None, :, None]
    expected = torch.where(sel, weight * p, p) / torch.where(is_query_row, 1 - mass + weight * mass, 1.0)
    torch.testing.assert_close(q, expected, atol=1e-10, rtol=0)


def test_bad_weight_is_refused(ce64):
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(InputError, match="weight must be"):
            attention_block_hooks(ce64, "query", "doc", weight=bad)
