"""LayerNorm sites (issue 17): ``blocks.{l}.ln1/ln2.hook_scale`` and ``hook_normalized`` against Hugging Face's
BERT computed by hand, and ``patch`` / ``ablate`` / NIG / attribution patching of them against hand-written
HF hooks that recompute the LayerNorm. (The other families' norms: test_every_family.)"""

from __future__ import annotations

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import InputError
from mechir_nig.interventions import perturb
from mechir_nig.interventions.ablation import ablate
from mechir_nig.interventions.attribution_patching import attribution_patch
from mechir_nig.interventions.patching import patch
from mechir_nig.sets import ComponentSet
from mechir_nig.sites import hook_name

Q, D = QUERIES[:2], DOCS[:2]


def _norms(hf, layer):
    """HF BERT's (ln1, ln2) of ``layer``: the LayerNorms after attention and after the MLP."""
    lay = hf.bert.encoder.layer[layer]
    return {"ln1": lay.attention.output.LayerNorm, "ln2": lay.output.LayerNorm}


def _hf_score(hf, batch, hooks=()):
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        with torch.no_grad():
            return hf_hooks.score(hf, batch)
    finally:
        for h in handles:
            h.remove()


def _hf_inputs(hf, batch, layer):
    """The input ``[batch, pos, d_model]`` and output of HF's ln1 and ln2 of ``layer`` on ``batch``."""
    got = {}

    def keep(name):
        def hook(mod, args, out):
            got[name] = (args[0].detach(), out.detach())

        return hook

    _hf_score(hf, batch, [(m, keep(n)) for n, m in _norms(hf, layer).items()])
    return got


def _ln_with_scale(mod, x, scale):
    """HF LayerNorm ``mod`` of ``x`` with its scale given (``[..., 1]``): ``w (x − mean) scale + b``."""
    return (x - x.mean(-1, keepdim=True)) * scale * mod.weight + mod.bias


