"""TransformerLens-user conventions on the hooked encoders: the post-LN ActivationCache, return_type=None,
hook_full_embed, the opt-in hook_result / hook_mlp_in switches, and hooks cleaned up after an error.

``tiny_ce`` and ``minilm_be`` are session-scoped: every test that flips a switch restores it in
``finally``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import DOCS, QUERIES
from transformer_lens.ActivationCache import ActivationCache

from mechir_nig import InputError
from mechir_nig.errors import PostLayerNormError
from mechir_nig.models.cache import EncoderActivationCache

TOL = 1e-5


def raises_bad_return_type(model, batch, value):
    """A bad return_type: InputError from forward itself; under the test run's jaxtyping import hook the
    call is refused earlier with jaxtyping's TypeCheckError (the same convention as test_nig.py)."""
    from jaxtyping import TypeCheckError

    with pytest.raises((InputError, TypeCheckError), match="return_type"):
        model(batch, return_type=value)
    raw_forward = inspect.unwrap(type(model).forward)  # past the type checker, if one wraps it
    with pytest.raises(InputError, match="return_type must be"):
        raw_forward(model, batch, return_type=value)


@pytest.fixture(scope="module")
def batch(tiny_ce):
    return tiny_ce.tokenize(QUERIES, DOCS)


@pytest.fixture(scope="module")
def cache(tiny_ce, batch):
    _, cache = tiny_ce.run_with_cache(batch)
    return cache


def no_hooks_left(model) -> bool:
    return all(
        not hp.fwd_hooks and not hp.bwd_hooks and not hp._forward_hooks for hp in model.hook_dict.values()
    )


# -- the post-LN ActivationCache ----------------------------------------------------------------------
def test_run_with_cache_returns_encoder_cache(tiny_ce, batch, cache):
    assert isinstance(cache, EncoderActivationCache) and isinstance(cache, ActivationCache)
    scores, _ = tiny_ce.run_with_cache(batch)
    assert torch.allclose(scores, tiny_ce(batch), atol=TOL)
    b, p = batch.input_ids.shape
    assert cache["blocks.1.mlp.hook_post"].shape == (b, p, tiny_ce.cfg.d_mlp)
    assert cache["hook_score"].shape == (b,)
    _, raw = tiny_ce.run_with_cache(batch, return_cache_object=False)
    assert isinstance(raw, dict) and not isinstance(raw, ActivationCache)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c, m: c.decompose_resid(), id="decompose_resid"),
        pytest.param(lambda c, m: c.get_full_resid_decomposition(), id="get_full_resid_decomposition"),
        pytest.param(
            lambda c, m: c.apply_ln_to_stack(c.stack_activation("resid_pre"), layer=m.cfg.n_layers),
            id="apply_ln_to_stack",
        ),
        pytest.param(lambda c, m: c.accumulated_resid(apply_ln=True), id="accumulated_resid(apply_ln)"),
        pytest.param(lambda c, m: c.stack_head_results(apply_ln=True), id="stack_head_results(apply_ln)"),
        pytest.param(
            lambda c, m: c.stack_neuron_results(layer=1, apply_ln=True), id="stack_neuron_results(apply_ln)"
        ),
        pytest.param(lambda c, m: c.logit_lens(c["blocks.0.hook_resid_pre"]), id="logit_lens"),
        pytest.param(lambda c, m: c.logit_attrs(c.stack_activation("resid_pre"), tokens=0), id="logit_attrs"),
    ],
)
def test_pre_ln_decompositions_refused(tiny_ce, cache, call):
    with pytest.raises(PostLayerNormError, match="post-LN") as info:
        call(cache, tiny_ce)
    assert isinstance(info.value, NotImplementedError)
    assert "hook_attn_out" in str(info.value)  # says what to read instead


