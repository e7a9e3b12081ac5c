"""monoT5 (T5 v1.0 relu/tied-rescaled and v1.1 gated-gelu/unscaled): parity with Hugging Face and Captum,
hooks of both stacks, patching, alignment and ablation on tiny seeded random checkpoints."""

from __future__ import annotations

import pytest
import torch

from mechir_nig import load_model, testing
from mechir_nig.attribution import NeuronIntegratedGradients, baseline_embeddings
from mechir_nig.errors import InputError, ModelLoadError, UnsupportedArchitectureError
from mechir_nig.interventions import perturb
from mechir_nig.interventions.ablation import ablate
from mechir_nig.interventions.patching import patch
from mechir_nig.models.t5 import HookedMonoT5, relative_buckets
from mechir_nig.models.templates import RerankTemplate
from mechir_nig.models.tokenization import CLS, DOC, QUERY, SEP
from mechir_nig.sets import NeuronSet

QUERIES = ["what is a neuron", "how do cells fire", "where is the brain"]
DOCS = [
    "a neuron is a cell of the nervous system that fires signals",
    "cells fire",
    "the brain is in the head and holds many neurons that fire",
]
CORPUS = [f"Query: {q} Document: {d} Relevant: true false" for q in QUERIES for d in DOCS] * 20
VARIANTS = testing.T5_VARIANTS


def t5_tokenizer():
    """A Unigram (SentencePiece-style) tokenizer with T5's specials, ``</s>`` appended, "true"/"false" whole."""
    return testing.t5_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tok = t5_tokenizer()
    return {
        name: testing.make_t5(tmp_path_factory.mktemp(name.replace(".", "_")), tok, name) for name in VARIANTS
    }


def hf_model(folder, dtype=torch.float64):
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration.from_pretrained(folder).to(dtype).eval()


def hf_logits(hf, input_ids, attention_mask, inputs_embeds=None):
    start = torch.zeros(
        input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0], 1, dtype=torch.long
    )
    kw = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": input_ids}
    return hf(**kw, attention_mask=attention_mask, decoder_input_ids=start).logits[:, 0]