def test_hook_scale_and_normalized_equal_hf_by_hand(ce64, hf64):
    batch = ce64.tokenize(QUERIES, DOCS)
    names = [
        hook_name(f"{ln}_{w}", layer)
        for ln in ("ln1", "ln2")
        for w in ("scale", "normalized")
        for layer in (0, 1)
    ]
    scores, cache = ce64.run_with_cache(batch, names_filter=names + ["embed.ln.hook_scale"])
    torch.testing.assert_close(scores, _hf_score(hf64, batch), rtol=0, atol=1e-12)  # the explicit path too
    eps = hf64.config.layer_norm_eps
    for layer in (0, 1):
        for ln, (x, out) in _hf_inputs(hf64, batch, layer).items():
            by_hand = 1 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)  # [batch, pos, 1]
            scale = cache[hook_name(f"{ln}_scale", layer)]
            assert scale.shape == (*batch.input_ids.shape, 1)
            torch.testing.assert_close(scale, by_hand, rtol=1e-12, atol=0)
            torch.testing.assert_close(cache[hook_name(f"{ln}_normalized", layer)], out, rtol=0, atol=1e-12)
    assert cache["embed.ln.hook_scale"].shape == (*batch.input_ids.shape, 1)
    # without a scale hook the fused layer_norm runs: the same scores
    torch.testing.assert_close(ce64(batch), scores, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def aligned(ce64):
    return perturb.align(ce64, Q, D, lambda q, d: q.split()[-1] + " " + d)


@pytest.mark.parametrize("ln", ["ln1", "ln2"])
def test_patch_scale_equals_hf_hook_recomputing_the_norm(ce64, hf64, aligned, ln):
    """Patching ``{ln}_scale`` at (layer, pos) with the clean run's value = the corrupted HF run whose
    LayerNorm at that position is recomputed with the clean run's ``1/sqrt(var + eps)``."""
    res = patch(ce64, aligned, sites=f"{ln}_scale", metric="raw")
    values = res[f"{ln}_scale"]  # [batch, layer, pos]
    base = _hf_score(hf64, aligned.perturbed)
    n_pos = aligned.clean.input_ids.shape[1]
    assert values.shape == (2, ce64.cfg.n_layers, n_pos)
    eps = hf64.config.layer_norm_eps
    checked = 0
    for layer in range(ce64.cfg.n_layers):
        x_src, _ = _hf_inputs(hf64, aligned.clean, layer)[ln]
        src_scale = 1 / torch.sqrt(x_src.var(-1, unbiased=False, keepdim=True) + eps)
        mod = _norms(hf64, layer)[ln]
        for row in range(2):
            for pos in range(n_pos):
                if not aligned.perturbed.attention_mask[row, pos]:
                    continue

                def put(m, args, out, row=row, pos=pos, s=src_scale):
                    out = out.clone()
                    out[row, pos] = _ln_with_scale(m, args[0][row, pos], s[row, pos])
                    return out

                patched = _hf_score(hf64, aligned.perturbed, [(mod, put)])
                torch.testing.assert_close(
                    values[row, layer, pos].double(), patched[row] - base[row], rtol=0, atol=1e-5
                )
                checked += 1
    assert checked > 10 and values.abs().max() > 1e-4  # the scale matters somewhere


def test_patch_normalized_and_attribution_patching_take_ln_sites(ce64, aligned):
    """``ln2_normalized`` is the block's output: patching it equals patching the next ``resid_pre``; the
    attribution estimate of ``ln1_scale`` is ``(a_src − a_base) · ∂F/∂a`` at the base run (by hand)."""
    res = patch(ce64, aligned, sites=["ln2_normalized", "resid_pre"], metric="raw")
    torch.testing.assert_close(res["ln2_normalized"][:, 0], res["resid_pre"][:, 1], rtol=0, atol=1e-9)

    est = attribution_patch(ce64, aligned, sites="ln1_scale", metric="raw")
    name = hook_name("ln1_scale", 1)
    _, src = ce64.run_with_cache(aligned.clean, names_filter=[name])
    got = {}

    def keep(act, hook):
        act.retain_grad()
        got["a"] = act
        return act

    def leaf(act, hook):  # the parameters are frozen: differentiate from the block's input
        return act.detach().requires_grad_(True)

    with torch.enable_grad():
        hooks = [(hook_name("resid_pre", 1), leaf), (name, keep)]
        ce64.run_with_hooks(aligned.perturbed, fwd_hooks=hooks).sum().backward()
    a = got["a"]
    by_hand = ((src[name] - a.detach()) * a.grad).sum(-1)  # [batch, pos]
    by_hand = by_hand * aligned.perturbed.attention_mask
    torch.testing.assert_close(
        est["ln1_scale"][:, 1].double(), by_hand, rtol=1e-5, atol=1e-7
    )  # float32 result


def test_ablate_scale_zero_equals_hf_norm_set_to_its_bias(ce64, hf64):
    """Zeroing ``ln2_scale`` at positions 1 and 2 of layer 0 leaves the norm's bias there."""
    batch = ce64.tokenize(Q, D)
    members = ComponentSet(
        [(0, 1), (0, 2)], kind="ln2_scale", n_layers=ce64.cfg.n_layers, width=ce64.cfg.n_ctx
    )
    with ablate(ce64, members, mode="zero"):
        ours = ce64(batch)
    mod = _norms(hf64, 0)["ln2"]

    def put(m, args, out):
        out = out.clone()
        out[:, 1:3] = m.bias
        return out

    ref = _hf_score(hf64, batch, [(mod, put)])
    assert (ref - _hf_score(hf64, batch)).abs().max() > 1e-4
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_nig_of_a_post_ln_norm_output_is_complete(ce64):
    """``ln1_normalized`` of a post-LN block feeds both the MLP and the skip: a cut of the network, so its
    summed conductance is F(x) − F(x') up to the rule's error (as resid_pre: test_nig_sites)."""
    from mechir_nig import neuron_integrated_gradients

    attr = neuron_integrated_gradients(
        ce64, Q, D, n_steps=64, sites=("ln1_normalized", "ln1_scale"), reduce="neuron"
    )
    gap = attr.scores - attr.baseline_scores
    total = attr.site("ln1_normalized")  # [batch, layer]
    assert ((total - gap[:, None]).abs() / gap.abs()[:, None]).max() < 2e-2
    assert attr.site("ln1_scale").abs().sum() > 0


def test_missing_hook_is_a_clear_error(ce64):
    """A hook a model lacks is refused before any forward, naming it (ModernBERT's first block has no
    ln1: test_every_family patches it)."""
    from mechir_nig.interventions.engine import require_hooks

    require_hooks(ce64, [hook_name("ln1_scale", 1), "embed.ln.hook_normalized"])
    with pytest.raises(InputError, match=r"blocks\.1\.ln3\.hook_scale"):
        require_hooks(ce64, ["blocks.1.ln3.hook_scale"])


def test_path_patch_into_a_layer_norm_scale_equals_two_passes_by_hand(ce64, aligned):
    """Heads of layer 0 path-patched into ``("ln1_scale", 1)`` (post-LN: the norm after layer 1's attention)
    = pass 1 (the head from the clean run, downstream heads and MLPs at the corrupted run's values, the
    scale recorded) then pass 2 (the corrupted run with only that scale written), by hand with hooks."""
    from mechir_nig.interventions.path_patching import path_patch

    res = path_patch(ce64, aligned, senders="heads", receivers=("ln1_scale", 1), metric="raw", layers=[0])
    values = res["ln1_scale:L1"]["heads"]  # [batch, layer, n_heads]
    base, src = aligned.perturbed, aligned.clean
    names = ["blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.1.attn.hook_z"]
    _, b_cache = ce64.run_with_cache(base, names_filter=names)
    _, s_cache = ce64.run_with_cache(src, names_filter=names[:1])
    base_score = ce64(base)
    for head in range(ce64.cfg.n_heads):
        got = {}

        def sender(z, hook, head=head):
            z = z.clone()
            z[:, :, head] = s_cache["blocks.0.attn.hook_z"][:, :, head]
            return z

        pass1 = [("blocks.0.attn.hook_z", sender)]
        pass1 += [(n, lambda a, hook: b_cache[hook.name]) for n in names[1:]]
        pass1.append(("blocks.1.ln1.hook_scale", lambda a, hook, got=got: got.setdefault("s", a)))
        ce64.run_with_hooks(base, fwd_hooks=pass1)
        patched = ce64.run_with_hooks(
            base, fwd_hooks=[("blocks.1.ln1.hook_scale", lambda a, hook, got=got: got["s"])]
        )
        torch.testing.assert_close(values[:, 0, head].double(), patched - base_score, rtol=1e-5, atol=1e-6)
    assert values.abs().max() > 1e-4
    with pytest.raises(InputError, match="does not feed"):  # layer 1's heads read ln1 of layer 1 too late
        path_patch(ce64, aligned, senders="mlp_out", receivers=("ln1_scale", 1), layers=[1])
