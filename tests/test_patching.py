"""Activation patching: vectorised sweeps equal a naive one-index-per-forward loop, own activations give the
base score, the NaN guard, save/load and the errors that say what to fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.interventions import perturb
from mechir_nig.interventions.patching import SITES, NoScoreChangeWarning, PatchingResult, patch
from mechir_nig.sets import NeuronSet

# pairs of different lengths in one batch; the edits inject, delete and substitute
PAIRS_Q = QUERIES[:3]
PAIRS_D = DOCS[:3]


def _joint_by_hand(model, base, source, template, members):
    """Scores ``[batch]`` of ``base``, one pair at a time, with every member ``(layer, unit)`` of hook
    ``template.format(layer)`` (unit on axis 2) set to ``source``'s activation: joint patching by hand."""
    names = {template.format(lyr) for lyr, _ in members}
    _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
    expected = []
    for b in range(len(base)):
        row = base.select([b])
        n = row.input_ids.shape[1]

        def hook(act, hook, b=b, n=n):
            act = act.clone()
            for lyr, unit in members:
                if hook.name == template.format(lyr):
                    act[0, :, unit] = cache[hook.name][b, :n, unit]
            return act

        expected.append(model.run_with_hooks(row, fwd_hooks=[(nm, hook) for nm in names])[0])
    return torch.stack(expected)


def _edit(q: str, d: str) -> str:
    if q.startswith("what"):
        return perturb.tfc1(q, d, where="start")
    if q.startswith("how"):
        return perturb.remove_term(q, d, "massive")
    return d.replace("water", "milk")  # one word piece for another


@pytest.fixture(scope="module")
def aligned(tiny_ce):
    return perturb.align(tiny_ce, PAIRS_Q, PAIRS_D, _edit)


def naive(model, base, source, site, layers, members=None, q_emb=None):
    """One patched index per full forward (from the embeddings), one pair at a time."""
    template, kind = SITES[site]
    names = {template.format(layer=layer) for layer in layers}
    _, cache = model.run_with_cache(source, names_filter=lambda n: n in names)
    rows = []
    for b in range(len(base)):
        row = base.select([b])
        n = row.input_ids.shape[1]
        per_layer = []
        for layer in layers:
            src = cache[template.format(layer=layer)][b, :n]
            if kind == "pos":
                idx = [(p,) for p in range(base.input_ids.shape[1])]
            elif kind == "head":
                idx = [(h,) for h in range(model.cfg.n_heads)]
            elif kind == "head_pos":
                idx = [(h, p) for h in range(model.cfg.n_heads) for p in range(base.input_ids.shape[1])]
            elif members is None:
                idx = [(k,) for k in range(model.cfg.d_mlp)]
            else:
                idx = [(k,) for lyr, k in members if lyr == layer]
            out = []
            for ix in idx:

                def hook(act, hook, ix=ix, src=src, n=n):
                    if kind == "pos":
                        if ix[0] < n:
                            act[0, ix[0]] = src[ix[0]]
                    elif kind == "head":
                        act[0, :, ix[0]] = src[:, ix[0]]
                    elif kind == "head_pos":
                        if ix[1] < n:
                            act[0, ix[1], ix[0]] = src[ix[1], ix[0]]
                    else:
                        act[0, :, ix[0]] = src[:, ix[0]]
                    return act

                o = model.run_with_hooks(row, fwd_hooks=[(template.format(layer=layer), hook)])
                out.append(float(o if q_emb is None else (o * q_emb[b]).sum(-1)))
            per_layer.append(out)
        rows.append(per_layer)
    if members is not None:
        return torch.tensor([sum(r, []) for r in rows])
    t = torch.tensor(rows)
    if kind == "head_pos":
        t = t.reshape(len(base), len(layers), model.cfg.n_heads, -1)
    return t


