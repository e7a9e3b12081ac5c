"""NIG of any site (mechir_nig.sites), one options object (NIGSettings), target= and adaptive steps at
collection scale."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DOCS, QUERIES, hf_cross_encoder

from mechir_nig import InputError, NIGSettings
from mechir_nig.attribution import NeuronIntegratedGradients, baseline_embeddings, neuron_integrated_gradients
from mechir_nig.attribution.stats import CollectionAttribution
from mechir_nig.attribution.target import TargetArgs
from mechir_nig.data import judged_pairs, load_collection
from mechir_nig.experiments.attribute import attribute_collection

PER_TOKEN_SITES = (
    "resid_pre",
    "q",
    "k",
    "v",
    "z",
    "attn_out",
    "resid_mid",
    "mlp_pre",
    "mlp_post",
    "mlp_out",
    "resid_post",
)


@pytest.fixture(scope="module")
def hf64(tiny_ce_dir):
    hf = hf_cross_encoder(tiny_ce_dir).double()
    for p in hf.parameters():
        p.requires_grad_(False)
    return hf


def captum(hf, ce, batch, module, n_steps):
    """Captum ``LayerConductance`` of ``module`` of the HF model (same score, same baseline)."""
    from captum.attr import LayerConductance

    x = hf.bert.embeddings.word_embeddings(batch.input_ids)
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad").to(x.dtype)

    def forward(embeds, token_type_ids, attention_mask):
        return hf(inputs_embeds=embeds, token_type_ids=token_type_ids, attention_mask=attention_mask).logits[
            :, 0
        ]

    out = LayerConductance(forward, module).attribute(
        x,
        baselines=xb,
        additional_forward_args=(batch.token_type_ids, batch.attention_mask),
        n_steps=n_steps,
        method="riemann_trapezoid",
    )
    out = out[0] if isinstance(out, tuple) else out
    return out.detach().sum(-1)  # [batch, pos]: summed over d_model (a position is the unit)


def assert_rel_close(ours, ref, rel=1e-9):
    scale = ref.abs().max().item()
    assert scale > 0
    err = (ours - ref).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3e} > {rel} x {scale:.3e}"


def test_resid_pre_equals_captum_layer_conductance_float64(ce64, hf64):
    """resid_pre of layer l is the input of HF encoder.layer[l]: the embeddings' output for l = 0, the
    output of encoder.layer[l - 1] after. (Captum's attribute_to_layer_input=True on encoder.layer[l]
    cannot be used: HF passes None among the layer's positional inputs, which Captum refuses.)"""
    batch = ce64.tokenize(QUERIES[:3], DOCS[:3])
    attr = neuron_integrated_gradients(ce64, QUERIES[:3], DOCS[:3], n_steps=12, sites=("resid_pre",))
    ours = attr.site("resid_pre")
    assert ours.dtype == torch.float64 and ours.shape == (3, ce64.cfg.n_layers, batch.input_ids.shape[1])
    assert attr.values.shape[-1] == 0 and attr.head_values is None  # no MLP site, no head site asked for
    layers = hf64.bert.encoder.layer
    for layer in range(ce64.cfg.n_layers):
        before = hf64.bert.embeddings if layer == 0 else layers[layer - 1]
        assert_rel_close(ours[:, layer], captum(hf64, ce64, batch, before, 12))


@pytest.mark.parametrize(
    "name,module",
    [("attn_out", lambda lay: lay.attention.output.dense), ("mlp_out", lambda lay: lay.output.dense)],
)
def test_block_outputs_equal_captum_float64(ce64, hf64, name, module):
    batch = ce64.tokenize(QUERIES[:2], DOCS[:2])
    attr = NeuronIntegratedGradients(ce64).attribute(batch, n_steps=8, sites=(name,))
    for layer in range(ce64.cfg.n_layers):
        ref = captum(hf64, ce64, batch, module(hf64.bert.encoder.layer[layer]), 8)
        assert_rel_close(attr.site(name)[:, layer], ref)


def test_residual_site_completeness(ce64):
    """A whole residual-stream layer is a cut of the network: its total conductance is F(x) - F(x')
    up to the rule's error. Conductance is a left sum (gradient at the start of each interval), so the
    error falls as 1/n_steps: 8.5e-2 at 8 steps, 2.2e-2 at 32, 1.1e-2 at 64, 5.7e-3 at 128 here."""
    errors = []
    for n in (16, 64):
        attr = neuron_integrated_gradients(
            ce64, QUERIES, DOCS, n_steps=n, sites=("resid_pre", "resid_post"), reduce="neuron"
        )
        gap = attr.scores - attr.baseline_scores
        for name in ("resid_pre", "resid_post"):
            total = attr.site(name)  # [batch, layer]: summed over tokens
            errors.append(((total - gap[:, None]).abs() / gap.abs()[:, None]).max().item())
    assert max(errors[2:]) < 2e-2 and max(errors[2:]) < max(errors[:2]) / 3


def test_every_site_without_the_input_gradient_is_the_same(tiny_ce):
    """The leaf of a run without the input gradient is an ancestor of every site (q/k/v need resid_pre):
    the values equal those of a run that differentiates from the input embeddings."""
    kw = dict(n_steps=5, sites=PER_TOKEN_SITES, reduce="group", layers=[1])
    fast = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, **kw)
    full = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, return_convergence_delta=True, **kw)
    assert set(fast.site_values) == set(PER_TOKEN_SITES)
    for name in PER_TOKEN_SITES:
        torch.testing.assert_close(fast.site(name), full.site(name), rtol=1e-5, atol=1e-7)
        assert fast.site(name).abs().sum() > 0, name
    assert fast.site("z").shape == (4, 1, 4, tiny_ce.cfg.n_heads)
    assert fast.site("q").shape == (4, 1, 4, tiny_ce.cfg.n_heads)
    assert fast.site("resid_mid").shape == (4, 1, 4)
    assert torch.equal(fast.values, fast.site("mlp_post")) and torch.equal(fast.head_values, fast.site("z"))


