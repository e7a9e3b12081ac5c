"""Gradient checkpointing of the blocks above the first attributed layer (``NIGSettings.checkpoint_blocks``):
the same attributions (float64, 1e-10) on a decoder reranker and an encoder, the blocks really recomputed,
and a clear refusal where it is not implemented."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import load_model
from mechir_nig.attribution import NeuronIntegratedGradients, NIGSettings
from mechir_nig.errors import InputError
from mechir_nig.testing import decoder_tokenizer, make_decoder, make_t5, t5_tokenizer

Q = QUERIES[:2] + ["neuron"]
D = DOCS[:2] + ["A cell."]  # mixed lengths: padded rows


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    tok = decoder_tokenizer(QUERIES + DOCS + ["yes no", "yes", "no"] * 5)
    folder = make_decoder(tmp_path_factory.mktemp("qwen3"), tok, "qwen3", n_layers=4)
    return load_model(folder, template="qwen3-reranker", dtype=torch.float64)


def _calls(model):
    """Forward calls of each block (a recomputation in the backward counts as a call; a pre-hook, as the
    recomputation stops once it has what the backward needs)."""
    counts = [0] * model.cfg.n_layers
    handles = [
        blk.register_forward_pre_hook(lambda m, a, i=i: counts.__setitem__(i, counts[i] + 1))
        for i, blk in enumerate(model.blocks)
    ]
    return counts, handles


def _assert_equal(a, b):
    for name in a.site_values:
        x, y = a.site_values[name], b.site_values[name]
        scale = y.abs().max().item()
        assert scale > 0, name
        assert (x - y).abs().max().item() <= 1e-10 * scale, name
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        dict(n_steps=6, layers=[1, 3], sites=("mlp_post", "z", "resid_pre")),
        dict(n_steps=5, layers=[0], internal_batch_size=4, return_convergence_delta=True),  # split pairs
        dict(n_steps="auto", tol=0.05, min_steps=2, max_steps=8, layers=[2]),
    ],
)
def test_checkpointed_blocks_give_the_same_attributions(decoder, options):
    nig = NeuronIntegratedGradients(decoder)
    batch = decoder.tokenize(Q, D)
    assert batch.attention_mask.sum(-1).unique().numel() > 1
    plain = nig.attribute(batch, **options)
    counts, handles = _calls(decoder)
    try:
        ckpt = nig.attribute(batch, checkpoint_blocks=True, **options)
    finally:
        for h in handles:
            h.remove()
    _assert_equal(ckpt, plain)
    if options.get("return_convergence_delta"):
        torch.testing.assert_close(ckpt.convergence_delta, plain.convergence_delta, rtol=1e-9, atol=1e-12)
    first = options["layers"][0]
    below, above = counts[: first + 1], counts[first + 1 :]
    # blocks above the first attributed layer run twice per window (forward, recomputation in the
    # backward), the others once
    assert len(set(below)) == 1 and all(c == 2 * below[0] for c in above), counts


def test_checkpointed_blocks_on_an_encoder(tiny_ce):
    batch = tiny_ce.tokenize(QUERIES, DOCS)
    nig = NeuronIntegratedGradients(tiny_ce)
    plain = nig.attribute(batch, n_steps=4, layers=[0], heads=True)
    ckpt = nig.attribute(
        batch, settings=NIGSettings(n_steps=4, layers=[0], heads=True, checkpoint_blocks=True)
    )
    for name in plain.site_values:
        torch.testing.assert_close(ckpt.site_values[name], plain.site_values[name], rtol=1e-6, atol=1e-7)


def test_checkpoint_blocks_is_refused_for_monot5(tmp_path):
    tok = t5_tokenizer([f"Query: {q} Document: {d} Relevant: true false" for q, d in zip(Q, D)] * 20)
    mt5 = load_model(make_t5(tmp_path / "t5", tok))
    with pytest.raises(InputError, match="not HookedMonoT5"):
        NeuronIntegratedGradients(mt5).attribute(
            mt5.tokenize(Q[:1], D[:1]), n_steps=2, checkpoint_blocks=True
        )
    assert "checkpoint_blocks" not in NIGSettings(checkpoint_blocks=True).record()  # memory only
