"""The residual stream and every family's score decomposed with frozen LayerNorm scales and frozen head
nonlinearities (issue 17, post-LN analysis helpers; direct score attribution): the contributions add up to
the run's values, and each one is what its component adds when the scales and the other components are
held at the run's values. (decompose_resid of ModernBERT, DeBERTa, decoders and the refused monoT5:
test_every_family.)"""

from __future__ import annotations

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES
from family_checkpoints import (
    DEBERTA_VARIANTS,
    T5_DOCS,
    T5_QUERIES,
    deberta_tokenizer,
    decoder_tokenizer,
    make_deberta,
    make_decoder,
    make_modernbert,
    make_t5,
    t5_tokenizer,
    wordpiece_tokenizer,
)

from mechir_nig import HookedBiEncoder, HookedCrossEncoder, InputError, load_model
from mechir_nig.analysis import decompose_resid, decompose_score
from mechir_nig.testing import family_tokenizer, make_tiny_checkpoint


def test_sums_to_hf_hidden_states_of_a_tiny_bert(ce64, hf64):
    batch = ce64.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        hidden = hf64.bert(
            **hf_hooks.inputs(batch), output_hidden_states=True
        ).hidden_states  # embeddings, layers
    n, h = ce64.cfg.n_layers, ce64.cfg.n_heads
    for layer in (None, *range(n + 1)):
        dec = decompose_resid(ce64, batch, layer=layer)
        ref = hidden[n if layer is None else layer]
        torch.testing.assert_close(dec.resid, ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(dec.components.sum(0), ref, rtol=0, atol=1e-10)
        top = n if layer is None else layer
        assert len(dec.labels) == 1 + top * (h + 4) == dec.components.shape[0]
    coarse = decompose_resid(ce64, batch, heads=False)
    assert coarse.labels[:5] == ["embed", "0_attn_out", "0_ln1_bias", "0_mlp_out", "0_ln2_bias"]
    torch.testing.assert_close(coarse.components.sum(0), hidden[n], rtol=0, atol=1e-10)
    # a layer's heads and attention bias add up to its attention output's contribution
    fine = decompose_resid(ce64, batch)
    heads = [fine[f"L1H{i}"] for i in range(h)] + [fine["1_attn_bias"]]
    torch.testing.assert_close(torch.stack(heads).sum(0), coarse["1_attn_out"], rtol=0, atol=1e-10)


def test_a_contribution_is_the_effect_with_scales_and_other_components_frozen(ce64):
    """Zeroing head (last layer, 1) while its block's LayerNorm scales and MLP output are held at the run's
    values moves the output by exactly minus that head's contribution: the linearisation's meaning."""
    batch = ce64.tokenize(QUERIES[:2], DOCS[:2])
    last = ce64.cfg.n_layers - 1
    dec = decompose_resid(ce64, batch)
    held = [f"blocks.{last}.{h}" for h in ("ln1.hook_scale", "ln2.hook_scale", "hook_mlp_out")]
    out_name = f"blocks.{last}.hook_normalized_resid_post"
    _, cache = ce64.run_with_cache(batch, names_filter=held + [out_name])

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    got = {}
    hooks = [(f"blocks.{last}.attn.hook_z", zero_head)]
    hooks += [(name, lambda a, hook: cache[hook.name]) for name in held]
    hooks.append((out_name, lambda a, hook: got.setdefault("out", a)))
    ce64.run_with_hooks(batch, fwd_hooks=hooks)
    change = got["out"] - cache[out_name]
    assert change.abs().max() > 1e-3
    torch.testing.assert_close(change, -dec[f"L{last}H1"], rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def minilm64(minilm_path):
    return HookedBiEncoder.from_pretrained(minilm_path, dtype=torch.float64)


def test_minilm_bi_encoder_score_sums_exactly(minilm64):
    """all-MiniLM-L6-v2 (mean pooling, cosine): the contributions add up to ``model.score`` (float64)."""
    q, d = QUERIES[:3], DOCS[:3]
    batch = minilm64.tokenize(d)
    sd = decompose_score(minilm64, batch, minilm64.encode(q))
    assert sd.contributions.shape == (1 + 6 * (12 + 4), 3) and len(sd.labels) == sd.contributions.shape[0]
    torch.testing.assert_close(sd.scores, minilm64.score(q, d), rtol=0, atol=1e-10)
    torch.testing.assert_close(sd.contributions.sum(0), sd.scores, rtol=0, atol=1e-10)
    assert sd.contributions.abs().max() < 10 * sd.scores.abs().max()  # no huge cancelling terms
    label, value = sd.top(1, pair=0)[0]
    assert value == float(sd.contributions[sd.labels.index(label), 0])
    dec = decompose_resid(minilm64, batch, layer=4, heads=False)
    torch.testing.assert_close(dec.components.sum(0), dec.resid, rtol=0, atol=1e-10)


def test_bad_inputs_are_refused(ce64, minilm64):
    batch = ce64.tokenize(QUERIES[:1], DOCS[:1])
    with pytest.raises(InputError, match="bi-encoder"):
        decompose_score(ce64, batch, torch.zeros(1, ce64.cfg.d_model))
    with pytest.raises(InputError, match="pass no query_embeddings"):
        decompose_score(ce64, batch, torch.zeros(1, ce64.cfg.d_model))
    with pytest.raises(InputError, match="query_embeddings must be a tensor"):
        decompose_score(minilm64, minilm64.tokenize(DOCS[:2]))  # a bi-encoder needs its fixed side
    with pytest.raises(InputError, match="no component 'L9H9'"):
        decompose_score(ce64, batch)["L9H9"]
    with pytest.raises(InputError, match="layer"):
        decompose_resid(ce64, batch, layer=ce64.cfg.n_layers + 1)
    with pytest.raises(InputError, match="tokenized"):
        decompose_resid(ce64, QUERIES[:1])
    with pytest.raises(InputError, match="tokenized"):
        decompose_score(ce64, QUERIES[:1])
    with pytest.raises(InputError, match="query_embeddings"):
        decompose_score(minilm64, minilm64.tokenize(DOCS[:2]), torch.zeros(3, 384))


# -- direct score attribution of cross-encoders and decoder rerankers -------------------------------------


def _bert_like(family, n_labels):
    return lambda tmp: make_tiny_checkpoint(tmp, family, family_tokenizer(family), n_labels=n_labels)


def _decoder(kind, **kw):
    def build(tmp):
        folder, tok = decoder_tokenizer(tmp / "tok")
        return make_decoder(tmp / "model", tok, kind, pad_row=True, **kw)

    return build


CHECKPOINTS = {  # family: (builder, load_model options); 1- and 2-label heads, every head kind
    "electra-2": (_bert_like("electra", 2), {}),  # GELU dense
    "roberta-1": (_bert_like("roberta", 1), {}),  # tanh dense
    "xlm-roberta-2": (_bert_like("xlm-roberta", 2), {}),
    "distilbert-1": (_bert_like("distilbert", 1), {}),  # ReLU pre_classifier
    "deberta-2": (
        lambda t: make_deberta(t, deberta_tokenizer(), **{**DEBERTA_VARIANTS["v3"], "num_labels": 2}),
        {},
    ),
    "modernbert-cls-1": (lambda t: make_modernbert(t, wordpiece_tokenizer(), n_layers=2, seed=1), {}),
    "modernbert-mean-2": (
        lambda t: make_modernbert(
            t, wordpiece_tokenizer(), n_labels=2, pooling="mean", biases=True, n_layers=2
        ),
        {},
    ),
    "qwen3-template": (_decoder("qwen3"), {"template": "qwen3-reranker"}),  # logit_yes - logit_no
    "qwen2-seq-1": (_decoder("qwen2"), {}),
    "monot5-v1.0": (lambda t: make_t5(t, t5_tokenizer(), "v1.0"), {"template": "monot5"}),  # tied: rescaled
    "monot5-v1.1": (lambda t: make_t5(t, t5_tokenizer(), "v1.1"), {"template": "monot5"}),
}


def _expected_labels(model, family, batch):
    """decompose_resid's labels (+ ``head_bias`` for an encoder head); monoT5: its decoder's components."""
    if family.startswith("monot5"):
        labels = ["dec_embed"]
        for lay in range(model.cfg.n_decoder_layers):
            labels += [f"dec_L{lay}{t}{h}" for t in ("H", "X") for h in range(model.cfg.n_heads)]
            labels.append(f"dec_{lay}_mlp_out")
        return labels
    labels = decompose_resid(model, batch).labels
    return labels + ([] if family.startswith("qwen") else ["head_bias"])


@pytest.mark.parametrize("family", list(CHECKPOINTS))
def test_score_contributions_add_up_to_every_familys_score(family, tmp_path):
    """Frozen head nonlinearities: the contributions add up to the model's own score (1 label) or logit
    margin (2 labels, templates, monoT5's true - false), whose score log_softmax(...)[:, 1] =
    -softplus(-margin) is monotone in it."""
    build, options = CHECKPOINTS[family]
    model = load_model(build(tmp_path), dtype=torch.float64, **options)
    batch = model.tokenize(T5_QUERIES, T5_DOCS)  # different lengths: padding, last positions, mean pooling
    sd = decompose_score(model, batch)
    logits = model(batch, return_type="logits")
    torch.testing.assert_close(sd.scores, model(batch), rtol=0, atol=1e-12)
    neg, pos = getattr(model, "answer_ids", (0, 1))  # monoT5: the (false, true) vocabulary rows
    if logits.shape[1] == 1:
        assert sd.target == "score"
        torch.testing.assert_close(sd.total, sd.scores, rtol=0, atol=1e-12)
    else:
        assert sd.target == "logit_margin"
        torch.testing.assert_close(sd.total, logits[:, pos] - logits[:, neg], rtol=0, atol=1e-12)
        torch.testing.assert_close(sd.scores, -torch.nn.functional.softplus(-sd.total), rtol=0, atol=1e-12)
    torch.testing.assert_close(sd.contributions.sum(0), sd.total, rtol=0, atol=1e-10)
    assert sd.labels == _expected_labels(model, family, batch)
    assert sd.contributions.shape == (len(sd.labels), len(T5_QUERIES))
    assert sd.contributions[:-1].abs().max() > 1e-3  # components carry the score, not only the bias
    coarse = decompose_score(model, batch, heads=False)
    torch.testing.assert_close(coarse.contributions.sum(0), sd.total, rtol=0, atol=1e-10)
    n_heads = model.cfg.n_heads
    if family.startswith("monot5"):  # self- and cross-attention heads add up to their layer's output
        for tag, site in (("H", "attn"), ("X", "cross_attn")):
            heads = sum(sd[f"dec_L1{tag}{h}"] for h in range(n_heads))
            torch.testing.assert_close(heads, coarse[f"dec_1_{site}_out"], rtol=0, atol=1e-10)
        model.set_stack("decoder")  # the plain hook names now address the decoder: the same result
        try:
            torch.testing.assert_close(decompose_score(model, batch).contributions, sd.contributions)
        finally:
            model.set_stack("encoder")
        return
    heads = sum(sd[f"L1H{h}"] for h in range(n_heads)) + sd["1_attn_bias"]
    torch.testing.assert_close(heads, coarse["1_attn_out"], rtol=0, atol=1e-10)


def _cls_head_by_hand(hf, h_cls, x):
    """BERT's pooler and classifier applied to ``x`` ``[..., batch, d]`` with tanh frozen at ``h_cls``'s run."""
    dense, clf = hf.bert.pooler.dense, hf.classifier
    u = dense(h_cls)
    ratio = torch.tanh(u) / u  # no unit is exactly 0 here
    return (ratio * (x @ dense.weight.T)) @ clf.weight[0], (ratio * dense.bias) @ clf.weight[0] + clf.bias[0]


@torch.no_grad()
def test_bert_cross_encoder_head_by_hand_from_hf_weights(ce64, hf64):
    """The [CLS] components pushed through HF's pooler dense layer with tanh frozen as tanh(u)/u at HF's
    own pre-activation u, then HF's classifier row: ours, to 1e-12."""
    batch = ce64.tokenize(QUERIES, DOCS)
    out = hf64(**hf_hooks.inputs(batch), output_hidden_states=True)
    sd = decompose_score(ce64, batch)
    dec = decompose_resid(ce64, batch)
    comps, bias = _cls_head_by_hand(hf64, out.hidden_states[-1][:, 0], dec.components[:, :, 0])
    torch.testing.assert_close(sd.contributions[:-1], comps, rtol=0, atol=1e-12)
    torch.testing.assert_close(sd["head_bias"], bias, rtol=0, atol=1e-12)
    torch.testing.assert_close(sd.scores, out.logits[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(sd.contributions.sum(0), out.logits[:, 0], rtol=0, atol=1e-10)


@torch.no_grad()
def test_one_heads_contribution_equals_hf_hooks_through_the_frozen_head(ce64, hf64):
    """Head (0, 1) by hand on Hugging Face's BERT: its slice of the attention context times its slice of
    the output dense weight, through every later LayerNorm with the scale 1/sqrt(var + eps) recomputed from
    the LayerNorm's own input (caught by a pre-hook), then the [CLS] through the frozen tanh head."""
    layer, head = 0, 1
    batch = ce64.tokenize(QUERIES, DOCS)
    bert = hf64.bert
    d_head = ce64.cfg.d_model // ce64.cfg.n_heads
    cols = slice(head * d_head, (head + 1) * d_head)
    lns = [
        ln
        for blk in bert.encoder.layer[layer:]
        for ln in (blk.attention.output.LayerNorm, blk.output.LayerNorm)
    ]
    seen: dict[object, torch.Tensor] = {}

    def keep(key, value):  # a hook that returns None: it only reads
        seen[key] = value

    handles = [ln.register_forward_pre_hook(lambda m, a, i=i: keep(i, a[0])) for i, ln in enumerate(lns)]
    attn = bert.encoder.layer[layer].attention
    handles.append(attn.self.register_forward_hook(lambda m, a, out: keep("ctx", out[0])))
    try:
        out = hf64(**hf_hooks.inputs(batch), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    x = seen["ctx"][..., cols] @ attn.output.dense.weight[:, cols].T  # the head's output [batch, pos, d]
    for i, ln in enumerate(lns):
        inp = seen[i]
        scale = 1 / torch.sqrt(inp.var(-1, unbiased=False, keepdim=True) + ln.eps)
        x = (x - x.mean(-1, keepdim=True)) * scale * ln.weight
    expected, _ = _cls_head_by_hand(hf64, out.hidden_states[-1][:, 0], x[:, 0])
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(decompose_score(ce64, batch)[f"L{layer}H{head}"], expected, rtol=0, atol=1e-10)


def test_two_label_bert_decomposes_the_logit_margin(tiny_ce2_dir):
    """MonoBERT's 2 labels: the margin logits[:, 1] - logits[:, 0] is decomposed (the head's rows
    subtracted), named by target; the score is -softplus(-margin)."""
    ce2 = HookedCrossEncoder.from_pretrained(tiny_ce2_dir, dtype=torch.float64)
    batch = ce2.tokenize(QUERIES, DOCS)
    sd = decompose_score(ce2, batch)
    logits = ce2(batch, return_type="logits")
    assert sd.target == "logit_margin"
    torch.testing.assert_close(sd.contributions.sum(0), logits[:, 1] - logits[:, 0], rtol=0, atol=1e-10)
    torch.testing.assert_close(sd.scores, torch.log_softmax(logits, -1)[:, 1], rtol=0, atol=1e-12)


@torch.no_grad()
def test_modernbert_mean_pooling_head_by_hand_from_hf_weights(tmp_path):
    """ModernBERT (mean pooling, biases, 2 labels): the components' attended-token means through Hugging
    Face's head.dense, the activation frozen as act(u)/u at the run's u, head.norm with its scale
    1/sqrt(var + eps) recomputed from the activation's output, and classifier rows 1 - 0: ours, to 1e-10."""
    from transformers import AutoModelForSequenceClassification

    folder = CHECKPOINTS["modernbert-mean-2"][0](tmp_path)
    model = load_model(folder, dtype=torch.float64)
    hf = AutoModelForSequenceClassification.from_pretrained(
        str(folder), attn_implementation="eager", dtype=torch.float64
    ).eval()
    batch = model.tokenize(T5_QUERIES, T5_DOCS)
    m = batch.attention_mask.to(torch.float64)[..., None]
    dec = decompose_resid(model, batch)  # the run: final hidden states and their components
    hidden = hf.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    # HF eager leaves NaN at padded rows whose local window holds only padding: compare attended rows
    hidden = torch.where(m.bool(), hidden, 0)
    # HF's run equals ours to float32 rounding (both rotate in float32); the frozen values are our run's
    torch.testing.assert_close(hidden, torch.where(m.bool(), dec.resid, 0), rtol=0, atol=1e-6)
    head = hf.head
    hf_pooled = (dec.resid * m).sum(1) / m.sum(1)
    u = head.dense(hf_pooled)
    act = head.act(u)
    ratio = act / u
    scale = 1 / torch.sqrt(act.var(-1, unbiased=False, keepdim=True) + head.norm.eps)

    def frozen_norm(y):
        return (y - y.mean(-1, keepdim=True)) * scale * head.norm.weight

    row = hf.classifier.weight[1] - hf.classifier.weight[0]
    pooled = (dec.components * m).sum(-2) / m.sum(-2)  # [component, batch, d_model]
    by_hand = frozen_norm(ratio * (pooled @ head.dense.weight.T)) @ row
    norm_bias = 0 if head.norm.bias is None else head.norm.bias @ row
    bias = (
        frozen_norm(ratio * head.dense.bias) @ row + norm_bias + hf.classifier.bias[1] - hf.classifier.bias[0]
    )
    sd = decompose_score(model, batch)
    torch.testing.assert_close(sd.contributions[:-1], by_hand, rtol=0, atol=1e-10)
    torch.testing.assert_close(sd["head_bias"], bias, rtol=0, atol=1e-10)
    logits = hf.classifier(head(hf_pooled))  # HF's head on the run's pooled hidden states
    torch.testing.assert_close(sd.contributions.sum(0), logits[:, 1] - logits[:, 0], rtol=0, atol=1e-10)


def test_wrong_kind_of_batch_and_bad_top_arguments_are_refused(ce64, minilm64):
    """A bi-encoder's TextBatch given to a cross-encoder (or a PairBatch to a bi-encoder) is refused naming
    the tokenize call to use (it failed inside the embedding with a TypeError); ``top`` refuses k < 1 (it
    returned []) and a pair outside the batch (an IndexError)."""
    pairs, texts = ce64.tokenize(QUERIES[:2], DOCS[:2]), minilm64.tokenize(DOCS[:2])
    with pytest.raises(
        InputError, match=r"model.tokenize\(queries, docs\) \(a PairBatch\), got the other kind"
    ):
        decompose_score(ce64, texts)
    with pytest.raises(
        InputError, match=r"model.tokenize\(queries, docs\) \(a PairBatch\), got the other kind"
    ):
        decompose_resid(ce64, texts)
    with pytest.raises(InputError, match=r"model.tokenize\(texts\) \(a TextBatch\), got the other kind"):
        decompose_score(minilm64, pairs, minilm64.encode(QUERIES[:2]))
    sd = decompose_score(ce64, pairs)
    with pytest.raises(InputError, match="k must be an int >= 1"):
        sd.top(0)
    with pytest.raises(InputError, match="pair must be an int >= 0 and <= 1, got 2; the batch has 2 pairs"):
        sd.top(3, pair=2)
    assert (
        sd.top(2, pair=1)
        == sorted(zip(sd.labels, sd.contributions[:, 1].tolist()), key=lambda lv: -abs(lv[1]))[:2]
    )