@pytest.mark.parametrize(
    ("site", "direction"),
    [(s, "denoise") for s in ("resid_pre", "attn_out", "mlp_out", "heads", "head_pos", "neurons")]
    + [(s, "noise") for s in ("resid_pre", "heads", "mlp_out")],
)
def test_vectorised_equals_naive_loop(tiny_ce, aligned, site, direction):
    res = patch(tiny_ce, aligned, sites=site, direction=direction, metric="raw")
    base, source = (
        (aligned.perturbed, aligned.clean) if direction == "denoise" else (aligned.clean, aligned.perturbed)
    )
    ref = naive(tiny_ce, base, source, site, range(tiny_ce.cfg.n_layers))
    assert res.patched[site].shape == ref.shape
    torch.testing.assert_close(res.patched[site], ref, atol=1e-5, rtol=0)
    # the metric is computed from the patched scores
    b = res.base_scores.reshape(-1, *[1] * (ref.dim() - 1))
    torch.testing.assert_close(res.values[site], ref - b, atol=1e-5, rtol=0)
    assert torch.equal(res.raw(site), res.values[site])


def test_neuron_set_equals_naive_loop(tiny_ce, aligned):
    d = tiny_ce.cfg.d_mlp
    nset = NeuronSet([(0, 3), (1, 0), (1, d - 1), (0, 17)], n_layers=tiny_ce.cfg.n_layers, d_mlp=d)
    res = patch(tiny_ce, aligned, sites=[nset, "heads"], metric="raw")
    assert res.members == sorted(nset) and res["neuron_set"].shape == (len(aligned), len(nset))
    ref = naive(tiny_ce, aligned.perturbed, aligned.clean, "neurons", [0, 1], members=list(nset))
    torch.testing.assert_close(res.patched["neuron_set"], ref, atol=1e-5, rtol=0)
    full = patch(tiny_ce, aligned, sites="neurons", metric="raw")
    expect = torch.stack([full.patched["neurons"][:, lyr, k] for lyr, k in nset], 1)
    torch.testing.assert_close(res.patched["neuron_set"], expect, atol=1e-5, rtol=0)


def test_joint_set_patch_equals_hand_hooks(tiny_ce, aligned):
    """joint=True: every member written at once, each pair run alone from the embeddings with hand hooks."""
    d = tiny_ce.cfg.d_mlp
    nset = NeuronSet([(0, 3), (1, 0), (1, d - 1), (0, 17)], n_layers=tiny_ce.cfg.n_layers, d_mlp=d)
    res = patch(tiny_ce, aligned, sites=nset, joint=True, direction="noise")
    assert res["neuron_set_joint"].shape == (len(aligned),)
    expected = _joint_by_hand(tiny_ce, aligned.clean, aligned.perturbed, "blocks.{}.mlp.hook_post", nset)
    torch.testing.assert_close(res.patched["neuron_set_joint"], expected, atol=1e-5, rtol=0)
    rec = (expected - res.clean_scores) / (res.corrupted_scores - res.clean_scores)
    torch.testing.assert_close(res["neuron_set_joint"], rec, atol=1e-4, rtol=0)
    # a one-neuron set: the joint patch is that member's own patch
    one = NeuronSet([(1, 5)], n_layers=tiny_ce.cfg.n_layers, d_mlp=d)
    single = patch(tiny_ce, aligned, sites=one, joint=True, metric="raw")
    torch.testing.assert_close(
        single.patched["neuron_set_joint"], single.patched["neuron_set"][:, 0], atol=1e-5, rtol=0
    )
    with pytest.raises(InputError, match="joint=True"):
        patch(tiny_ce, aligned, sites="heads", joint=True)


@pytest.mark.parametrize("site", ["resid_pre", "heads", "head_pos", "neurons", "mlp_out"])
def test_chunking_and_layers_do_not_change_results(tiny_ce, aligned, site):
    full = patch(tiny_ce, aligned, sites=site)
    small = patch(tiny_ce, aligned, sites=site, chunk_size=3)
    torch.testing.assert_close(small.patched[site], full.patched[site], atol=1e-5, rtol=0)
    one = patch(tiny_ce, aligned, sites=site, layers=[1])
    assert one.layers == [1]
    torch.testing.assert_close(one.patched[site][:, 0], full.patched[site][:, 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "heads", "head_pos", "neurons"])
