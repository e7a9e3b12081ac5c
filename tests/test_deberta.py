"""DeBERTa-v2/v3 (``deberta-v2``): parity with Hugging Face, NIG = Captum, patching, alignment, ablation.

Tiny seeded random ``DebertaV2ForSequenceClassification`` checkpoints (relative attention with both
``c2p`` and ``p2c`` terms) in two variants, saved with ``save_pretrained`` beside a SentencePiece-style
Unigram tokenizer trained here:

- ``v3``: DeBERTa-v3's options: no absolute positions, no token types, shared attention keys, log
  buckets (8) over 64 relative positions, LayerNorm on the relative embeddings, 1 label;
- ``v2``: absolute positions added to the input, token types, separate ``pos_key_proj`` /
  ``pos_query_proj``, no buckets (16 relative positions, clipped), ``tanh`` pooler, 2 labels.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import DOCS, QUERIES
from family_checkpoints import DEBERTA_VARIANTS, deberta_tokenizer, make_deberta

from mechir_nig import HookedBiEncoder, HookedCrossEncoder, UnsupportedArchitectureError, load_model
from mechir_nig.attribution import NeuronIntegratedGradients, baseline_embeddings
from mechir_nig.attribution.baselines import baseline_replaced
from mechir_nig.interventions import ablate, patch, perturb
from mechir_nig.models.tokenization import CLS, DOC, QUERY, SEP
from mechir_nig.sets import NeuronSet

MIXED_Q = QUERIES + ["neuron"]
MIXED_D = DOCS + ["Short."]  # padded, mixed lengths; the longest rows pass the bucket and clip limits
VARIANTS = DEBERTA_VARIANTS


@pytest.fixture(scope="module")
def tokenizer():
    return deberta_tokenizer()


_save = make_deberta


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    return {
        name: _save(tmp_path_factory.mktemp(name), tokenizer, seed=i, **opts)
        for i, (name, opts) in enumerate(VARIANTS.items())
    }


def hf_model(folder, dtype=torch.float32, bare=False):
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModel if bare else AutoModelForSequenceClassification
    return cls.from_pretrained(str(folder), dtype=dtype).eval()


def hf_kwargs(batch, model):
    kw = {"attention_mask": batch.attention_mask}
    if model.cfg.n_token_types:
        kw["token_type_ids"] = batch.token_type_ids
    return kw


def hf_score(logits):
    return logits[:, 0] if logits.shape[1] == 1 else torch.log_softmax(logits, -1)[:, 1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scores_hidden_states_patterns_and_neurons_equal_hf(folders, variant):
    ce = load_model(folders[variant])
    assert isinstance(ce, HookedCrossEncoder) and ce.cfg.architecture == "deberta-v2"
    hf = hf_model(folders[variant])
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    assert (batch.attention_mask == 0).any()  # padded
    captured = {}
    handles = [
        layer.output.dense.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0]))
        for i, layer in enumerate(hf.deberta.encoder.layer)
    ]
    with torch.no_grad():
        out = hf(batch.input_ids, **hf_kwargs(batch, ce), output_hidden_states=True, output_attentions=True)
    for h in handles:
        h.remove()
    scores, cache = ce.run_with_cache(batch)
    ref = hf_score(out.logits)
    assert ref.std() > 1e-3  # the pairs score differently
    torch.testing.assert_close(scores, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(cache["hook_full_embed"], out.hidden_states[0], rtol=1e-5, atol=1e-5)
    for layer in range(ce.cfg.n_layers):
        got = cache[f"blocks.{layer}.hook_normalized_resid_post"]
        torch.testing.assert_close(got, out.hidden_states[layer + 1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            cache[f"blocks.{layer}.mlp.hook_post"], captured[layer], rtol=1e-5, atol=1e-5
        )
        # the pattern is the full score's softmax: content, c2p and p2c terms
        torch.testing.assert_close(
            cache[f"blocks.{layer}.attn.hook_pattern"], out.attentions[layer], atol=1e-6, rtol=0
        )
        assert cache[f"blocks.{layer}.attn.hook_c2p"].abs().max() > 0
        assert cache[f"blocks.{layer}.attn.hook_p2c"].abs().max() > 0


def test_nig_equals_captum_float64_with_pad_baseline_on_query_and_doc_only(folders):
    from captum.attr import LayerConductance

    folder = folders["v3"]
    ce = HookedCrossEncoder.from_pretrained(folder, dtype=torch.float64)
    hf = hf_model(folder, torch.float64)
    for p in hf.parameters():
        p.requires_grad_(False)
    batch = ce.tokenize(QUERIES[:2], DOCS[:2])
    # the baseline replaces query and document tokens by [PAD], never [CLS]/[SEP]
    assert ce.cfg.pad_token_id == ce.tokenizer.pad_token_id == ce.tokenizer.convert_tokens_to_ids("[PAD]")
    replaced = baseline_replaced(batch.groups, "pad")
    assert torch.equal(replaced, (batch.groups == QUERY) | (batch.groups == DOC))
    assert (batch.groups == CLS).any() and (batch.groups == SEP).any()
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")
    ids = torch.where(replaced, ce.tokenizer.pad_token_id, batch.input_ids)
    torch.testing.assert_close(xb, ce.word_embeddings(ids), atol=0, rtol=0)

    attr = NeuronIntegratedGradients(ce).attribute(batch, n_steps=8)
    x = hf.deberta.embeddings.word_embeddings(batch.input_ids)

    def forward(embeds, attention_mask):
        return hf_score(hf(inputs_embeds=embeds, attention_mask=attention_mask).logits)

    for layer in range(ce.cfg.n_layers):
        lc = LayerConductance(forward, hf.deberta.encoder.layer[layer].output.dense)
        ref = lc.attribute(
            x,
            baselines=xb,
            additional_forward_args=(batch.attention_mask,),
            n_steps=8,
            method="riemann_trapezoid",
            attribute_to_layer_input=True,
        ).detach()
        scale = ref.abs().max().item()
        assert scale > 0
        assert (attr.values[:, layer] - ref).abs().max().item() <= 1e-9 * scale, layer


def _corrupt(batch, tokenizer):
    """The batch with every third document token replaced (same shape, no masked slot)."""
    ids = batch.input_ids.clone()
    doc = (batch.groups == DOC).nonzero()
    sub = doc[::3]
    ids[sub[:, 0], sub[:, 1]] = tokenizer.convert_tokens_to_ids("▁a")
    from dataclasses import replace

    return replace(batch, input_ids=ids)


def test_resid_pre_patch_equals_hf_hook_patch(folders):
    folder = folders["v2"]
    ce = HookedCrossEncoder.from_pretrained(folder, dtype=torch.float64)
    hf = hf_model(folder, torch.float64)
    clean = ce.tokenize(["neuron", "rice"], ["A neuron is a cell.", "Rinse the rice."])
    corrupted = _corrupt(clean, ce.tokenizer)
    res = patch(ce, clean, corrupted, sites="resid_pre", metric="raw", skip_unchanged=False)
    with torch.no_grad():
        hs = hf(clean.input_ids, **hf_kwargs(clean, ce), output_hidden_states=True).hidden_states
    n_pos = clean.input_ids.shape[1]
    ref = torch.zeros(2, ce.cfg.n_layers, n_pos, dtype=torch.float64)
    for layer in range(ce.cfg.n_layers):
        for pos in range(n_pos):

            def pre(module, args, layer=layer, pos=pos):
                x = args[0].clone()
                x[:, pos] = hs[layer][:, pos]
                return (x, *args[1:])

            h = hf.deberta.encoder.layer[layer].register_forward_pre_hook(pre)
            with torch.no_grad():
                ref[:, layer, pos] = hf_score(hf(corrupted.input_ids, **hf_kwargs(corrupted, ce)).logits)
            h.remove()
    assert (ref - ref[:, :1, :1]).abs().max() > 1e-6  # patches move the score
    torch.testing.assert_close(res.patched["resid_pre"].double(), ref, atol=1e-6, rtol=0)


def test_aligned_sides_score_as_unaligned_and_patch_from_a_later_layer(folders):
    ce = HookedCrossEncoder.from_pretrained(folders["v3"], dtype=torch.float64)
    al = perturb.align(ce, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="middle"))
    assert (al.clean.attention_mask == 0).any()  # masked slots inserted
    pert = [perturb.tfc1(q, d, where="middle") for q, d in zip(QUERIES[:2], DOCS[:2], strict=True)]
    for side, docs in ((al.clean, DOCS[:2]), (al.perturbed, pert)):
        torch.testing.assert_close(ce(side), ce(ce.tokenize(QUERIES[:2], docs)), atol=1e-6, rtol=0)
    # patching runs from block 1's cached residual stream of the clean side, which has masked slots:
    # the relative positions there must follow the slots' position ids (without them: off by 1e-4)
    res = patch(ce, al, sites="resid_pre", layers=[1], direction="noise", metric="raw", skip_unchanged=False)
    _, cache = ce.run_with_cache(al.perturbed, names_filter="blocks.1.hook_resid_pre")
    src = cache["blocks.1.hook_resid_pre"]
    for pos in range(0, al.clean.input_ids.shape[1], 5):

        def hook(act, hook, pos=pos):
            act = act.clone()
            act[:, pos] = src[:, pos]
            return act

        ref = ce.run_with_hooks(al.clean, fwd_hooks=[("blocks.1.hook_resid_pre", hook)])
        # patched scores are stored in float32
        torch.testing.assert_close(res.patched["resid_pre"][:, 0, pos].double(), ref, atol=1e-7, rtol=0)


def test_ablation_changes_the_score_as_a_hand_hook(folders):
    ce = load_model(folders["v3"])
    batch = ce.tokenize(QUERIES, DOCS)
    clean = ce(batch)

    def zero(act, hook):
        act = act.clone()
        act[..., [3, 9]] = 0.0
        return act

    expected = ce.run_with_hooks(batch, fwd_hooks=[("blocks.1.mlp.hook_post", zero)])
    with ablate(ce, NeuronSet([(1, 3), (1, 9)], n_layers=2, d_mlp=64), mode="zero"):
        got = ce(batch)
    assert (got - clean).abs().max() > 1e-6
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_bi_encoder_body_loads_and_equals_hf(tmp_path, tokenizer):
    folder = _save(tmp_path / "bare", tokenizer, bare=True, seed=5, **VARIANTS["v3"])
    be = load_model(folder)
    assert isinstance(be, HookedBiEncoder)
    hf = hf_model(folder, bare=True)
    batch = be.tokenize(MIXED_D)
    with torch.no_grad():
        last = hf(batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    m = batch.attention_mask.unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((last * m).sum(1) / m.sum(1), dim=-1)
    torch.testing.assert_close(be(batch), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("option", "value"),
    [("conv_kernel_size", 3), ("embedding_size", 16), ("pos_att_type", ["p2c", "p2p"])],
)
def test_unsupported_variant_is_refused_with_file_and_fix(folders, tmp_path, option, value):
    folder = tmp_path / "variant"
    shutil.copytree(folders["v3"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[option] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    for load in (load_model, HookedCrossEncoder.from_pretrained, HookedBiEncoder.from_pretrained):
        with pytest.raises(UnsupportedArchitectureError, match=f"config.json: .*{option}.*not implemented"):
            load(folder)
