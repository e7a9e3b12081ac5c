"""The attention patching sites (``q``, ``k``, ``v`` per head and position, ``pattern`` per head's query
row) against the same patch written by hand on the Hugging Face model."""

from __future__ import annotations

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.interventions import perturb
from mechir_nig.interventions.patching import patch

LAYER = 1


@pytest.fixture(scope="module")
def al64(ce64):
    return perturb.align(ce64, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))


def _hand(hf, base, run_patched, n_heads, n_pos):
    """``[batch, n_heads, pos]``: the HF score with head ``h`` at position ``p`` patched (every pair at once:
    rows are independent)."""
    out = torch.empty(len(base), n_heads, n_pos, dtype=torch.float64)
    with torch.no_grad():
        for h in range(n_heads):
            for p in range(n_pos):
                out[:, h, p] = run_patched(h, p)
    return out


@pytest.mark.parametrize("site", ["q", "k", "v"])
def test_qkv_patch_equals_a_hand_hf_hook(ce64, hf64, al64, site):
    base, source = al64.perturbed, al64.clean
    _, src = hf_hooks.capture(hf64, source, [(site, LAYER)])
    src = src[(site, LAYER)]

    def run(h, p):
        def fn(t):
            t = t.clone()
            t[:, p, h] = src[:, p, h]
            return t

        with hf_hooks.edits(hf64, [(site, LAYER, fn)]):
            return hf_hooks.score(hf64, base)

    n_pos = base.input_ids.shape[1]
    hand = _hand(hf64, base, run, ce64.cfg.n_heads, n_pos)
    res = patch(ce64, al64, sites=site, layers=[LAYER], metric="raw")
    got = res.patched[site][:, 0].double()
    assert (hand - res.base_scores.double()[:, None, None]).abs().max() > 1e-3  # patches move the score
    # positions masked in the base run are not patched (base score), as every patch site
    attended = base.attention_mask.bool()[:, None, :].expand_as(hand)
    torch.testing.assert_close(got[attended], hand[attended], atol=1e-5, rtol=0)


def test_pattern_patch_equals_a_hand_hf_attention(ce64, hf64, al64, monkeypatch):
    """A head's query row of the attention pattern written from the source run, by hand in HF's eager
    attention."""
    import transformers.models.bert.modeling_bert as mb

    target = hf64.bert.encoder.layer[LAYER].attention.self
    real = mb.eager_attention_forward
    state: dict = {"edit": None, "keep": None}

    def eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        if module is not target:
            return real(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kw)
        w = torch.softmax(query @ key.transpose(2, 3) * scaling + attention_mask, dim=-1)
        if state["keep"] is not None:
            state["keep"].append(w.detach())
        if state["edit"] is not None:
            w = state["edit"](w)
        return (w @ value).transpose(1, 2).contiguous(), w

    monkeypatch.setattr(mb, "eager_attention_forward", eager)
    base, source = al64.perturbed, al64.clean
    state["keep"] = []
    with torch.no_grad():
        hf_hooks.score(hf64, source)
    src = state["keep"][0]
    state["keep"] = None

    def run(h, p):
        def fn(w):
            w = w.clone()
            w[:, h, p] = src[:, h, p]
            return w

        state["edit"] = fn
        try:
            return hf_hooks.score(hf64, base)
        finally:
            state["edit"] = None

    n_pos = base.input_ids.shape[1]
    hand = _hand(hf64, base, run, ce64.cfg.n_heads, n_pos)
    res = patch(ce64, al64, sites="pattern", layers=[LAYER], metric="raw")
    got = res.patched["pattern"][:, 0].double()
    assert (hand - res.base_scores.double()[:, None, None]).abs().max() > 1e-3
    attended = base.attention_mask.bool()[:, None, :].expand_as(hand)
    torch.testing.assert_close(got[attended], hand[attended], atol=1e-5, rtol=0)