def test_own_activations_give_the_base_score(tiny_ce, aligned, site):
    for batch in (aligned.clean, aligned.perturbed):
        ref = tiny_ce(batch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoScoreChangeWarning)
            res = patch(tiny_ce, batch, batch, sites=site, metric="raw", skip_unchanged=False)
        p = res.patched[site]
        torch.testing.assert_close(p, ref.reshape(-1, *[1] * (p.dim() - 1)).expand_as(p), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_minilm_own_activations_and_naive_resid(minilm_ce):
    al = perturb.align(minilm_ce, PAIRS_Q[:2], PAIRS_D[:2], _edit)
    res = patch(minilm_ce, al.clean, al.clean, sites="resid_pre", metric="raw", skip_unchanged=False)
    torch.testing.assert_close(
        res.values["resid_pre"], torch.zeros_like(res.values["resid_pre"]), atol=1e-5, rtol=0
    )
    res = patch(minilm_ce, al, sites="resid_pre", layers=[0, 5], metric="raw")
    ref = naive(minilm_ce, al.perturbed, al.clean, "resid_pre", [0, 5])
    torch.testing.assert_close(res.patched["resid_pre"], ref, atol=1e-5, rtol=0)


def test_skipped_positions_get_the_base_score_exactly(tiny_ce, aligned):
    res = patch(tiny_ce, aligned, sites="resid_pre", direction="noise", metric="raw")
    v = res.values["resid_pre"]
    masked = res.base_mask == 0  # padding and the clean side's slots
    assert (v[:, 0][masked] == 0).all() and (v[:, 1][masked] == 0).all()
    # at layer 0 only tokens whose embedding input differs (changed, or shifted by an insertion or
    # deletion before them) can move the score: every other position is exactly 0
    c, p = aligned.clean, aligned.perturbed
    same = (
        (c.input_ids == p.input_ids)
        & (c.position_ids == p.position_ids)
        & (c.token_type_ids == p.token_type_ids)
    )
    assert (v[:, 0][same] == 0).all()
    assert (v[2, 0][~aligned.changed[2]] == 0).all()  # a substitution shifts nothing
    assert (v[:, 0][aligned.removed].abs() > 0).any()


def test_an_injected_token_cannot_be_patched_away_at_its_own_position(tiny_ce, aligned):
    """docs/patching.md: the clean side holds the injected token in a masked slot (same embedding), so
    denoising its layer-0 residual there is skipped (exactly the base score), while later layers, where
    the clean run's slot saw a different context, do move the score."""
    res = patch(tiny_ce, aligned, sites="resid_pre", metric="raw")
    inj = aligned.injected & (aligned.clean.attention_mask == 0)  # slots (a substitution is not one)
    assert inj.any()
    v = res.values["resid_pre"]
    assert (v[:, 0][inj] == 0).all()
    assert (v[:, 1:].transpose(1, 2)[inj].abs() > 0).any()


def test_recovery_metric_and_nan_guard(tiny_ce, aligned):
    res = patch(tiny_ce, aligned, sites="resid_pre")
    delta = (res.source_scores - res.base_scores).reshape(-1, 1, 1)
    torch.testing.assert_close(res.values["resid_pre"], res.raw("resid_pre") / delta)
    assert torch.equal(res.recovery("resid_pre"), res.values["resid_pre"])
    assert res.direction == "denoise"
    assert torch.equal(res.base_scores, res.corrupted_scores) and torch.equal(
        res.source_scores, res.clean_scores
    )
    with pytest.warns(NoScoreChangeWarning, match=r"pairs \[0, 1, 2\]"):
        flat = patch(tiny_ce, aligned.clean, aligned.clean, sites="heads")
    assert flat.values["heads"].isnan().all()
    assert (flat.raw("heads") == 0).all()


def test_save_load_round_trip(tiny_ce, aligned, tmp_path):
    d = tiny_ce.cfg.d_mlp
    nset = NeuronSet([(0, 1), (1, 2)], n_layers=tiny_ce.cfg.n_layers, d_mlp=d)
    res = patch(tiny_ce, aligned, sites=["resid_pre", "heads", nset])
    back = PatchingResult.load(res.save(tmp_path / "p.safetensors"))
    assert back.sites == res.sites and back.layers == res.layers and back.members == res.members
    for k in res.sites:
        torch.testing.assert_close(back[k], res[k], equal_nan=True)
    assert back.clean_tokens == res.clean_tokens and back.direction == res.direction
    assert torch.equal(back.changed, res.changed)


def test_errors_say_what_to_fix(tiny_ce, aligned, minilm_ce):
    cfg = tiny_ce.cfg
    with pytest.raises(InputError, match="align them"):
        patch(tiny_ce, aligned.clean, aligned.perturbed.select([0, 1]))
    with pytest.raises(InputError, match="align them"):
        patch(tiny_ce, aligned.clean, tiny_ce.tokenize(PAIRS_Q, [d + " and more" for d in PAIRS_D]))
    with pytest.raises(InputError, match="unknown site"):
        patch(tiny_ce, aligned, sites="resid_post")
    with pytest.raises(InputError, match="out of range"):
        patch(tiny_ce, aligned, layers=[cfg.n_layers])
    with pytest.raises(InputError, match="direction"):
        patch(tiny_ce, aligned, direction="forward")
    with pytest.raises(InputError, match="metric"):
        patch(tiny_ce, aligned, metric="logit_diff")
    with pytest.raises(InputError, match="chunk_size"):
        patch(tiny_ce, aligned, chunk_size=0)
    other = NeuronSet([(0, 1)], n_layers=minilm_ce.cfg.n_layers, d_mlp=minilm_ce.cfg.d_mlp)
    with pytest.raises(InputError, match="select the set on this model"):
        patch(tiny_ce, aligned, sites=other)
    with pytest.raises(InputError, match="either an Alignment"):
        patch(tiny_ce, aligned, aligned.perturbed)
    with pytest.raises(InputError, match="PairBatch"):
        patch(tiny_ce, aligned.clean.input_ids, aligned.perturbed)


@pytest.mark.slow
def test_bi_encoder_patches_the_document_side(minilm_be):
    q, d = PAIRS_Q[:2], PAIRS_D[:2]
    al = perturb.align(minilm_be, q, d, _edit)
    pert = [_edit(a, b) for a, b in zip(q, d, strict=True)]
    for side, docs in ((al.clean, d), (al.perturbed, pert)):  # aligned documents embed as unaligned ones
        torch.testing.assert_close(minilm_be(side), minilm_be(minilm_be.tokenize(docs)), atol=1e-6, rtol=0)
    res = patch(minilm_be, al, sites=["resid_pre", "heads"], layers=[0, 5], metric="raw")
    torch.testing.assert_close(res.clean_scores, minilm_be.score(q, d), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.corrupted_scores, minilm_be.score(q, pert), atol=1e-6, rtol=0)
    for site in ("resid_pre", "heads"):
        ref = naive(minilm_be, al.perturbed, al.clean, site, [0, 5], q_emb=al.query_embeddings)
        torch.testing.assert_close(res.patched[site], ref, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="query_embeddings"):
        patch(minilm_be, al.clean, al.perturbed)


def _head_set(model, members):
    from mechir_nig.sets import ComponentSet

    return ComponentSet(members, kind="head", n_layers=model.cfg.n_layers, width=model.cfg.n_heads)


def test_head_set_member_equals_the_heads_site(tiny_ce, aligned):
    hs = _head_set(tiny_ce, [(0, 1), (1, 0), (1, tiny_ce.cfg.n_heads - 1)])
    res = patch(tiny_ce, aligned, sites=[hs, "heads"], metric="raw")
    assert res.members == sorted(hs) and res["head_set"].shape == (len(aligned), len(hs))
    expect = torch.stack([res.patched["heads"][:, lyr, h] for lyr, h in hs], 1)
    torch.testing.assert_close(res.patched["head_set"], expect, atol=1e-6, rtol=0)
    torch.testing.assert_close(res["head_set"], res.raw("head_set"), atol=0, rtol=0)


def test_position_set_member_equals_the_resid_pre_site(tiny_ce, aligned):
    from mechir_nig.sets import ComponentSet

    n_pos = aligned.clean.input_ids.shape[1]
    members = [(0, 0), (0, n_pos - 1), (1, 2), (1, 5)]
    ps = ComponentSet(members, kind="resid_pre", n_layers=tiny_ce.cfg.n_layers, width=n_pos)
    for direction in ("denoise", "noise"):
        res = patch(tiny_ce, aligned, sites=[ps, "resid_pre"], metric="raw", direction=direction)
        assert res.members == sorted(ps) and res["resid_pre_set"].shape == (len(aligned), len(ps))
        expect = torch.stack([res.patched["resid_pre"][:, lyr, p] for lyr, p in ps], 1)
        torch.testing.assert_close(res.patched["resid_pre_set"], expect, atol=1e-6, rtol=0)
    # an attn_out position set names its key after its site
    ao = ComponentSet([(1, 2)], kind="attn_out", n_layers=tiny_ce.cfg.n_layers, width=n_pos)
    res = patch(tiny_ce, aligned, sites=[ao, "attn_out"], metric="raw", joint=True)
    torch.testing.assert_close(
        res.patched["attn_out_set"][:, 0], res.patched["attn_out"][:, 1, 2], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        res.patched["attn_out_set_joint"], res.patched["attn_out_set"][:, 0], atol=1e-6, rtol=0
    )


def test_joint_head_set_equals_hand_hooks(tiny_ce, aligned):
    hs = _head_set(tiny_ce, [(0, 1), (1, 0), (1, tiny_ce.cfg.n_heads - 1)])
    res = patch(tiny_ce, aligned, sites=hs, joint=True, metric="raw")
    assert res.patched["head_set_joint"].shape == (len(aligned),)
    expected = _joint_by_hand(tiny_ce, aligned.perturbed, aligned.clean, "blocks.{}.attn.hook_z", hs)
    torch.testing.assert_close(res.patched["head_set_joint"], expected, atol=1e-5, rtol=0)


def test_one_component_set_goes_to_ablate_and_patch(tiny_ce, aligned, tmp_path):
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.plotting.patching import patching_heatmap
    from mechir_nig.report import site_summaries
    from mechir_nig.sets import ComponentSet

    n_pos = aligned.clean.input_ids.shape[1]
    batch = aligned.clean
    sets = [
        _head_set(tiny_ce, [(0, 1), (1, 0)]),
        ComponentSet([(1, 2)], kind="resid_pre", n_layers=tiny_ce.cfg.n_layers, width=n_pos),
    ]
    for s in sets:
        with ablate(tiny_ce, s, mode="zero"):
            assert tiny_ce(batch).shape == (len(batch),)
        res = patch(tiny_ce, aligned, sites=s, joint=True)
        key = "head_set" if s.kind == "head" else "resid_pre_set"
        assert set(res.sites) == {key, f"{key}_joint"}
        res.save(tmp_path / f"{key}.safetensors")
        back = PatchingResult.load(tmp_path / f"{key}.safetensors")
        assert back.members == res.members and torch.equal(back.patched[key], res.patched[key])
        assert len(patching_heatmap(back, key).data[0].y) == len(s)
        assert [row[0] for row in site_summaries(back)] == [key]
    with pytest.raises(InputError, match="one set per call"):
        patch(tiny_ce, aligned, sites=sets)
    wide = ComponentSet([(0, 0)], kind="head", n_layers=tiny_ce.cfg.n_layers, width=tiny_ce.cfg.n_heads + 1)
    with pytest.raises(InputError, match="select the set on this model"):
        patch(tiny_ce, aligned, sites=wide)


def test_patch_study_takes_patch_keywords_and_defaults(tiny_ce, aligned):
    """patch_study's sharded path (_prepare, sweep_rows, assemble) binds patch's own signature: the same
    defaults, the same refusals and the same result as patch."""
    import inspect

    from mechir_nig.experiments.patching import patch_study
    from mechir_nig.interventions.patching import _prepare

    job = _prepare(tiny_ce, aligned)
    defaults = inspect.signature(patch).parameters
    for key in ("direction", "metric", "eps", "chunk_size", "skip_unchanged", "joint"):
        assert getattr(job, key) == defaults[key].default, key
    assert job.layer_list == list(range(tiny_ce.cfg.n_layers))
    assert [s for s, _ in job.site_list] == list(defaults["sites"].default)
    want = patch(tiny_ce, aligned)
    got = job.result(*job.assemble(job.sweep_rows(list(range(len(job.base))))))
    torch.testing.assert_close(got.values["resid_pre"], want.values["resid_pre"], equal_nan=True)
    alone = patch_study(tiny_ce, aligned, distributed=False)
    torch.testing.assert_close(alone.values["resid_pre"], want.values["resid_pre"], equal_nan=True)
    with pytest.raises(TypeError, match="n_steps"):
        _prepare(tiny_ce, aligned, n_steps=3)
    with pytest.raises(InputError, match="direction"):
        _prepare(tiny_ce, aligned, direction="sideways")
