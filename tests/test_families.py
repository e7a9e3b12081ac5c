"""Every encoder family: parity with Hugging Face, hooks, template groups and NIG = Captum (float64).

For each family (BERT, ELECTRA with a narrower embedding, RoBERTa, XLM-R, DistilBERT) a tiny seeded
``...ForSequenceClassification`` (1 and 2 labels) and a bare ``...Model`` bi-encoder are saved with
``save_pretrained`` beside the family's tokenizer (``mechir_nig.testing.family_tokenizer``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES
from test_models import expected_shapes

from mechir_nig import HookedBiEncoder, HookedCrossEncoder, UnsupportedArchitectureError, load_model
from mechir_nig.attribution import NeuronIntegratedGradients, baseline_embeddings
from mechir_nig.models.tokenization import CLS, DOC, QUERY, SEP
from mechir_nig.testing import FAMILIES, family_tokenizer, make_tiny_checkpoint

MIXED_Q = QUERIES + ["neuron", "a much longer query about the formation of black holes in distant galaxies"]
MIXED_D = DOCS + ["Short.", DOCS[1] + " " + DOCS[0] + " " + DOCS[2]]
HF_BODY = {
    "bert": "bert",
    "electra": "electra",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "distilbert": "distilbert",
}


@pytest.fixture(scope="module")
def tokenizers():
    return {f: family_tokenizer(f) for f in FAMILIES}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizers):
    """(family, n_labels) -> folder; n_labels 0 is the bare encoder."""
    out = {}
    for f in FAMILIES:
        for n in (0, 1, 2):
            out[f, n] = make_tiny_checkpoint(
                tmp_path_factory.mktemp(f"{f}{n}"),
                f,
                tokenizers[f],
                n_labels=n,
                n_layers=2 + (n == 2),
                n_heads=2 if n < 2 else 4,
                seed=n + 7,
                act="gelu_new" if (f, n) == ("distilbert", 2) else "gelu",
                embedding_size=16 if f == "electra" else None,
            )
    return out


def hf_model(folder, n_labels, dtype=torch.float32):
    from transformers import AutoModel, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if n_labels else AutoModel
    return cls.from_pretrained(str(folder), attn_implementation="eager", dtype=dtype).eval()


def hf_inputs(batch, family):
    kw = {"attention_mask": batch.attention_mask}
    if family != "distilbert":
        kw["token_type_ids"] = batch.token_type_ids
    return kw


def hf_score(logits):
    return logits[:, 0] if logits.shape[1] == 1 else torch.log_softmax(logits, -1)[:, 1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_labels", [1, 2])
def test_cross_encoder_parity(checkpoints, family, n_labels):
    folder = checkpoints[family, n_labels]
    ce = HookedCrossEncoder.from_pretrained(folder)
    assert ce.cfg.n_labels == n_labels and type(load_model(folder)) is HookedCrossEncoder
    hf = hf_model(folder, n_labels)
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    assert batch.attention_mask.sum(-1).unique().numel() > 2  # mixed lengths, padded
    with torch.no_grad():
        ref = hf_score(hf(input_ids=batch.input_ids, **hf_inputs(batch, family)).logits)
        ours = ce(batch)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ref.std() > 1e-3  # the scores really differ between pairs


@pytest.mark.parametrize("family", FAMILIES)
def test_bi_encoder_parity(checkpoints, family):
    folder = checkpoints[family, 0]
    be = HookedBiEncoder.from_pretrained(folder)
    assert type(load_model(folder)) is HookedBiEncoder
    hf = hf_model(folder, 0)
    batch = be.tokenize(MIXED_D)
    with torch.no_grad():
        hidden = hf(input_ids=batch.input_ids, **hf_inputs(batch, family)).last_hidden_state
    m = batch.attention_mask.unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    assert (be(batch) - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_same_names_and_shapes(checkpoints, family):
    ce = HookedCrossEncoder.from_pretrained(checkpoints[family, 1])
    batch = ce.tokenize(QUERIES, DOCS)
    _, cache = ce.run_with_cache(batch)
    b, p = batch.input_ids.shape
    shapes = expected_shapes(ce.cfg, b, p)
    shapes.update({"pooler.hook_pooler_out": (b, 32), "classifier.hook_logits": (b, 1), "hook_score": (b,)})
    assert set(cache.keys()) == set(shapes)
    for name, shape in shapes.items():
        assert tuple(cache[name].shape) == shape, name
    if family == "electra":
        assert ce.cfg.d_embed == 16 and cache["hook_embed"].shape[-1] == 16
    # the hidden states equal HF's block by block
    hf = hf_model(checkpoints[family, 1], 1)
    with torch.no_grad():
        out = hf(input_ids=batch.input_ids, **hf_inputs(batch, family), output_hidden_states=True)
    real = batch.attention_mask.bool()
    for layer in range(ce.cfg.n_layers):
        ours = cache[f"blocks.{layer}.hook_normalized_resid_post"][real]
        assert (ours - out.hidden_states[layer + 1][real]).abs().max() <= 1e-5, layer
    assert (cache["hook_full_embed"][real] - out.hidden_states[0][real]).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_template_groups(checkpoints, tokenizers, family):
    tok = tokenizers[family]
    ce = HookedCrossEncoder.from_pretrained(checkpoints[family, 1])
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    for i, (q, d) in enumerate(zip(MIXED_Q, MIXED_D)):
        ids, groups = batch.input_ids[i], batch.groups[i]
        kept, full = ids[groups == DOC].tolist(), tok(d, add_special_tokens=False)["input_ids"]
        assert kept == full[: len(kept)] and (len(kept) < len(full)) == bool(batch.truncated[i])
        assert ids[groups == QUERY].tolist() == tok(q, add_special_tokens=False)["input_ids"]
        n = int(batch.attention_mask[i].sum())
        template = tok(q, d, truncation="only_second", max_length=ce.max_length)
        assert ids[:n].tolist() == template["input_ids"]  # exactly the tokenizer's own template
        specials = groups[:n][(groups[:n] == CLS) | (groups[:n] == SEP)].tolist()
        if family in ("roberta", "xlm-roberta"):  # <s> q </s></s> d </s>
            assert tok.convert_ids_to_tokens(ids[:n][groups[:n] != QUERY][:3].tolist()) == [
                "<s>",
                "</s>",
                "</s>",
            ]
            assert specials == [CLS, SEP, SEP, SEP]
        else:  # [CLS] q [SEP] d [SEP]
            assert specials == [CLS, SEP, SEP]
        tt = batch.token_type_ids[i, :n]
        if family in ("bert", "electra"):
            assert tt.tolist() == template["token_type_ids"]
        else:
            assert tt.eq(0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_template_truncation_keeps_query_and_reports(checkpoints, family):
    ce = HookedCrossEncoder.from_pretrained(checkpoints[family, 1])
    long_doc = " ".join(DOCS * 4)
    with pytest.warns(UserWarning, match="truncated"):
        batch = ce.tokenize([QUERIES[0], "neuron"], [long_doc, "cells fire"], max_length=40)
    assert batch.truncated.tolist() == [True, False]
    assert int(batch.attention_mask[0].sum()) == 40
    q_len = len(ce.tokenizer(QUERIES[0], add_special_tokens=False)["input_ids"])
    assert int((batch.groups[0] == QUERY).sum()) == q_len


def captum_family(hf, family, ce, batch, layer, n_steps):
    from captum.attr import LayerConductance

    for p in hf.parameters():
        p.requires_grad_(False)
    body = getattr(hf, HF_BODY[family])
    x = body.embeddings.word_embeddings(batch.input_ids)
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")
    if family == "distilbert":
        module = body.transformer.layer[layer].ffn.activation
    else:
        module = body.encoder.layer[layer].intermediate

    def forward(embeds, token_type_ids, attention_mask):
        kw = {"attention_mask": attention_mask}
        if family != "distilbert":
            kw["token_type_ids"] = token_type_ids
        return hf_score(hf(inputs_embeds=embeds, **kw).logits)

    lc = LayerConductance(forward, module)
    out = lc.attribute(
        x,
        baselines=xb,
        additional_forward_args=(batch.token_type_ids, batch.attention_mask),
        n_steps=n_steps,
        method="riemann_trapezoid",
    )
    return out.detach()


@pytest.mark.parametrize("family", FAMILIES)
def test_nig_equals_captum_float64(checkpoints, family):
    folder = checkpoints[family, 2]
    ce = HookedCrossEncoder.from_pretrained(folder, dtype=torch.float64)
    hf = hf_model(folder, 2, dtype=torch.float64)
    batch = ce.tokenize(QUERIES[:3], DOCS[:3])
    attr = NeuronIntegratedGradients(ce).attribute(batch, n_steps=8)
    for layer in range(ce.cfg.n_layers):
        ref = captum_family(hf, family, ce, batch, layer, 8)
        scale = ref.abs().max().item()
        assert scale > 0
        assert (attr.values[:, layer] - ref).abs().max().item() <= 1e-9 * scale, layer


@pytest.mark.parametrize("model_type", ["gpt2", "xlnet"])
def test_unsupported_families_list_what_is_supported(tmp_path, model_type):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
    for cls in (HookedCrossEncoder, HookedBiEncoder):
        with pytest.raises(UnsupportedArchitectureError, match="supported model_type values: bert, electra"):
            cls.from_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="DistilBertForSequenceClassification"):
        load_model(tmp_path)