def test_site_names_and_aliases(tiny_ce):
    attr = neuron_integrated_gradients(tiny_ce, QUERIES[:1], DOCS[:1], n_steps=2, sites=("post", "heads"))
    assert sorted(attr.site_values) == ["mlp_post", "z"] and attr.meta["sites"] == ["mlp_post", "z"]
    with pytest.raises(InputError, match="was not attributed"):
        attr.site("resid_pre")
    with pytest.raises(InputError, match="not per token"):
        neuron_integrated_gradients(tiny_ce, QUERIES[:1], DOCS[:1], n_steps=2, sites=("pattern",))
    with pytest.raises(InputError, match="unknown site 'mlp_postt'"):
        neuron_integrated_gradients(tiny_ce, QUERIES[:1], DOCS[:1], n_steps=2, sites=("mlp_postt",))


def test_settings_or_keywords_never_both(tiny_ce):
    s = NIGSettings(n_steps=3, layers=[0], reduce="neuron", internal_batch_size=5)
    a = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, settings=s)
    b = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, **{k: v for k, v in s.nig_kwargs().items()})
    assert torch.equal(a.values, b.values)
    with pytest.raises(InputError, match="either as settings=NIGSettings"):
        neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, settings=s, n_steps=4)
    with pytest.raises(InputError, match=r"unknown NIG option\(s\) \['n_step'\]"):
        neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, n_step=4)
    from jaxtyping import TypeCheckError  # raised first when the jaxtyping import hook runs

    with pytest.raises((InputError, TypeCheckError), match="NIGSettings"):
        neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, settings={"n_steps": 4})


