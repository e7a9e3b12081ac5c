"""The GPU path, covered on the CPU: SDPA attention vs the explicit path, low-precision dtypes (bf16, fp16,
autocast) for scoring, NIG, ablation and patching with error bounds on the real MiniLM, overflow errors,
and the window staging of the NIG kernel (pinned, side-stream copies on CUDA; a no-op on the CPU).

Tests that need CUDA run only where it is available (they are the GPU half of the same checks).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import HookedBiEncoder, HookedCrossEncoder, InputError
from mechir_nig.attribution import NeuronIntegratedGradients
from mechir_nig.attribution.nig.kernel import staged
from mechir_nig.attribution.nig.plan import WindowPlan
from mechir_nig.errors import PrecisionError
from mechir_nig.interventions import ablate, perturb
from mechir_nig.interventions.patching import patch
from mechir_nig.models.precision import check_dtype
from mechir_nig.sets import NeuronSet
from mechir_nig.testing import FAMILIES, family_tokenizer, make_tiny_checkpoint

MIXED_Q = QUERIES[:3] + ["neuron"]
MIXED_D = DOCS[:3] + ["Neurons fire."]
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """family -> (cross-encoder folder, bi-encoder folder), tiny and seeded."""
    out = {}
    for f in FAMILIES:
        tok = family_tokenizer(f)
        emb = 16 if f == "electra" else None
        out[f] = tuple(
            make_tiny_checkpoint(
                tmp_path_factory.mktemp(f"{f}{n}"), f, tok, n_labels=n, seed=5, embedding_size=emb
            )
            for n in (1, 0)
        )
    return out


class SDPASpy:
    """Counts calls of ``scaled_dot_product_attention`` (and forwards them)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.real = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def close(ours, ref, tol):
    """``max |ours − ref| <= tol · max(1, max |ref|)``."""
    scale = max(1.0, ref.abs().max().item())
    err = (ours - ref).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3e} > {tol} x {scale:.3e}"


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# -- SDPA vs the explicit path ---------------------------------------------------------------------------
def _cross_outputs(ce, batch, with_nig):
    names = ("hook_z", "hook_attn_out")
    scores, cache = ce.run_with_cache(batch, names_filter=lambda n: n.endswith(names))
    x = ce.word_embeddings(batch.input_ids).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(ce.score_embeds(x, batch.token_type_ids, batch.attention_mask).sum(), x)
    nig = NeuronIntegratedGradients(ce).attribute(batch, n_steps=6, heads=True) if with_nig else None
    return scores, dict(cache.items()), grad, nig


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_equals_explicit_cross_encoder(family_dirs, family, dtype, monkeypatch):
    """Scores, cached hook_z / hook_attn_out, input gradients and (float64) NIG of neurons and heads agree
    between the two attention paths (1e-6 in float32, 1e-12 in float64) on every family."""
    ce = HookedCrossEncoder.from_pretrained(family_dirs[family][0], dtype=dtype)
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    assert (batch.attention_mask == 0).any()  # padding is masked
    spy = SDPASpy(monkeypatch)
    out = {}
    for impl in ("sdpa", "explicit"):
        ce.set_attention_impl(impl)
        before = spy.calls
        out[impl] = _cross_outputs(ce, batch, with_nig=dtype == torch.float64)
        assert (spy.calls > before) == (impl == "sdpa")  # each path really ran
    (s, c, g, a), (s_ref, c_ref, g_ref, a_ref) = out["sdpa"], out["explicit"]
    tol = TOL[dtype]
    close(s, s_ref, tol)
    assert set(c) == set(c_ref) and len(c) == 2 * ce.cfg.n_layers
    for name in c:
        close(c[name], c_ref[name], tol)
    close(g, g_ref, tol)
    if a is not None:
        close(a.values, a_ref.values, tol)
        close(a.head_values, a_ref.head_values, tol)
        assert a_ref.values.abs().max() > 1e-4  # not trivially zero


@pytest.mark.parametrize("family", FAMILIES)
def test_sdpa_equals_explicit_bi_encoder(family_dirs, family):
    be = HookedBiEncoder.from_pretrained(family_dirs[family][1], dtype=torch.float64)
    batch = be.tokenize(MIXED_D)
    emb = {}
    for impl in ("sdpa", "explicit"):
        be.set_attention_impl(impl)
        emb[impl] = be(batch)
    close(emb["sdpa"], emb["explicit"], 1e-12)


