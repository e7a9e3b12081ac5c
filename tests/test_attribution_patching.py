"""Attribution patching: estimates against hand-written HF hooks, the exact patch on a linear path, the
exact verification of the top estimates and AtP*'s QK fix."""

from __future__ import annotations

import math

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.interventions import attribution_patching as ap
from mechir_nig.interventions import perturb
from mechir_nig.interventions.attribution_patching import attribution_patch
from mechir_nig.interventions.patching import PatchingResult, patch
from mechir_nig.sites import hook_name
from mechir_nig.statistics import correlation as spearman
from mechir_nig.testing import make_tiny_checkpoint


def _edit(q: str, d: str) -> str:
    if q.startswith("what"):
        return perturb.tfc1(q, d, where="start")
    if q.startswith("how"):
        return perturb.remove_term(q, d, "massive")
    return d.replace("water", "milk")


@pytest.fixture(scope="module")
def al64(ce64):
    return perturb.align(ce64, QUERIES[:3], DOCS[:3], _edit)


# site -> (the hf_hooks site, how one index sums (a_source - a_base) * grad)
_HAND = {
    "resid_pre": ("resid_pre", lambda p: p.sum(-1)),
    "attn_out": ("attn_out", lambda p: p.sum(-1)),
    "mlp_out": ("mlp_out", lambda p: p.sum(-1)),
    "heads": ("z", lambda p: p.sum((1, 3))),
    "head_pos": ("z", lambda p: p.sum(-1).transpose(1, 2)),
    "neurons": ("mlp_post", lambda p: p.sum(1)),
    "q": ("q", lambda p: p.sum(-1).transpose(1, 2)),
    "k": ("k", lambda p: p.sum(-1).transpose(1, 2)),
    "v": ("v", lambda p: p.sum(-1).transpose(1, 2)),
}


@pytest.mark.parametrize(
    ("site", "direction"),
    [(s, "denoise") for s in _HAND] + [("resid_pre", "noise"), ("heads", "noise")],
)
def test_estimates_equal_hand_gradients_on_hf(ce64, hf64, al64, site, direction):
    base, source = (al64.perturbed, al64.clean) if direction == "denoise" else (al64.clean, al64.perturbed)
    hsite, reduce = _HAND[site]
    layers = range(ce64.cfg.n_layers)
    keys = [(hsite, layer) for layer in layers]
    _, src = hf_hooks.capture(hf64, source, keys)
    b_scores, got = hf_hooks.capture(hf64, base, keys, grad=True)
    hand = torch.stack([reduce((src[k] - got[k][0]) * got[k][1]) for k in keys], 1)
    est = attribution_patch(ce64, al64, sites=site, direction=direction, metric="raw", qk_fix=False)
    assert est[site].shape == hand.shape
    torch.testing.assert_close(est[site].double(), hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(est.base_scores.double(), b_scores, atol=1e-5, rtol=0)
    assert hand.abs().max() > 1e-3  # the perturbation moves something: the comparison is not of zeros
    # values are the patched (estimated) scores minus the base score, as patch's
    b = est.base_scores.reshape(-1, *[1] * (hand.dim() - 1))
    torch.testing.assert_close(est.patched[site] - b, est[site])


def test_recovery_divides_by_the_score_change(ce64, al64):
    raw = attribution_patch(ce64, al64, sites="resid_pre", metric="raw")
    rec = attribution_patch(ce64, al64, sites="resid_pre")
    delta = (rec.source_scores - rec.base_scores).reshape(-1, 1, 1)
    torch.testing.assert_close(rec["resid_pre"], raw["resid_pre"] / delta)


@pytest.fixture(scope="module")
def linear_be(tmp_path_factory, tokenizer):
    """A tiny dot-product bi-encoder whose last block's output LayerNorm is the identity (a permanent hook):
    from the last layer's MLP on, the score is linear in the activations."""
    from mechir_nig import HookedBiEncoder

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("lin_be"), "bert", tokenizer, n_labels=0)
    be = HookedBiEncoder.from_pretrained(folder, pooling="mean", similarity="dot", dtype=torch.float64)
    last = be.cfg.n_layers - 1
    seen: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        seen["resid_post"] = act
        return act

    be.add_hook(f"blocks.{last}.hook_resid_post", keep, is_permanent=True)
    be.add_hook(
        f"blocks.{last}.hook_normalized_resid_post", lambda act, hook: seen["resid_post"], is_permanent=True
    )
    return be


@pytest.mark.parametrize("site", ["mlp_out", "neurons"])
def test_linear_path_estimate_is_the_exact_patch(linear_be, site):
    al = perturb.align(linear_be, QUERIES[:2], DOCS[:2], _edit)
    last = [linear_be.cfg.n_layers - 1]
    exact = patch(linear_be, al, sites=site, layers=last, metric="raw")
    est = attribution_patch(linear_be, al, sites=site, layers=last, metric="raw")
    assert exact[site].abs().max() > 1e-3
    tol = 4 * torch.finfo(torch.float32).eps * float(exact.base_scores.abs().max())  # results are float32
    torch.testing.assert_close(est[site].double(), exact[site].double(), atol=tol, rtol=0)
    # an earlier layer is not linear: there the estimate is only an estimate
    first = attribution_patch(linear_be, al, sites=site, layers=[0], metric="raw")
    assert not torch.allclose(first[site], patch(linear_be, al, sites=site, layers=[0], metric="raw")[site])