def test_target_identity_and_constant_margin(tiny_ce):
    """target=F gives F's attribution; F(q, d+) - F(q, d-) with d- held fixed shifts the scores by
    F(q, d-) and leaves the conductances (gradients of F) unchanged."""
    qs, ds, negs = QUERIES[:3], DOCS[:3], DOCS[1:4]
    f_neg = tiny_ce.score(qs, negs).to(tiny_ce.cfg.acc_dtype)
    kw = dict(n_steps=6, heads=True, return_convergence_delta=True)
    plain = neuron_integrated_gradients(tiny_ce, qs, ds, **kw)
    same = neuron_integrated_gradients(tiny_ce, qs, ds, target=lambda t: t.score, **kw)
    margin = neuron_integrated_gradients(tiny_ce, qs, ds, target=lambda t: t.score - f_neg[t.pair], **kw)
    assert torch.equal(plain.values, same.values) and torch.equal(plain.scores, same.scores)
    torch.testing.assert_close(margin.values, plain.values)
    torch.testing.assert_close(margin.head_values, plain.head_values)
    torch.testing.assert_close(margin.scores, plain.scores - f_neg.cpu())
    torch.testing.assert_close(margin.convergence_delta, plain.convergence_delta)
    assert margin.meta["target"].endswith("<lambda>")


def test_target_logit_output_and_bad_returns(tiny_ce):
    seen: list[TargetArgs] = []

    def logit(t):
        seen.append(t)
        return t.output[:, 0] * 2

    attr = neuron_integrated_gradients(tiny_ce, QUERIES[:2], DOCS[:2], n_steps=4, target=logit)
    plain = neuron_integrated_gradients(tiny_ce, QUERIES[:2], DOCS[:2], n_steps=4)
    torch.testing.assert_close(attr.values, 2 * plain.values)
    assert seen[0].output.shape[1] == tiny_ce.cfg.n_labels and seen[0].other is None
    assert sorted(set(torch.cat([t.pair for t in seen]).tolist())) == [0, 1]
    with pytest.raises(InputError, match="one floating value per row"):
        neuron_integrated_gradients(tiny_ce, QUERIES[:2], DOCS[:2], n_steps=2, target=lambda t: t.output)
    with pytest.raises(InputError, match="without a gradient"):
        neuron_integrated_gradients(
            tiny_ce, QUERIES[:2], DOCS[:2], n_steps=2, target=lambda t: t.score.detach()
        )


@pytest.mark.slow
def test_bi_encoder_pairwise_margin_is_complete(minilm_be):
    """Bi-encoder, query side interpolated: F(q, d+) - F(q, d-) = (E(q) . (E(d+) - E(d-))) is a real
    pairwise margin (both terms move with q); completeness holds for it."""
    qs, pos, neg = QUERIES[:2], DOCS[:2], DOCS[2:4]
    e_neg = minilm_be.encode(neg).to(minilm_be.cfg.acc_dtype)
    attr = neuron_integrated_gradients(
        minilm_be,
        qs,
        pos,
        side="query",
        n_steps=32,
        layers=[5],
        return_convergence_delta=True,
        target=lambda t: t.score - (t.output * e_neg.to(t.output.device)[t.pair]).sum(-1),
    )
    want = minilm_be.score(qs, pos) - minilm_be.score(qs, neg)
    torch.testing.assert_close(attr.scores.float(), want.float(), rtol=1e-4, atol=1e-5)
    gap = attr.scores - attr.baseline_scores
    assert (attr.convergence_delta.abs() / gap.abs()).max() < 0.05


@pytest.fixture(scope="module")
def pairs():
    ps = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1)
    return type(ps)(ps[:6], ps.report)


def test_attribute_collection_auto_steps(tiny_ce, pairs, tmp_path):
    """n_steps='auto' at collection scale: each pair's steps are recorded (and read back from the
    checkpoint), and the statistics are those of per-pair adaptive runs."""
    auto = NIGSettings(n_steps="auto", tol=2e-3, min_steps=2, max_steps=64)
    ckpt = tmp_path / "auto.ckpt"
    stats = attribute_collection(
        tiny_ce, pairs, settings=auto, batch_size=4, checkpoint=ckpt, checkpoint_every=4, progress=False
    )
    steps = stats.n_steps_used()
    assert steps.shape == (len(pairs),) and bool((steps >= 2).all()) and bool((steps <= 64).all())
    assert len(set(steps.tolist())) > 1  # chosen per pair
    assert stats.meta["tol"] == 2e-3 and stats.meta["n_steps"] == "auto"
    back = CollectionAttribution.load(ckpt)
    assert torch.equal(back.n_steps_used(), steps)
    one = [
        neuron_integrated_gradients(
            tiny_ce, [p.query], [p.doc], settings=dataclasses.replace(auto, reduce="group")
        )
        for p in pairs
    ]
    assert [int(a.n_steps_used[0]) for a in one] == steps.tolist()
    rel = [a.by_group()[0] for a, p in zip(one, pairs) if p.label == "relevant"]
    torch.testing.assert_close(
        stats.mean("relevant", "doc"), torch.stack(rel).double()[:, :, 3].mean(0), rtol=1e-4, atol=1e-7
    )
    # a fixed-step run records no per-pair steps, and says so
    fixed = attribute_collection(tiny_ce, pairs[:2], n_steps=2, progress=False)
    with pytest.raises(InputError, match="fixed n_steps"):
        fixed.n_steps_used()