def test_safe_cache_methods_still_work(tiny_ce, batch, cache):
    n, d = tiny_ce.cfg.n_layers, tiny_ce.cfg.d_model
    b, p = batch.input_ids.shape
    stacked = cache.stack_activation("resid_pre")
    assert stacked.shape == (n, b, p, d)
    for layer in range(n):
        assert torch.equal(stacked[layer], cache[f"blocks.{layer}.hook_resid_pre"])
    acc, labels = cache.accumulated_resid(apply_ln=False, return_labels=True)
    assert acc.shape == (n + 1, b, p, d) and len(labels) == n + 1
    for layer in range(n):
        assert torch.equal(acc[layer], cache[f"blocks.{layer}.hook_resid_pre"])
    assert torch.equal(acc[n], cache[f"blocks.{n - 1}.hook_resid_post"])
    neurons = cache.stack_neuron_results(layer=1, apply_ln=False)
    assert neurons.shape == (tiny_ce.cfg.d_mlp, b, p, d)
    mlp = tiny_ce.blocks[0].mlp
    assert torch.allclose(neurons.sum(0) + mlp.b_out, cache["blocks.0.hook_mlp_out"], atol=TOL)
    # per-head results computed from hook_z (use_attn_result off), on a fresh cache
    _, fresh = tiny_ce.run_with_cache(batch)
    heads, head_labels = fresh.stack_head_results(apply_ln=False, return_labels=True)
    h = tiny_ce.cfg.n_heads
    assert heads.shape == (n * h, b, p, d) and head_labels[:2] == ["L0H0", "L0H1"]
    for layer in range(n):
        total = heads[layer * h : (layer + 1) * h].sum(0) + tiny_ce.blocks[layer].attn.b_O
        assert (total - fresh[f"blocks.{layer}.hook_attn_out"]).abs().max().item() <= TOL


# -- return_type ---------------------------------------------------------------------------------------
def test_cross_encoder_return_type_none_fires_hooks(tiny_ce, batch):
    assert tiny_ce(batch, return_type=None) is None
    fired: dict[str, tuple[int, ...]] = {}

    def record(t, hook):
        fired[hook.name] = tuple(t.shape)

    out = tiny_ce.run_with_hooks(
        batch,
        return_type=None,
        fwd_hooks=[("hook_score", record), ("blocks.0.mlp.hook_post", record)],
    )
    b, p = batch.input_ids.shape
    assert out is None
    assert fired == {"hook_score": (b,), "blocks.0.mlp.hook_post": (b, p, tiny_ce.cfg.d_mlp)}
    assert no_hooks_left(tiny_ce)


def test_bi_encoder_return_type_none_fires_hooks(minilm_be):
    texts = QUERIES[:2]
    tb = minilm_be.tokenize(texts)
    assert minilm_be(tb, return_type=None) is None
    _, be_cache = minilm_be.run_with_cache(tb, return_type=None)
    assert isinstance(be_cache, EncoderActivationCache)
    with pytest.raises(PostLayerNormError, match="post-LN"):
        be_cache.decompose_resid()
    fired: dict[str, tuple[int, ...]] = {}

    def record(t, hook):
        fired[hook.name] = tuple(t.shape)

    out = minilm_be.run_with_hooks(
        tb,
        return_type=None,
        fwd_hooks=[("hook_embedding", record), ("blocks.0.mlp.hook_post", record)],
    )
    b, p = tb.input_ids.shape
    assert out is None
    assert fired == {
        "hook_embedding": (b, minilm_be.cfg.d_model),
        "blocks.0.mlp.hook_post": (b, p, minilm_be.cfg.d_mlp),
    }
    raises_bad_return_type(minilm_be, tb, "score")


@pytest.mark.parametrize("fixture", ["tiny_ce", "tiny_ce2_dir"])
def test_cross_encoder_logits(request, fixture):
    from mechir_nig import HookedCrossEncoder

    obj = request.getfixturevalue(fixture)
    ce = obj if isinstance(obj, HookedCrossEncoder) else HookedCrossEncoder.from_pretrained(obj)
    tb = ce.tokenize(QUERIES, DOCS)
    logits = ce(tb, return_type="logits")
    assert logits.shape == (len(QUERIES), ce.cfg.n_labels)
    assert torch.allclose(ce.score_from_logits(logits), ce(tb), atol=TOL)
    raises_bad_return_type(ce, tb, "loss")