def hf_score(mt5, logits):
    return torch.log_softmax(logits[:, list(mt5.answer_ids)], -1)[:, 1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scores_and_hidden_states_equal_hf(checkpoints, variant):
    mt5 = load_model(checkpoints[variant], dtype=torch.float64)
    assert isinstance(mt5, HookedMonoT5) and mt5.cfg.gated == (variant == "v1.1")
    hf = hf_model(checkpoints[variant])
    batch = mt5.tokenize(QUERIES, DOCS)
    assert batch.attention_mask.sum(1).unique().numel() == 3  # padded, mixed lengths
    scores, cache = mt5.run_with_cache(batch)
    ref = hf_logits(hf, batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(mt5(batch, return_type="logits"), ref, rtol=1e-5, atol=0)
    expect = hf_score(mt5, ref)
    assert expect.std() > 1e-3  # the pairs score differently
    torch.testing.assert_close(scores, expect, rtol=1e-5, atol=0)
    torch.testing.assert_close(mt5.score(QUERIES, DOCS, batch_size=2), expect, rtol=1e-5, atol=0)
    states = hf.encoder(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
    )
    keep = batch.attention_mask.bool()
    for layer in range(mt5.cfg.n_layers):
        ours = cache[f"encoder.blocks.{layer}.hook_resid_pre"]
        assert torch.equal(ours, cache[f"blocks.{layer}.hook_resid_pre"])
        torch.testing.assert_close(ours[keep], states.hidden_states[layer][keep], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        cache["encoder.hook_resid_final"][keep], states.last_hidden_state[keep], rtol=1e-9, atol=1e-12
    )
    for hook in ("attn.hook_z", "cross_attn.hook_z", "mlp.hook_post", "hook_resid_post"):
        assert cache[f"decoder.blocks.1.{hook}"].shape[:2] == (3, 1)  # one decoder step


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mlp_post_is_input_of_wo(checkpoints, variant):
    mt5 = load_model(checkpoints[variant], dtype=torch.float64)
    hf = hf_model(checkpoints[variant])
    batch = mt5.tokenize(QUERIES, DOCS)
    got: dict[str, torch.Tensor] = {}
    handles = [
        getattr(hf, stack)
        .block[layer]
        .layer[-1]
        .DenseReluDense.wo.register_forward_pre_hook(
            lambda m, args, key=f"{stack}.blocks.{layer}": got.__setitem__(key, args[0])
        )
        for stack in ("encoder", "decoder")
        for layer in range(2)
    ]
    hf_logits(hf, batch.input_ids, batch.attention_mask)
    for h in handles:
        h.remove()
    _, cache = mt5.run_with_cache(batch)
    keep = batch.attention_mask.bool()
    for key, ref in got.items():
        ours = cache[f"{key}.mlp.hook_post"]
        if key.startswith("encoder"):
            ours, ref = ours[keep], ref[keep]
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
        if mt5.cfg.gated:  # hook_post = act(hook_pre) * hook_pre_linear
            pre, lin = cache[f"{key}.mlp.hook_pre"], cache[f"{key}.mlp.hook_pre_linear"]
            full = torch.nn.functional.gelu(pre, approximate="tanh") * lin
            torch.testing.assert_close(full, cache[f"{key}.mlp.hook_post"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_buckets_equal_hf(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)
    ours = relative_buckets(rel, bidirectional=bidirectional, n_buckets=32, max_distance=128)
    ref = T5Attention._relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    assert torch.equal(ours, ref) and ours.unique().numel() == (
        31 if bidirectional else 32
    )  # bucket 16 = "after, distance 0"


def test_template_groups_and_baseline(checkpoints):
    mt5 = load_model(checkpoints["v1.0"])
    batch = mt5.tokenize(QUERIES[:1], DOCS[:1])
    n = int(batch.attention_mask[0].sum())
    text = f"Query: {QUERIES[0]} Document: {DOCS[0]} Relevant:"
    assert batch.input_ids[0, :n].tolist() == mt5.tokenizer(text)["input_ids"]
    assert batch.input_ids[0, n - 1] == mt5.tokenizer.eos_token_id
    groups = batch.groups[0, :n]
    q_ids = mt5.tokenizer(" " + QUERIES[0], add_special_tokens=False)["input_ids"]
    assert int((groups == QUERY).sum()) == len(q_ids) and int((groups == DOC).sum()) > 5
    assert groups[0] == CLS and groups[-1] == SEP  # template text and </s> are kept by the baseline
    base = baseline_embeddings(mt5, batch.input_ids, batch.groups, "pad")  # <pad> (id 0) replaces q and d
    replaced = (groups == QUERY) | (groups == DOC)
    w = mt5.word_embeddings(batch.input_ids)[0, :n]
    assert torch.equal(base[0, :n][replaced], mt5.W_E[0].expand(int(replaced.sum()), -1))
    assert torch.equal(base[0, :n][~replaced], w[~replaced])
    with pytest.warns(UserWarning, match="truncated"):
        short = mt5.tokenize(QUERIES[:1], DOCS[:1], max_length=n - 3)
    assert short.truncated.tolist() == [True] and int(short.attention_mask.sum()) <= n - 3


def captum_t5(hf, mt5, batch, layer, n_steps):
    from captum.attr import LayerConductance

    for p in hf.parameters():
        p.requires_grad_(False)
    x = hf.shared(batch.input_ids)
    xb = baseline_embeddings(mt5, batch.input_ids, batch.groups, "pad")

    def forward(embeds, attention_mask):
        return hf_score(mt5, hf_logits(hf, None, attention_mask, inputs_embeds=embeds))

    module = hf.encoder.block[layer].layer[1].DenseReluDense.wo
    lc = LayerConductance(forward, module)
    out = lc.attribute(
        x,
        baselines=xb,
        additional_forward_args=(batch.attention_mask,),
        n_steps=n_steps,
        method="riemann_trapezoid",
        attribute_to_layer_input=True,
    )
    return out.detach()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nig_equals_captum_float64(checkpoints, variant):
    mt5 = load_model(checkpoints[variant], dtype=torch.float64)
    hf = hf_model(checkpoints[variant])
    batch = mt5.tokenize(QUERIES, DOCS)
    attr = NeuronIntegratedGradients(mt5).attribute(batch, n_steps=8)
    for layer in range(mt5.cfg.n_layers):
        ref = captum_t5(hf, mt5, batch, layer, 8)
        scale = ref.abs().max().item()
        assert scale > 0
        assert (attr.values[:, layer] - ref).abs().max().item() <= 1e-9 * scale, layer


def test_nig_over_decoder_neurons_completes(checkpoints):
    mt5 = load_model(checkpoints["v1.1"], dtype=torch.float64)
    mt5.set_stack("decoder")
    assert mt5.hook_dict["blocks.0.mlp.hook_post"] is mt5.decoder.blocks[0].mlp.hook_post
    batch = mt5.tokenize(QUERIES, DOCS)
    attr = NeuronIntegratedGradients(mt5).attribute(batch, n_steps=8, reduce="neuron")
    assert attr.values.shape[1:] == (2, mt5.cfg.d_mlp) and attr.values.abs().sum() > 0
    mt5.set_stack("encoder")
    assert mt5.hook_dict["blocks.0.mlp.hook_post"] is mt5.encoder.blocks[0].mlp.hook_post


def test_resid_pre_patch_equals_hf_hook_patch(checkpoints):
    mt5 = load_model(checkpoints["v1.0"], dtype=torch.float64)
    hf = hf_model(checkpoints["v1.0"])
    clean = mt5.tokenize(QUERIES, DOCS)
    corrupted = mt5.tokenize(
        QUERIES, ["the cat sat on a mat and slept all day now", "dogs bark", "a red car"]
    )
    n = min(clean.input_ids.shape[1], corrupted.input_ids.shape[1])
    clean, corrupted = clean.select(range(3), n_pos=n), corrupted.select(range(3), n_pos=n)
    corrupted.attention_mask[:] = clean.attention_mask  # same shape and mask, different tokens
    res = patch(mt5, clean, corrupted, sites="resid_pre", skip_unchanged=False)
    patched = res.patched["resid_pre"]  # [batch, layer, pos]
    states = hf.encoder(
        input_ids=clean.input_ids, attention_mask=clean.attention_mask, output_hidden_states=True
    )
    for layer in range(2):
        for pos in (1, 4):
            src = states.hidden_states[layer][:, pos]

            def put(module, args, kwargs, src=src, pos=pos):
                h = args[0].clone()
                h[:, pos] = src
                return (h, *args[1:]), kwargs

            handle = hf.encoder.block[layer].register_forward_pre_hook(put, with_kwargs=True)
            ref = hf_score(mt5, hf_logits(hf, corrupted.input_ids, corrupted.attention_mask))
            handle.remove()
            torch.testing.assert_close(patched[:, layer, pos], ref.to(patched.dtype), rtol=1e-6, atol=1e-9)


def test_aligned_perturbation_scores_as_unaligned(checkpoints):
    mt5 = load_model(checkpoints["v1.1"], dtype=torch.float64)
    al = perturb.align(mt5, QUERIES, DOCS, lambda q, d: "neuron " + d)
    assert (al.clean.attention_mask == 0).any()  # masked slots inside the clean side
    torch.testing.assert_close(mt5(al.clean), mt5(mt5.tokenize(QUERIES, DOCS)), rtol=0, atol=1e-6)
    pert = ["neuron " + d for d in DOCS]
    torch.testing.assert_close(mt5(al.perturbed), mt5(mt5.tokenize(QUERIES, pert)), rtol=0, atol=1e-6)


def test_ablate_changes_scores(checkpoints):
    mt5 = load_model(checkpoints["v1.0"])
    batch = mt5.tokenize(QUERIES, DOCS)
    before = mt5(batch)
    neurons = NeuronSet([(0, i) for i in range(mt5.cfg.d_mlp)], n_layers=2, d_mlp=mt5.cfg.d_mlp)
    with ablate(mt5, neurons, mode="zero"):
        after = mt5(batch)
    _, cache = mt5.run_with_cache(batch, names_filter=["encoder.blocks.0.mlp.hook_post"])
    assert set(cache.keys()) == {"blocks.0.mlp.hook_post", "encoder.blocks.0.mlp.hook_post"}
    by_hand = mt5.run_with_hooks(batch, fwd_hooks=[("encoder.blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
    torch.testing.assert_close(after, by_hand)
    assert not torch.allclose(before, after)


def test_refusals(checkpoints, tmp_path):
    import json
    import shutil

    bad = RerankTemplate("odd", "Q: {query} D: {doc}", ("neuronal-thing", "true"))
    with pytest.raises(ModelLoadError, match="neuronal-thing"):
        HookedMonoT5.from_pretrained(checkpoints["v1.0"], template=bad)
    folder = tmp_path / "enc"
    shutil.copytree(checkpoints["v1.0"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["T5EncoderModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="T5ForConditionalGeneration"):
        load_model(folder)
    mt5 = load_model(checkpoints["v1.0"])
    with pytest.raises(InputError, match="stack"):
        mt5.set_stack("middle")


def test_ablation_modes_patch_sites_and_collection_run(checkpoints, tmp_path):
    from mechir_nig import attribute_collection
    from mechir_nig.data.pairs import JudgedPair
    from mechir_nig.interventions.ablation import AblationReference

    mt5 = load_model(checkpoints["v1.1"])
    batch = mt5.tokenize(QUERIES, DOCS)
    before = mt5(batch)
    neurons = NeuronSet([(0, 1), (1, 3)], n_layers=2, d_mlp=mt5.cfg.d_mlp)
    ref = AblationReference.compute(mt5, QUERIES, DOCS)
    for mode in ("zero", "mean", "resample", "baseline"):
        kw = {"reference": ref} if mode in ("mean", "resample") else {}
        with ablate(mt5, neurons, mode=mode, **kw):
            assert not torch.allclose(mt5(batch), before), mode
    al = perturb.align(mt5, QUERIES, DOCS, lambda q, d: "neuron " + d)
    res = patch(mt5, al, sites=("heads", "neurons"))
    assert res["heads"].shape == (3, 2, 3) and res["neurons"].shape == (3, 2, mt5.cfg.d_mlp)
    pairs = [JudgedPair(f"q{i}", f"d{i}", q, d, 1, "relevant") for i, (q, d) in enumerate(zip(QUERIES, DOCS))]
    out = attribute_collection(mt5, pairs, progress=False, n_steps=4, checkpoint=tmp_path / "ck")
    assert out.counts["relevant"] == 3 and out.mean("relevant").abs().sum() > 0
    mt5.set_stack("decoder")
    with pytest.raises(InputError, match="set_stack"):
        patch(mt5, al, sites="neurons")


def _nig_float32_error(folder):
    """max |NIG float32 - NIG float64| / max |NIG float64| over every layer, pair, position and neuron."""
    values = {}
    for dtype in (torch.float32, torch.float64):
        mt5 = load_model(folder, dtype=dtype)
        values[dtype] = (
            NeuronIntegratedGradients(mt5).attribute(mt5.tokenize(QUERIES, DOCS), n_steps=8).values
        )
    truth = values[torch.float64]
    return ((values[torch.float32].double() - truth).abs().max() / truth.abs().max()).item()


def test_wide_random_t5_is_float32_ill_conditioned_unless_at_hf_init_scale(tmp_path):
    """Why ``benchmarks/nig.py`` builds its small monoT5 at Hugging Face's init scale: T5 has no
    ``1 / sqrt(d_head)`` in its attention, so the tests' absolute weight spread (``+ N(0, 0.3)``) makes
    float32 NIG drift from float64 as the width grows (at 512 it is off by ~90 % for ours and Captum
    alike, which agree in float64); HF's init (``spread=0``) with a scaled LM head keeps it at ~1e-6."""
    tok = t5_tokenizer()
    shape = dict(d_model=128, d_mlp=256, n_heads=4, d_kv=32)
    spread = testing.make_t5(tmp_path / "spread", tok, "v1.1", **shape)
    hf_init = testing.make_t5(tmp_path / "hf_init", tok, "v1.1", spread=0.0, head_std=128**-0.5 * 2, **shape)
    assert _nig_float32_error(spread) > 1e-3  # 2.4e-3 here; 1.1e-4 at width 64, 0.94 at 512
    assert _nig_float32_error(hf_init) < 2e-5  # 1.3e-6
    scores = load_model(hf_init, dtype=torch.float64).score(QUERIES, DOCS)
    assert scores.std() > 1e-2 and scores.min() > -5  # pairs still score differently, unsaturated
    from transformers import T5ForConditionalGeneration

    head = T5ForConditionalGeneration.from_pretrained(hf_init).lm_head.weight
    assert abs(head.std().item() - 128**-0.5 * 2) < 0.01
    with pytest.raises(ValueError, match="untied"):
        testing.make_t5(tmp_path / "tied", tok, "v1.0", head_std=0.1, **shape)
