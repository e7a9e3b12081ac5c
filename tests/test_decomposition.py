"""The residual stream and a bi-encoder's score decomposed with frozen LayerNorm scales (issue 17, post-LN
analysis helpers): the contributions add up to the run's values, and each one is what its component adds
when the scales and the other components are held at the run's values. (ModernBERT, DeBERTa and the
families it refuses: test_every_family.)"""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import HookedBiEncoder, InputError
from mechir_nig.analysis import decompose_resid, decompose_score


def test_sums_to_hf_hidden_states_of_a_tiny_bert(ce64, hf64):
    batch = ce64.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        hidden = hf64.bert(
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        ).hidden_states  # embeddings, then every layer's output
    n, h = ce64.cfg.n_layers, ce64.cfg.n_heads
    for layer in (None, *range(n + 1)):
        dec = decompose_resid(ce64, batch, layer=layer)
        ref = hidden[n if layer is None else layer]
        torch.testing.assert_close(dec.resid, ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(dec.components.sum(0), ref, rtol=0, atol=1e-10)
        top = n if layer is None else layer
        assert len(dec.labels) == 1 + top * (h + 4) == dec.components.shape[0]
    coarse = decompose_resid(ce64, batch, heads=False)
    assert coarse.labels[:5] == ["embed", "0_attn_out", "0_ln1_bias", "0_mlp_out", "0_ln2_bias"]
    torch.testing.assert_close(coarse.components.sum(0), hidden[n], rtol=0, atol=1e-10)
    # a layer's heads and attention bias add up to its attention output's contribution
    fine = decompose_resid(ce64, batch)
    heads = [fine[f"L1H{i}"] for i in range(h)] + [fine["1_attn_bias"]]
    torch.testing.assert_close(torch.stack(heads).sum(0), coarse["1_attn_out"], rtol=0, atol=1e-10)


def test_a_contribution_is_the_effect_with_scales_and_other_components_frozen(ce64):
    """Zeroing head (last layer, 1) while its block's LayerNorm scales and MLP output are held at the run's
    values moves the output by exactly minus that head's contribution: the linearisation's meaning."""
    batch = ce64.tokenize(QUERIES[:2], DOCS[:2])
    last = ce64.cfg.n_layers - 1
    dec = decompose_resid(ce64, batch)
    held = [f"blocks.{last}.{h}" for h in ("ln1.hook_scale", "ln2.hook_scale", "hook_mlp_out")]
    out_name = f"blocks.{last}.hook_normalized_resid_post"
    _, cache = ce64.run_with_cache(batch, names_filter=held + [out_name])

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    got = {}
    hooks = [(f"blocks.{last}.attn.hook_z", zero_head)]
    hooks += [(name, lambda a, hook: cache[hook.name]) for name in held]
    hooks.append((out_name, lambda a, hook: got.setdefault("out", a)))
    ce64.run_with_hooks(batch, fwd_hooks=hooks)
    change = got["out"] - cache[out_name]
    assert change.abs().max() > 1e-3
    torch.testing.assert_close(change, -dec[f"L{last}H1"], rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def minilm64(minilm_path):
    return HookedBiEncoder.from_pretrained(minilm_path, dtype=torch.float64)


def test_minilm_bi_encoder_score_sums_exactly(minilm64):
    """all-MiniLM-L6-v2 (mean pooling, cosine): the contributions add up to ``model.score`` (float64)."""
    q, d = QUERIES[:3], DOCS[:3]
    batch = minilm64.tokenize(d)
    sd = decompose_score(minilm64, batch, minilm64.encode(q))
    assert sd.contributions.shape == (1 + 6 * (12 + 4), 3) and len(sd.labels) == sd.contributions.shape[0]
    torch.testing.assert_close(sd.scores, minilm64.score(q, d), rtol=0, atol=1e-10)
    torch.testing.assert_close(sd.contributions.sum(0), sd.scores, rtol=0, atol=1e-10)
    assert sd.contributions.abs().max() < 10 * sd.scores.abs().max()  # no huge cancelling terms
    label, value = sd.top(1, pair=0)[0]
    assert value == float(sd.contributions[sd.labels.index(label), 0])
    dec = decompose_resid(minilm64, batch, layer=4, heads=False)
    torch.testing.assert_close(dec.components.sum(0), dec.resid, rtol=0, atol=1e-10)


def test_bad_inputs_are_refused(ce64, minilm64):
    batch = ce64.tokenize(QUERIES[:1], DOCS[:1])
    with pytest.raises(InputError, match="bi-encoder"):
        decompose_score(ce64, batch, torch.zeros(1, ce64.cfg.d_model))
    with pytest.raises(InputError, match="layer"):
        decompose_resid(ce64, batch, layer=ce64.cfg.n_layers + 1)
    with pytest.raises(InputError, match="tokenized"):
        decompose_resid(ce64, QUERIES[:1])
    with pytest.raises(InputError, match="query_embeddings"):
        decompose_score(minilm64, minilm64.tokenize(DOCS[:2]), torch.zeros(3, 384))