def test_attribute_collection_options(tiny_ce, pairs):
    with pytest.raises(InputError, match="either as settings=NIGSettings"):
        attribute_collection(tiny_ce, pairs, settings=NIGSettings(n_steps=2), n_steps=3, progress=False)
    with pytest.raises(InputError, match="per MLP neuron"):
        attribute_collection(tiny_ce, pairs, n_steps=2, sites=("resid_pre",), progress=False)
    # a target's t.pair indexes the pairs given to attribute_collection
    seen: set[int] = set()

    def score(t):
        seen.update(t.pair.tolist())
        return t.score

    plain = attribute_collection(tiny_ce, pairs, n_steps=2, batch_size=2, progress=False)
    same = attribute_collection(tiny_ce, pairs, n_steps=2, batch_size=2, progress=False, target=score)
    assert seen == set(range(len(pairs))) and same.meta["target"].endswith("score")
    assert torch.equal(plain.sums["relevant"], same.sums["relevant"])


def test_cli_attribute_auto_steps(tiny_ce_dir, tmp_path, capsys):
    from mechir_nig.cli import main

    out = tmp_path / "results"
    argv = ["attribute", "--model", str(tiny_ce_dir), "--collection", "embedded", "--out", str(out)]
    argv += ["--no-progress", "--max-relevant", "1", "--max-nonrelevant", "1", "--layers", "1"]
    assert main([*argv, "--n-steps", "8", "--tol", "0.1"]) == 2
    assert "apply only to --n-steps auto" in capsys.readouterr().err
    assert main([*argv, "--n-steps", "auto", "--min-steps", "2", "--max-steps", "8", "--tol", "0.05"]) == 0
    assert "steps per pair (auto)" in capsys.readouterr().out
    stats = CollectionAttribution.load(out / "attribution.safetensors")
    steps = stats.n_steps_used()
    assert stats.meta["n_steps"] == "auto" and len(steps) == stats.n_done and bool((steps >= 2).all())


def test_step_records_merge():
    """Parts of one pair list (a sharded run) take the union; two pair lists are concatenated."""

    def part(fp, idx, steps, n):
        s = CollectionAttribution(layers=[0], n_layers=1, d_mlp=2, meta={"pairs_fingerprint": fp})
        s.record_steps(idx, steps, n)
        s.n_done = len(idx)
        return s

    a, b = part("x", [0, 2], [8, 16], 3), part("x", [1], [32], 3)
    assert a.merge(b).n_steps_used().tolist() == [8, 32, 16]
    c = part("y", [0], [4], 1)
    assert a.merge(c).n_steps_used().tolist() == [8, -1, 16, 4]
    a.merge_steps([a.meta["n_steps_used"], None, b.meta["n_steps_used"]])
    assert a.n_steps_used().tolist() == [8, 32, 16]


def test_every_attributed_site_is_saved_and_loaded(ce64, tmp_path):
    """A result of several sites keeps each site's values through save/load (bit for bit)."""
    from mechir_nig.attribution import NeuronAttribution

    res = neuron_integrated_gradients(
        ce64, QUERIES[:2], DOCS[:2], n_steps=4, sites=("mlp_post", "resid_pre", "z")
    )
    back = NeuronAttribution.load(res.save(tmp_path / "nig.safetensors"))
    assert sorted(back.site_values) == sorted(res.site_values) == ["mlp_post", "resid_pre", "z"]
    for name, values in res.site_values.items():
        assert torch.equal(back.site(name), values), name
    assert torch.equal(back.values, res.values)