def test_masked_alignment_slots_agree_between_paths(tiny_ce_dir):
    """Aligned inputs (masked slots inside the pair, explicit positions) score alike on both paths."""
    ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype=torch.float64)
    al = perturb.align(ce, QUERIES[:3], DOCS[:3], lambda q, d: perturb.tfc1(q, d, where="start"))
    inner = (al.clean.attention_mask == 0) & (
        torch.arange(al.clean.input_ids.shape[1]) < al.clean.lengths[:, None]
    )
    assert inner.any()  # masked slots inside the pairs, not only padding
    out = {}
    for impl in ("sdpa", "explicit"):
        ce.set_attention_impl(impl)
        out[impl] = torch.stack([ce(al.clean), ce(al.perturbed)])
    close(out["sdpa"], out["explicit"], 1e-12)


def test_pattern_hook_forces_the_explicit_path(tiny_ce_dir, monkeypatch):
    """auto: a forward or backward hook on hook_pattern / hook_attn_scores switches its layer to the explicit
    path, and the hook sees the pattern; other layers keep SDPA; run_with_cache still caches patterns."""
    ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir)
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    n_layers = ce.cfg.n_layers
    spy = SDPASpy(monkeypatch)
    ce(batch)
    assert spy.calls == n_layers  # nothing hooked: SDPA everywhere
    seen = {}

    def look(pattern, hook):
        seen[hook.name] = pattern.detach().clone()

    spy.calls = 0
    ce.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", look)])
    assert spy.calls == n_layers - 1  # layer 0 explicit, the others SDPA
    p = seen["blocks.0.attn.hook_pattern"]
    b, n_pos = batch.input_ids.shape
    assert p.shape == (b, ce.cfg.n_heads, n_pos, n_pos)
    close(p.sum(-1), torch.ones(b, ce.cfg.n_heads, n_pos), 1e-6)
    masked = ~batch.attention_mask.bool()  # [batch, key_pos]: padded keys get no attention
    assert masked.any() and (p.masked_select(masked[:, None, None, :].expand_as(p)) == 0).all()

    spy.calls = 0
    ce.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_attn_scores", look)])
    assert spy.calls == n_layers - 1 and "blocks.1.attn.hook_attn_scores" in seen

    spy.calls = 0
    _, cache = ce.run_with_cache(batch)  # caches every hook, patterns included
    assert spy.calls == 0 and f"blocks.{n_layers - 1}.attn.hook_pattern" in cache

    grads = {}

    def keep_grad(grad, hook):
        grads[hook.name] = grad.detach().clone()

    spy.calls = 0
    with ce.hooks(bwd_hooks=[("blocks.0.attn.hook_pattern", keep_grad)]):
        x = ce.word_embeddings(batch.input_ids).requires_grad_(True)
        ce.score_embeds(x, batch.token_type_ids, batch.attention_mask).sum().backward()
    assert spy.calls == n_layers - 1  # a backward hook forces the explicit path too
    assert grads["blocks.0.attn.hook_pattern"].shape == p.shape
    spy.calls = 0
    ce(batch)
    assert spy.calls == n_layers  # hooks gone: SDPA again


def test_attention_impl_switch(tiny_ce_dir, monkeypatch):
    ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir)
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    assert ce.cfg.attn_impl == "auto"
    spy = SDPASpy(monkeypatch)
    ce.set_attention_impl("explicit")
    ce(batch)
    assert spy.calls == 0
    ce.set_attention_impl("sdpa")
    ce(batch)
    assert spy.calls == ce.cfg.n_layers
    with pytest.raises(InputError, match="set_attention_impl"):
        ce.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: None)])
    assert not any(hp.has_hooks() for hp in ce.hook_points())  # nothing left behind
    with pytest.raises(InputError, match="auto"):
        ce.set_attention_impl("flash")
    assert "attn_impl" not in ce.cfg.to_dict()  # not part of the model's identity (fingerprints)


# -- dtypes -----------------------------------------------------------------------------------------------
def test_check_dtype():
    assert check_dtype("bf16") is torch.bfloat16 and check_dtype("torch.float16") is torch.float16
    assert check_dtype(torch.float64) is torch.float64
    for bad in (torch.int8, torch.float8_e4m3fn, "float8", 16, None):
        with pytest.raises(InputError, match="dtype must be one of"):
            check_dtype(bad)