def test_verify_top_reruns_exactly_k_patches(ce64, al64, monkeypatch):
    rows_run = []
    real = ap._run_rows

    def counting(*args, **kw):
        rows_run.append(args[7].shape[0])
        return real(*args, **kw)

    monkeypatch.setattr(ap, "_run_rows", counting)
    est = attribution_patch(ce64, al64, sites=["resid_pre", "heads"], verify_top=6)
    assert sum(rows_run) == 6
    v = est.meta["attribution"]["verify"]
    assert v["k"] == 6 and len(v["index"]) == len(v["estimate"]) == len(v["exact"]) == 6
    exact = patch(ce64, al64, sites=["resid_pre", "heads"])
    flat = {s: est[s] for s in ("resid_pre", "heads")}
    mags = sorted(
        (abs(float(t[tuple(i)])) for s, t in flat.items() for i in t.isfinite().nonzero().tolist()),
        reverse=True,
    )
    for (site, *idx), e, x in zip(v["index"], v["estimate"], v["exact"], strict=True):
        assert e == pytest.approx(float(est[site][tuple(idx)]))
        assert x == pytest.approx(float(exact[site][tuple(idx)]), abs=1e-9)
    assert sorted((abs(e) for e in v["estimate"]), reverse=True) == pytest.approx(mags[:6])
    assert v["spearman"] == pytest.approx(spearman(torch.tensor(v["estimate"]), torch.tensor(v["exact"])))
    errs = [abs(e - x) for e, x in zip(v["estimate"], v["exact"], strict=True)]
    assert v["max_abs_error"] == pytest.approx(max(errs)) and v["mean_abs_error"] == pytest.approx(
        sum(errs) / 6
    )


def test_verify_top_on_a_set_and_joint(ce64, al64):
    from mechir_nig.sets import NeuronSet

    nset = NeuronSet([(0, 3), (1, 5), (1, 7)], n_layers=ce64.cfg.n_layers, d_mlp=ce64.cfg.d_mlp)
    est = attribution_patch(ce64, al64, sites=["neurons", nset], metric="raw", joint=True, verify_top=3)
    for j, (layer, unit) in enumerate(nset):
        torch.testing.assert_close(est["neuron_set"][:, j], est["neurons"][:, layer, unit])
    torch.testing.assert_close(est["neuron_set_joint"], est["neuron_set"].sum(1))  # raw: patched - base
    exact = patch(ce64, al64, sites=["neurons", nset], metric="raw")
    for (site, *idx), x in zip(
        est.meta["attribution"]["verify"]["index"], est.meta["attribution"]["verify"]["exact"], strict=True
    ):
        assert x == pytest.approx(float(exact[site][tuple(idx)]), abs=1e-9)


def test_qk_fix_is_the_exact_pattern_change(ce64, al64):
    """With the QK fix, a key (query) patch's estimate is ``Σ (A' − A) · ∂F/∂A`` with ``A'`` the head's
    pattern recomputed by hand with that key (query) replaced."""
    layer = 1
    names = [hook_name(s, layer) for s in ("q", "k", "pattern")]
    base, source = al64.perturbed, al64.clean
    _, src = ce64.run_with_cache(source, names_filter=lambda n: n in names)
    acts = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act
        return act

    def leaf(act, hook):
        return act.detach().requires_grad_(True)

    with torch.enable_grad():
        out = ce64.run_with_hooks(
            base, fwd_hooks=[(hook_name("resid_pre", 0), leaf)] + [(n, keep) for n in names]
        )
        out.sum().backward()
    q, k, a = (acts[n].detach() for n in names)
    g = acts[names[2]].grad
    mask = torch.zeros(base.attention_mask.shape, dtype=torch.float64)
    mask = mask.masked_fill(~base.attention_mask.bool(), torch.finfo(torch.float64).min)[:, None, None, :]
    scale = 1 / math.sqrt(ce64.cfg.d_head)
    n_b, n_pos, n_h, _ = q.shape
    for site in ("k", "q"):
        hand = torch.zeros(n_b, n_h, n_pos, dtype=torch.float64)
        for b in range(n_b):
            for h in range(n_h):
                for p in range(n_pos):
                    qq, kk = q.clone(), k.clone()
                    (kk if site == "k" else qq)[b, p, h] = src[hook_name(site, layer)][b, p, h]
                    s = torch.einsum("qd,kd->qk", qq[b, :, h], kk[b, :, h]) * scale + mask[b, 0]
                    hand[b, h, p] = ((torch.softmax(s, -1) - a[b, h]) * g[b, h]).sum()
        valid = (src[hook_name(site, layer)] != acts[hook_name(site, layer)].detach()).any(-1)
        hand = torch.where(valid.transpose(1, 2) & base.attention_mask.bool()[:, None], hand, 0.0)
        est = attribution_patch(ce64, al64, sites=site, layers=[layer], metric="raw")
        assert est.meta["attribution"]["qk_fix"] == [layer]
        torch.testing.assert_close(est[site][:, 0].double(), hand, atol=1e-6, rtol=0)
        plain = attribution_patch(ce64, al64, sites=site, layers=[layer], metric="raw", qk_fix=False)
        assert plain.meta["attribution"]["qk_fix"] == []
        assert not torch.allclose(plain[site], est[site])


def test_result_saves_and_errors_say_what_to_fix(ce64, al64, tmp_path):
    est = attribution_patch(ce64, al64, sites="heads", verify_top=2)
    back = PatchingResult.load(est.save(tmp_path / "atp.safetensors"))
    torch.testing.assert_close(back["heads"], est["heads"])
    assert back.meta["attribution"]["verify"] == est.meta["attribution"]["verify"]
    with pytest.raises(InputError, match="verify_top"):
        attribution_patch(ce64, al64, verify_top=0)
    with pytest.raises(InputError, match="unknown site"):
        attribution_patch(ce64, al64, sites="nope")


def test_spearman_ties_and_constants():
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(1.0)
    assert math.isnan(spearman(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])))
    assert math.isnan(spearman(torch.tensor([1.0]), torch.tensor([1.0])))