# -- hook_full_embed -----------------------------------------------------------------------------------
def test_hook_full_embed_is_resid_pre_0(tiny_ce, batch, cache):
    b, p = batch.input_ids.shape
    full = cache["hook_full_embed"]
    assert full.shape == (b, p, tiny_ce.cfg.d_model)
    assert torch.equal(full, cache["blocks.0.hook_resid_pre"])


# -- opt-in hook_result (per-head outputs) --------------------------------------------------------------
def test_attn_result_per_head(tiny_ce, batch):
    cfg = tiny_ce.cfg
    b, p = batch.input_ids.shape
    head = 1
    assert not cfg.use_attn_result
    ref_scores, ref_cache = tiny_ce.run_with_cache(batch)
    assert "blocks.0.attn.hook_result" not in ref_cache  # off by default: never fires

    def zero_z(z, hook):
        z[:, :, head] = 0.0
        return z

    z_ablated = tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_z", zero_z)])
    try:
        tiny_ce.set_use_attn_result(True)
        scores, cache = tiny_ce.run_with_cache(batch)
        assert (scores - ref_scores).abs().max().item() <= TOL
        for layer in range(cfg.n_layers):
            result = cache[f"blocks.{layer}.attn.hook_result"]
            assert result.shape == (b, p, cfg.n_heads, cfg.d_model)
            b_O = tiny_ce.blocks[layer].attn.b_O
            attn_out = cache[f"blocks.{layer}.hook_attn_out"]
            assert (result.sum(2) + b_O - attn_out).abs().max().item() <= TOL
            assert (attn_out - ref_cache[f"blocks.{layer}.hook_attn_out"]).abs().max().item() <= TOL

        def zero_result(r, hook):
            r[:, :, head] = 0.0
            return r

        r_ablated = tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_result", zero_result)])
        assert (r_ablated - z_ablated).abs().max().item() <= TOL
        assert (r_ablated - ref_scores).abs().max().item() > 1e-4  # the ablation did something
    finally:
        tiny_ce.set_use_attn_result(False)
    assert not cfg.use_attn_result
    assert (tiny_ce(batch) - ref_scores).abs().max().item() <= TOL


# -- opt-in hook_mlp_in ---------------------------------------------------------------------------------
def test_hook_mlp_in(tiny_ce, batch):
    cfg = tiny_ce.cfg
    assert not cfg.use_hook_mlp_in
    ref_scores, ref_cache = tiny_ce.run_with_cache(batch)
    assert "blocks.0.hook_mlp_in" not in ref_cache
    try:
        tiny_ce.set_use_hook_mlp_in(True)
        scores, cache = tiny_ce.run_with_cache(batch)
        assert (scores - ref_scores).abs().max().item() <= TOL
        for layer in range(cfg.n_layers):
            assert torch.equal(cache[f"blocks.{layer}.hook_mlp_in"], cache[f"blocks.{layer}.hook_resid_mid"])

        def zero_half(x, hook):  # not a rescaling: ln1 would undo that
            x[..., : cfg.d_model // 2] = 0.0
            return x

        edited = tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.1.hook_mlp_in", zero_half)])
        assert (edited - ref_scores).abs().max().item() > 1e-4  # the hook sits on the computation path
    finally:
        tiny_ce.set_use_hook_mlp_in(False)
    assert not cfg.use_hook_mlp_in
    _, after = tiny_ce.run_with_cache(batch)
    assert "blocks.0.hook_mlp_in" not in after


# -- hooks are removed when an ablation raises ----------------------------------------------------------
def test_hooks_removed_after_exception(tiny_ce, batch):
    before = tiny_ce(batch)

    def zero(t, hook):
        return torch.zeros_like(t)

    with pytest.raises(RuntimeError, match="boom"):
        with tiny_ce.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", zero), ("blocks.1.hook_attn_out", zero)]):
            ablated = tiny_ce(batch)
            assert (ablated - before).abs().max().item() > 1e-4
            raise RuntimeError("boom")
    assert no_hooks_left(tiny_ce)
    assert torch.equal(tiny_ce(batch), before)

    def explode(t, hook):
        raise RuntimeError("boom in hook")

    with pytest.raises(RuntimeError, match="boom in hook"):
        tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.0.mlp.hook_post", explode)])
    assert no_hooks_left(tiny_ce)
    assert torch.equal(tiny_ce(batch), before)
