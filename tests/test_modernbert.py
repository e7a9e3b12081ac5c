"""ModernBERT: parity with Hugging Face (scores, hidden states, GeGLU neurons), NIG = Captum (float64),
patching = a hand-made HF hook patch, aligned perturbations, ablation, pruning and load refusals.

Tiny seeded random ``ModernBertForSequenceClassification`` checkpoints (3 layers: global, local,
global; a window of 8 tokens, shorter than every pair; 1 and 2 labels, cls and mean pooling, with and
without biases) and a bare ``ModernBertModel``, with a WordPiece tokenizer trained in the test.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import DOCS, QUERIES
from family_checkpoints import make_modernbert, wordpiece_tokenizer

from mechir_nig import HookedBiEncoder, HookedCrossEncoder, UnsupportedArchitectureError, load_model, patch
from mechir_nig.attribution import NeuronIntegratedGradients, baseline_embeddings
from mechir_nig.interventions import perturb
from mechir_nig.models.tokenization import DOC, PAD, QUERY

MIXED_Q = QUERIES + ["neuron", "a much longer query about the formation of black holes in distant galaxies"]
MIXED_D = DOCS + ["Short.", DOCS[1] + " " + DOCS[0]]


@pytest.fixture(scope="module")
def tok():
    return wordpiece_tokenizer()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tok):
    """(n_labels, pooling) -> folder; (0, None) is the bare encoder."""
    out = {}
    for n, pooling, biases in ((1, "cls", False), (2, "mean", True), (1, "mean", False), (0, None, False)):
        out[n, pooling] = make_modernbert(
            tmp_path_factory.mktemp(f"mb{n}{pooling}"),
            tok,
            n_labels=n,
            pooling=pooling or "cls",
            seed=n + 3,
            biases=biases,
        )
    return out


def hf_model(folder, n_labels, dtype=torch.float32):
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if n_labels else AutoModel
    return cls.from_pretrained(str(folder), attn_implementation="eager", dtype=dtype).eval()


def hf_score(logits):
    return logits[:, 0] if logits.shape[1] == 1 else torch.log_softmax(logits, -1)[:, 1]


@pytest.mark.parametrize("key", [(1, "cls"), (2, "mean"), (1, "mean")])
def test_scores_hidden_states_and_neurons_equal_hf(folders, key):
    ce = load_model(folders[key])
    assert type(ce) is HookedCrossEncoder and ce.cfg.n_labels == key[0]
    assert ce.cfg.attn_types == ["global", "local", "global"] and ce.cfg.window_size == 8
    hf = hf_model(folders[key], key[0])
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    lengths = batch.attention_mask.sum(-1)
    assert lengths.unique().numel() > 2 and int(lengths.min()) > 8  # mixed lengths, padded; window < pair
    captured = {}
    handles = [
        layer.mlp.Wo.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0]))
        for i, layer in enumerate(hf.model.layers)
    ]
    with torch.no_grad():
        out = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        scores, cache = ce.run_with_cache(batch)
    for h in handles:
        h.remove()
    ref = hf_score(out.logits)
    assert ((scores - ref).abs() / ref.abs().clamp(min=1e-3)).max() <= 1e-5
    assert ref.std() > 1e-3  # the scores really differ between pairs
    real = batch.attention_mask.bool()
    assert (cache["hook_full_embed"][real] - out.hidden_states[0][real]).abs().max() <= 1e-5
    for layer in range(3):  # HF's last hidden state is after the final norm
        ours = cache["ln_final.hook_normalized" if layer == 2 else f"blocks.{layer}.hook_resid_post"][real]
        assert (ours - out.hidden_states[layer + 1][real]).abs().max() <= 1e-5, layer
        post = cache[f"blocks.{layer}.mlp.hook_post"]
        assert (post[real] - captured[layer][real]).abs().max() <= 1e-5, layer
        act = torch.nn.functional.gelu(cache[f"blocks.{layer}.mlp.hook_pre"])  # neuron = act(pre) * gate
        torch.testing.assert_close(act * cache[f"blocks.{layer}.mlp.hook_pre_linear"], post)
    # pre-LN: the residual stream is the sum of the embedding output and every attn/mlp output
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:3] == ["embed", "0_attn_out", "0_mlp_out"] and len(labels) == 7
    torch.testing.assert_close(parts.sum(0), cache["blocks.2.hook_resid_post"], atol=1e-5, rtol=0)


def test_the_window_matters(folders):
    """A local layer really attends only its window: a global-only model scores differently."""
    ce = load_model(folders[1, "cls"])
    batch = ce.tokenize(QUERIES, DOCS)
    ref = ce(batch)
    ce.blocks[1].attn.local = False
    try:
        assert (ce(batch) - ref).abs().max() > 1e-4
    finally:
        ce.blocks[1].attn.local = True


def test_bi_encoder_body_equals_hf(folders):
    be = load_model(folders[0, None])
    assert type(be) is HookedBiEncoder
    hf = hf_model(folders[0, None], 0)
    batch = be.tokenize(MIXED_D)
    with torch.no_grad():
        hidden = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    m = batch.attention_mask.unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert (be(batch) - ref).abs().max().item() <= 1e-5


def test_nig_equals_captum_float64(folders):
    from captum.attr import LayerConductance

    folder = folders[2, "mean"]
    ce = HookedCrossEncoder.from_pretrained(folder, dtype=torch.float64)
    hf = hf_model(folder, 2, dtype=torch.float64)
    for p in hf.parameters():
        p.requires_grad_(False)
    batch = ce.tokenize(QUERIES[:3], DOCS[:3])
    # the baseline replaces query and document tokens only ([PAD]); [CLS]/[SEP] and padding are kept
    xb_ids = torch.where(
        (batch.groups == QUERY) | (batch.groups == DOC), ce.cfg.pad_token_id, batch.input_ids
    )
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")
    assert torch.equal(xb, ce.word_embeddings(xb_ids))
    assert ((batch.groups != QUERY) & (batch.groups != DOC) & (batch.groups != PAD)).any()
    attr = NeuronIntegratedGradients(ce).attribute(batch, n_steps=8)

    def forward(embeds, attention_mask):
        return hf_score(hf(inputs_embeds=embeds, attention_mask=attention_mask).logits)

    x = hf.model.embeddings.tok_embeddings(batch.input_ids)
    # Captum on each pair alone: HF's float64 eager attention turns padded rows beyond the window into
    # NaN (a float64 mask minimum cast to float32 in its softmax); ours is attributed as one padded batch
    for layer in range(3):
        lc = LayerConductance(forward, hf.model.layers[layer].mlp.Wo)
        for i in range(3):
            n = int(batch.attention_mask[i].sum())
            ref = lc.attribute(
                x[i : i + 1, :n],
                baselines=xb[i : i + 1, :n],
                additional_forward_args=(batch.attention_mask[i : i + 1, :n],),
                n_steps=8,
                method="riemann_trapezoid",
                attribute_to_layer_input=True,
            ).detach()[0]
            scale = ref.abs().max().item()
            assert scale > 0
            # HF rotates queries and keys in float32 even in a float64 model: agreement to float32 rounding
            assert (attr.values[i, layer, :n] - ref).abs().max().item() <= 1e-6 * scale, (layer, i)
            assert attr.values[i, layer, n:].abs().sum() == 0  # padding gets nothing


def test_resid_pre_patch_equals_hf_hook_patch(folders):
    folder = folders[1, "cls"]
    ce = load_model(folder)
    hf = hf_model(folder, 1)
    clean = ce.tokenize(QUERIES[:2], DOCS[:2])
    doc_pos = [int((clean.groups[i] == DOC).nonzero()[2]) for i in range(2)]
    ids = clean.input_ids.clone()
    for i, p in enumerate(doc_pos):
        ids[i, p] = ce.tokenizer.convert_tokens_to_ids("rice")
    corrupted = dataclasses.replace(clean, input_ids=ids)
    res = patch(ce, clean, corrupted, sites="resid_pre", metric="raw", layers=[1, 2])
    with torch.no_grad():
        hidden = hf(input_ids=clean.input_ids, attention_mask=clean.attention_mask, output_hidden_states=True)
    for li, layer in enumerate((1, 2)):
        for i, p in enumerate(doc_pos):
            for pos in (p, p - 3, p + 2):  # the changed token, one before and one after it

                def hook(module, args, kwargs, i=i, pos=pos, layer=layer):
                    h = args[0].clone()
                    h[:, pos] = hidden.hidden_states[layer][i, pos]
                    return (h, *args[1:]), kwargs

                handle = hf.model.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
                with torch.no_grad():
                    n = int(corrupted.attention_mask[i].sum())
                    ref = hf(
                        input_ids=ids[i : i + 1, :n], attention_mask=corrupted.attention_mask[i : i + 1, :n]
                    )
                handle.remove()
                got = res.patched["resid_pre"][i, li, pos]
                assert abs(got - hf_score(ref.logits)[0]) <= 1e-5 * max(1.0, abs(got)), (layer, i, pos)
    assert (res.patched["resid_pre"] != res.base_scores[:, None, None]).any()


def test_aligned_perturbation_scores_as_unaligned_and_patches(folders):
    ce = load_model(folders[1, "mean"])
    for fn in (
        lambda q, d: perturb.tfc1(q, d, where="start"),
        lambda q, d: perturb.tfc1(q, d, where="middle"),
        lambda q, d: d.replace("a", "the", 1),
    ):
        al = perturb.align(ce, QUERIES, DOCS, fn)
        assert (al.clean.attention_mask == 0).any()  # masked slots are inserted
        pert = [fn(q, d) for q, d in zip(QUERIES, DOCS, strict=True)]
        torch.testing.assert_close(ce(al.clean), ce(ce.tokenize(QUERIES, DOCS)), atol=1e-6, rtol=0)
        torch.testing.assert_close(ce(al.perturbed), ce(ce.tokenize(QUERIES, pert)), atol=1e-6, rtol=0)
    # patching from the middle of an aligned pair passes its explicit positions to the rotary blocks:
    # patching the clean run into itself changes nothing (default 0..n-1 positions would move the score)
    res = patch(ce, al.clean, al.clean, sites="resid_pre", metric="raw", layers=[1, 2], skip_unchanged=False)
    torch.testing.assert_close(res.base_scores, ce(al.clean).float(), atol=1e-6, rtol=0)
    v = res.values["resid_pre"]
    torch.testing.assert_close(v, torch.zeros_like(v), atol=1e-5, rtol=0)
    res = patch(ce, al, sites="resid_pre", metric="raw", layers=[2])
    assert res.values["resid_pre"].abs().max() > 1e-4  # the perturbation's effect is patched back


def test_ablation_equals_hf_and_pruning_runs(folders):
    from mechir_nig.data import bm25_candidates, load_collection
    from mechir_nig.experiments.pruning import pruning_study, split_queries
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.sets import NeuronSet

    folder = folders[1, "cls"]
    ce, hf = load_model(folder), hf_model(folder, 1)
    units = {0: [1, 2], 2: [0, 5, 7]}
    top = NeuronSet([(layer, n) for layer, ns in units.items() for n in ns], n_layers=3, d_mlp=48)
    with ablate(ce, top, mode="zero") as ab:
        got = ab.score(QUERIES, DOCS)

    def zero(module, args, ns):
        h = args[0].clone()
        h[..., ns] = 0
        return (h,)

    handles = [
        hf.model.layers[layer].mlp.Wo.register_forward_pre_hook(lambda m, a, ns=ns: zero(m, a, ns))
        for layer, ns in units.items()
    ]
    batch = ce.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        ref = hf_score(hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits)
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got - ce.score(QUERIES, DOCS)).abs().max() > 1e-4
    with ablate(ce, top, mode="baseline", positions="doc") as ab:
        assert torch.isfinite(ab.score(QUERIES, DOCS)).all()

    col = load_collection("embedded")
    ranking = torch.randn(3, 48, generator=torch.Generator().manual_seed(0))
    sel, ev = split_queries(col)
    study = pruning_study(
        ce,
        col,
        bm25_candidates(col, k=3),
        ranking,
        fractions=(0.05,),
        seeds=1,
        modes=("zero",),
        select_queries=sel[:2],
        eval_queries=ev[:3],
        progress=False,
    )
    assert any(r["n_neurons"] > 0 for r in study.table())


def test_unsupported_variants_are_refused(folders, tmp_path):
    import shutil

    src = folders[1, "cls"]
    cfg = json.loads((src / "config.json").read_text())
    for change, match in (
        (
            {"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}},
            "yarn",
        ),
        ({"layer_types": ["full_attention", "chunked_attention", "full_attention"]}, "chunked_attention"),
        ({"_attn_implementation": "paged_magic"}, "paged_magic"),
        ({"classifier_pooling": "max"}, "classifier_pooling"),
    ):
        folder = tmp_path / match
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps(cfg | change))
        with pytest.raises(UnsupportedArchitectureError, match=match) as info:
            load_model(folder)
        assert "modernbert" in str(info.value)