def test_unsupported_dtype_is_refused_at_load(tiny_ce_dir, minilm_path):
    with pytest.raises(InputError, match="dtype must be one of"):
        HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype=torch.int32)
    with pytest.raises(InputError, match="dtype must be one of"):
        HookedBiEncoder.from_pretrained(minilm_path, dtype="int8")
    assert HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype="bf16").cfg.dtype == torch.bfloat16


def _every_operation(ce):
    """Scores, NIG, ablated scores and patched scores of ``ce`` (in whatever precision it runs)."""
    s = ce.score(QUERIES, DOCS)
    attr = NeuronIntegratedGradients(ce).attribute(ce.tokenize(QUERIES, DOCS), n_steps=4, heads=True)
    nset = NeuronSet([(0, 1), (1, 3), (1, 7)], n_layers=ce.cfg.n_layers, d_mlp=ce.cfg.d_mlp)
    with ablate(ce, nset, mode="baseline") as ab:
        ablated = ab.score(QUERIES, DOCS)
    al = perturb.align(ce, QUERIES[:3], DOCS[:3], lambda q, d: perturb.tfc1(q, d, where="start"))
    res = patch(ce, al, sites=["resid_pre", "heads"], metric="raw")
    return s, attr, ablated, res


@pytest.mark.parametrize(
    "precision", ["bf16", "fp16", "autocast-bf16", "autocast-fp16"], ids=lambda p: p.replace("-", "_")
)
def test_every_operation_runs_in_low_precision(tiny_ce, tiny_ce_dir, precision):
    """bf16 and fp16 models, and the float32 model under torch.autocast, score, attribute, ablate and
    patch on the CPU; results come back in float32 and close to the float32 model's."""
    dtype = torch.bfloat16 if precision.endswith("bf16") else torch.float16
    if precision.startswith("autocast"):
        model, ctx = tiny_ce, torch.autocast("cpu", dtype=dtype)
    else:
        model, ctx = HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype=dtype), contextlib.nullcontext()
        assert model.embed.W_E.dtype == dtype
    with ctx:
        s, attr, ablated, res = _every_operation(model)
    ref = _every_operation(tiny_ce)
    assert s.dtype == attr.values.dtype == ablated.dtype == res.values["resid_pre"].dtype == torch.float32
    bound = 0.05 if dtype == torch.bfloat16 else 0.01  # tiny random model: loose; real bounds below
    assert rel_l2(s, ref[0]) < bound
    assert rel_l2(attr.per_neuron(), ref[1].per_neuron()) < 4 * bound
    assert rel_l2(ablated, ref[2]) < bound
    assert rel_l2(res.patched["heads"], ref[3].patched["heads"]) < bound


@pytest.fixture()
def overflowing(tiny_ce_dir):
    """The tiny model in float16 with one MLP output scaled so its activations pass 65504 (fine in fp32)."""

    def load(dtype):
        ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype=dtype)
        with torch.no_grad():
            ce.blocks[0].mlp.W_out.mul_(3e4)
        return ce

    return load


def test_float16_overflow_is_an_error_not_garbage(overflowing):
    f32 = overflowing(torch.float32)
    assert torch.isfinite(f32.score(QUERIES, DOCS)).all()  # float32 holds the same model
    ce = overflowing(torch.float16)
    with pytest.raises(PrecisionError, match="bfloat16"):
        ce.score(QUERIES, DOCS)
    with pytest.raises(PrecisionError, match="NIG"):
        NeuronIntegratedGradients(ce).attribute(ce.tokenize(QUERIES, DOCS), n_steps=2)
    with pytest.raises(PrecisionError, match="patching"):
        patch(ce, perturb.align(f32, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d)))
    nset = NeuronSet([(1, 1)], n_layers=ce.cfg.n_layers, d_mlp=ce.cfg.d_mlp)
    with pytest.raises(PrecisionError), ablate(ce, nset) as ab:
        ab.score(QUERIES, DOCS)
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(PrecisionError, match="autocast"):
        f32.score(QUERIES, DOCS)


