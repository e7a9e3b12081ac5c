"""Gradient checkpointing of the blocks above the first attributed layer (``NIGSettings.checkpoint_blocks``):
the same attributions (float64, 1e-10) on a decoder reranker, an encoder and monoT5 (both stacks), the blocks
really recomputed, and a clear refusal where it is not implemented."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import load_model
from mechir_nig.attribution import NeuronIntegratedGradients, NIGSettings
from mechir_nig.errors import InputError
from mechir_nig.testing import T5_VARIANTS, decoder_tokenizer, make_decoder, make_t5, t5_tokenizer

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


def _plain_equals_checkpointed(model, options, calls):
    """NIG with and without ``checkpoint_blocks`` on mixed lengths: equal; returns the block-call counts."""
    nig = NeuronIntegratedGradients(model)
    batch = model.tokenize(Q, D)
    assert batch.attention_mask.sum(-1).unique().numel() > 1
    plain = nig.attribute(batch, **options)
    counts, handles = calls(model)
    try:
        ckpt = nig.attribute(batch, checkpoint_blocks=True, **options)
    finally:
        for h in handles:
            h.remove()
    _assert_equal(ckpt, plain)
    if options.get("return_convergence_delta"):
        torch.testing.assert_close(ckpt.convergence_delta, plain.convergence_delta, rtol=1e-9, atol=1e-12)
    return counts


@pytest.mark.parametrize(
    "options",
    [
        dict(n_steps=6, layers=[1, 3], sites=("mlp_post", "z", "resid_pre")),
        dict(n_steps=5, layers=[0], internal_batch_size=4, return_convergence_delta=True),  # split pairs
        dict(n_steps="auto", tol=0.05, min_steps=2, max_steps=8, layers=[2]),
    ],
)
def test_checkpointed_blocks_give_the_same_attributions(decoder, options):
    counts = _plain_equals_checkpointed(decoder, options, _calls)
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


@pytest.fixture(scope="module")
def monot5_dirs(tmp_path_factory):
    tok = t5_tokenizer([f"Query: {q} Document: {d} Relevant: true false" for q, d in zip(Q, D)] * 20)
    return {v: make_t5(tmp_path_factory.mktemp(v.replace(".", "_")), tok, v, n_layers=3) for v in T5_VARIANTS}


def _t5_calls(mt5):
    """Forward calls of each encoder and decoder block (as ``_calls``)."""
    counts = {s: [0] * len(getattr(mt5, s).blocks) for s in ("encoder", "decoder")}
    handles = [
        blk.register_forward_pre_hook(lambda m, a, s=s, i=i: counts[s].__setitem__(i, counts[s][i] + 1))
        for s in counts
        for i, blk in enumerate(getattr(mt5, s).blocks)
    ]
    return counts, handles


@pytest.mark.parametrize(
    "variant, stack, options",
    [
        ("v1.1", "encoder", dict(n_steps=5, layers=[1], sites=("mlp_post", "z", "resid_pre"))),
        (
            "v1.0",
            "encoder",
            dict(n_steps=4, layers=[0, 2], internal_batch_size=3, return_convergence_delta=True),
        ),
        ("v1.1", "decoder", dict(n_steps=4, layers=[0, 2], sites=("mlp_post", "z"))),
        ("v1.0", "encoder", dict(n_steps="auto", tol=0.05, min_steps=2, max_steps=8, layers=[1])),
    ],
)
def test_checkpointed_blocks_on_monot5(monot5_dirs, variant, stack, options):
    mt5 = load_model(monot5_dirs[variant], dtype=torch.float64)
    mt5.set_stack(stack)
    counts = _plain_equals_checkpointed(mt5, options, _t5_calls)
    # the blocks after the first attributed layer (the selected stack's, then for the encoder stack the
    # whole decoder) run twice per window (forward, recomputation in the backward), the others once
    first, sel, other = (
        options["layers"][0],
        counts[stack],
        counts["decoder" if stack == "encoder" else "encoder"],
    )
    once = sel[0]
    assert once > 0 and all(c == once for c in sel[: first + 1]), counts
    assert all(c == 2 * once for c in sel[first + 1 :]), counts
    assert all(c == (2 * once if stack == "encoder" else once) for c in other), counts


def test_checkpoint_blocks_is_refused_for_other_models(tiny_ce):
    class Wrapped:  # a model of the protocol that runs its blocks itself (neither family base class)
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

    with pytest.raises(InputError, match="not Wrapped"):
        NIGSettings(n_steps=2, checkpoint_blocks=True).checked(Wrapped(tiny_ce))
    assert "checkpoint_blocks" not in NIGSettings(checkpoint_blocks=True).record()  # memory only