def test_a_component_set_is_what_nig_attributes(tiny_ce):
    """The object ablate and patch take: NIG of a set is the plain NIG of its site at its layers (the
    members' values equal the plain call's values at those units)."""
    from mechir_nig.sets import ComponentSet, NeuronSet

    cfg = tiny_ce.cfg
    plain = neuron_integrated_gradients(
        tiny_ce, QUERIES, DOCS, n_steps=4, sites=("mlp_post", "z", "resid_pre")
    )
    neurons = NeuronSet([(1, 2), (1, 5)], n_layers=cfg.n_layers, d_mlp=cfg.d_mlp)
    heads = ComponentSet([(0, 1)], kind="head", n_layers=cfg.n_layers, width=cfg.n_heads)
    positions = ComponentSet([(1, 0), (1, 3)], kind="resid_pre", n_layers=cfg.n_layers, width=4)
    for members, name in ((neurons, "mlp_post"), (heads, "z"), (positions, "resid_pre")):
        attr = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, n_steps=4, sites=members)
        assert attr.meta["sites"] == [name] and attr.layers == sorted(members.by_layer())
        for layer, unit in members:
            got = attr.site(name)[:, attr.layers.index(layer), ..., unit]
            torch.testing.assert_close(got, plain.site(name)[:, layer, ..., unit], rtol=1e-6, atol=1e-8)
            assert got.abs().sum() > 0
    with pytest.raises(InputError, match="leave layers=None"):
        NIGSettings(sites=neurons, layers=[0])


@pytest.mark.parametrize("reduce", ["token", "neuron"])
def test_a_component_sets_members_equal_the_full_run(tiny_ce, reduce):
    """attr.members(set): a set given as sites= gives its members' values, equal to the same entries of a
    full run (every layer, every unit); a position set reads the position axis."""
    from mechir_nig.sets import ComponentSet, NeuronSet

    cfg = tiny_ce.cfg
    full = neuron_integrated_gradients(
        tiny_ce, QUERIES, DOCS, n_steps=4, sites=("mlp_post", "z", "resid_pre"), reduce=reduce
    )
    neurons = NeuronSet([(0, 7), (1, 2), (1, 5)], n_layers=cfg.n_layers, d_mlp=cfg.d_mlp)
    heads = ComponentSet([(0, 1), (1, 0)], kind="head", n_layers=cfg.n_layers, width=cfg.n_heads)
    positions = ComponentSet([(1, 0), (1, 3)], kind="resid_pre", n_layers=cfg.n_layers, width=4)
    for members in (neurons, heads) + ((positions,) if reduce == "token" else ()):
        attr = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, n_steps=4, sites=members, reduce=reduce)
        got = attr.members(members)
        assert got.shape[-1] == len(members) and got.abs().sum() > 0
        assert torch.equal(got, attr.members(members))
        for i, (layer, unit) in enumerate(members):
            want = full.site(members.kind)[:, layer, ..., unit]
            torch.testing.assert_close(got[..., i], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(full.members(members), got, rtol=0, atol=1e-6)
    if reduce == "neuron":
        with pytest.raises(InputError, match="needs values per token"):
            full.members(positions)
    with pytest.raises(InputError, match="did not attribute"):
        one = NeuronSet([(1, 2)], n_layers=cfg.n_layers, d_mlp=cfg.d_mlp)
        neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, n_steps=4, sites=one).members(neurons)
    with pytest.raises(InputError, match="was not attributed"):
        full.members(ComponentSet([(0, 1)], kind="resid_post", n_layers=cfg.n_layers, width=4))
    with pytest.raises(InputError, match="another model"):
        full.members(NeuronSet([(0, 1)], n_layers=cfg.n_layers, d_mlp=cfg.d_mlp * 2))