# error bounds on the real MiniLM body (docs/nig.md, "Low precision"): about twice the measured figures
BOUNDS = {  # relative L2 unless said otherwise
    torch.bfloat16: {
        "scores": 0.012,
        "nig": 0.03,
        "ablated": 0.016,
        "ablation_effect": 0.1,
        "patched": 0.015,
        "patch_effect_abs": 0.04,  # max |effect error| / max |score|
    },
    torch.float16: {
        "scores": 0.002,
        "nig": 0.005,
        "ablated": 0.002,
        "ablation_effect": 0.012,
        "patched": 0.002,
        "patch_effect_abs": 0.005,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_error_bounds_real_minilm(minilm_ce, minilm_ce_dir, dtype):
    """Against float32 on the real MiniLM body: scores, per-neuron NIG, scores and effects under a 1 %
    baseline ablation, patched scores of TFC1 and their effects (fp16 NIG on 2 pairs at 8 steps: float16
    matrix products are slow on the CPU)."""
    low = HookedCrossEncoder.from_pretrained(minilm_ce_dir, dtype=dtype)
    bound = BOUNDS[dtype]
    models = {dtype: low, torch.float32: minilm_ce}
    scores = {k: m.score(QUERIES, DOCS) for k, m in models.items()}
    assert rel_l2(scores[dtype], scores[torch.float32]) < bound["scores"]
    n, steps = (4, 16) if dtype == torch.bfloat16 else (2, 8)
    nig = {
        k: NeuronIntegratedGradients(m)
        .attribute(m.tokenize(QUERIES[:n], DOCS[:n]), n_steps=steps)
        .per_neuron()
        for k, m in models.items()
    }
    assert rel_l2(nig[dtype], nig[torch.float32]) < bound["nig"]
    cfg = minilm_ce.cfg
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(cfg.n_layers * cfg.d_mlp, generator=g)[: cfg.n_layers * cfg.d_mlp // 100]
    nset = NeuronSet(
        [(int(i) // cfg.d_mlp, int(i) % cfg.d_mlp) for i in flat], n_layers=cfg.n_layers, d_mlp=cfg.d_mlp
    )
    abl = {}
    for k, m in models.items():
        with ablate(m, nset, mode="baseline") as ab:
            abl[k] = ab.score(QUERIES, DOCS)
    assert rel_l2(abl[dtype], abl[torch.float32]) < bound["ablated"]
    effect = {k: abl[k] - scores[k] for k in models}
    assert rel_l2(effect[dtype], effect[torch.float32]) < bound["ablation_effect"]
    res = {
        k: patch(
            m,
            perturb.align(m, QUERIES, DOCS, lambda q, d: perturb.tfc1(q, d, where="start")),
            sites=["resid_pre", "heads"],
            metric="raw",
        )
        for k, m in models.items()
    }
    scale = scores[torch.float32].abs().max()
    for site in ("resid_pre", "heads"):
        assert rel_l2(res[dtype].patched[site], res[torch.float32].patched[site]) < bound["patched"]
        err = (res[dtype].values[site] - res[torch.float32].values[site]).abs().max()
        assert err / scale < bound["patch_effect_abs"]


# -- window staging ---------------------------------------------------------------------------------------
def test_staging_on_the_cpu_is_the_plain_loop():
    """On the CPU ``staged`` hands out the plan's own index tensors: no copy, no pinning, same order."""
    plan = WindowPlan.grid(torch.tensor([5, 9, 7]), n_points=4, window=5)
    out = list(staged(plan, torch.device("cpu")))
    assert [w.index for w, *_ in out] == list(range(len(plan)))
    for w, pairs, local, points in out:
        assert pairs is w.pairs and local is w.local and points is w.points
        assert not pairs.is_pinned()
    assert list(staged([], torch.device("cpu"))) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU half of the staging test)")
def test_staging_on_cuda_equals_the_cpu(tiny_ce_dir):
    plan = WindowPlan.grid(torch.tensor([5, 9, 7]), n_points=4, window=5)
    dev = torch.device("cuda")
    for (_, p, lo, pt), (_, p0, lo0, pt0) in zip(staged(plan, dev), staged(plan, torch.device("cpu"))):
        assert p.device.type == "cuda" and torch.equal(p.cpu(), p0) and torch.equal(lo.cpu(), lo0)
        assert torch.equal(pt.cpu(), pt0)
    cpu = HookedCrossEncoder.from_pretrained(tiny_ce_dir)
    gpu = HookedCrossEncoder.from_pretrained(tiny_ce_dir, device="cuda")
    a = NeuronIntegratedGradients(cpu).attribute(
        cpu.tokenize(QUERIES, DOCS), n_steps=8, internal_batch_size=5
    )
    b = NeuronIntegratedGradients(gpu).attribute(
        gpu.tokenize(QUERIES, DOCS), n_steps=8, internal_batch_size=5
    )
    close(b.values, a.values, 1e-4)
