"""Decoder LLM rerankers (Qwen3 / Llama causal LMs through a template, Qwen2 sequence classifiers):
scores, block states and neurons equal Hugging Face; NIG equals Captum; patching equals an HF hook patch;
alignment is neutral; loading refuses what it cannot score."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import load_model
from mechir_nig.attribution import NeuronIntegratedGradients, baseline_embeddings
from mechir_nig.errors import InputError, ModelLoadError
from mechir_nig.interventions import perturb
from mechir_nig.interventions.patching import patch
from mechir_nig.models.decoder import HookedDecoderReranker
from mechir_nig.models.templates import RerankTemplate, get_template, tokenize_template
from mechir_nig.models.tokenization import CLS, DOC, PROMPT, QUERY, SEP
from mechir_nig.testing import RERANK_SPECIALS, decoder_tokenizer, make_decoder

Q = QUERIES[:3] + ["neuron"]
D = DOCS[:3] + ["A cell."]  # mixed lengths: padded batches
CUSTOM = RerankTemplate("custom", "Query: {query}\nDocument: {doc}\nRelevant:", ("no", "yes"))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    text = (
        QUERIES
        + DOCS
        + ["yes no yes no", "yes", "no", "Judge whether the Document meets the requirements"] * 5
    )
    tok = decoder_tokenizer(text)
    folder = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(folder)
    return folder, tok


def _save(tok_dir, tmp_path_factory, kind, n_labels=1):
    return make_decoder(tmp_path_factory.mktemp(f"{kind}{n_labels}"), tok_dir[1], kind, n_labels=n_labels)


@pytest.fixture(scope="module")
def ckpts(tok_dir, tmp_path_factory):
    return {
        "qwen3": _save(tok_dir, tmp_path_factory, "qwen3"),
        "llama": _save(tok_dir, tmp_path_factory, "llama"),
        "qwen2-1": _save(tok_dir, tmp_path_factory, "qwen2", 1),
        "qwen2-2": _save(tok_dir, tmp_path_factory, "qwen2", 2),
        "llama-seq": _save(tok_dir, tmp_path_factory, "llama-seq", 1),
    }


TEMPLATE = {
    "qwen3": "qwen3-reranker",
    "llama": CUSTOM,
    "qwen2-1": None,
    "qwen2-2": CUSTOM,
    "llama-seq": CUSTOM,
}


def ours(ckpts, name, dtype=torch.float64):
    return load_model(ckpts[name], template=TEMPLATE[name], dtype=dtype)


def hf_model(ckpts, name):
    import transformers as tf

    cls = tf.AutoModelForCausalLM if name in ("qwen3", "llama") else tf.AutoModelForSequenceClassification
    return cls.from_pretrained(ckpts[name], attn_implementation="sdpa", dtype=torch.float64).eval()


def hf_scores(hf, model, ids, mask, *, embeds=None):
    """The reference score of each row (left- or right-padded), as the model card computes it."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids}
    last = HookedDecoderReranker.last_positions(mask)
    if embeds is not None and hasattr(hf, "score"):  # HF pools the last position when given embeddings
        h = hf.model(attention_mask=mask, position_ids=pos, **kw).last_hidden_state
        logits = hf.score(h[torch.arange(len(h)), last])
    else:
        logits = hf(attention_mask=mask, position_ids=pos, **kw).logits
    if logits.dim() == 3:  # causal LM: the (no, yes) logits at the last position
        no, yes = (model.tokenizer.convert_tokens_to_ids(a) for a in model.template.answer_tokens)
        logits = logits[torch.arange(len(ids)), last][:, [no, yes]]
    return logits[:, 0] if logits.shape[1] == 1 else torch.log_softmax(logits, -1)[:, 1]


def left_pad(batch, pad_id):
    n = batch.attention_mask.sum(-1)
    ids, mask = torch.full_like(batch.input_ids, pad_id), torch.zeros_like(batch.attention_mask)
    for i, k in enumerate(n.tolist()):
        ids[i, -k:], mask[i, -k:] = batch.input_ids[i, :k], 1
    return ids, mask


def test_qwen3_template_is_the_model_card_formatting(tok_dir):
    _, tok = tok_dir

    # a copy of Qwen3-Reranker's model-card code (prefix + format_instruction + suffix, tokenized apart)
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    pre = tok.encode(prefix, add_special_tokens=False)
    suf = tok.encode(suffix, add_special_tokens=False)
    batch = tokenize_template(tok, "qwen3-reranker", Q, D, max_length=256, n_ctx=256)
    for i, (q, d) in enumerate(zip(Q, D, strict=True)):
        want = pre + tok.encode(format_instruction(None, q, d), add_special_tokens=False) + suf
        n = int(batch.attention_mask[i].sum())
        assert batch.input_ids[i, :n].tolist() == want
        g = batch.groups[i, :n]
        assert tok.decode(batch.input_ids[i, :n][g == QUERY]).strip() == q
        assert tok.decode(batch.input_ids[i, :n][g == DOC]).strip() == d
        assert g[0] == CLS and set(g[g != QUERY][g[g != QUERY] != DOC][1:].tolist()) == {SEP, PROMPT}
        special = set(
            tok.convert_tokens_to_ids(RERANK_SPECIALS)
        )  # special tokens: sep; other template text: prompt
        assert all(
            (int(t) in special) == (int(x) == SEP)
            for t, x in zip(batch.input_ids[i, 1:n], g[1:])
            if x in (SEP, PROMPT)
        )
        assert tok.decode(batch.input_ids[i, :n][g == PROMPT]).startswith("system\nJudge whether")
    # truncation: the document is cut from its end and reported
    limit = int(batch.attention_mask[0].sum()) - 5
    with pytest.warns(UserWarning, match="truncated"):
        short = tokenize_template(tok, "qwen3-reranker", Q[:1], D[:1], max_length=limit, n_ctx=256)
    assert bool(short.truncated[0]) and limit - 2 <= short.input_ids.shape[1] <= limit
    assert short.docs == D[:1] and int((short.groups[0] == QUERY).sum()) == int(
        (batch.groups[0] == QUERY).sum()
    )
    assert short.input_ids[0, -len(suf) :].tolist() == suf


@pytest.mark.parametrize("name", ["qwen3", "llama", "qwen2-1", "qwen2-2", "llama-seq"])
def test_scores_states_and_neurons_equal_hf(ckpts, name):
    model, hf = ours(ckpts, name), hf_model(ckpts, name)
    batch = model.tokenize(Q, D)
    assert batch.attention_mask.sum(-1).unique().numel() > 1  # really padded
    got = model(batch)
    torch.testing.assert_close(model.score(Q, D, batch_size=3), got, rtol=1e-12, atol=0)
    right = hf_scores(hf, model, batch.input_ids, batch.attention_mask)
    left = hf_scores(hf, model, *left_pad(batch, model.cfg.pad_token_id))
    for ref in (right, left):
        assert ((got - ref).abs() / ref.abs().clamp(min=1e-3)).max() <= 1e-5
    # every block's output and every neuron (the input of down_proj), on an unpadded row
    row = batch.select([0])
    seen, post = [], []
    hs = [
        blk.register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
        for blk in hf.model.layers
    ]
    hs += [
        blk.mlp.down_proj.register_forward_pre_hook(lambda m, a: post.append(a[0])) for blk in hf.model.layers
    ]
    with torch.no_grad():
        hf(input_ids=row.input_ids)
    for h in hs:
        h.remove()
    _, cache = model.run_with_cache(row)
    # HF computes RMSNorm and rotary in float32 even for a float64 model (ours: float64), hence 1e-6
    for layer in range(model.cfg.n_layers):
        for ours_, ref in (
            (cache[f"blocks.{layer}.hook_resid_post"], seen[layer]),
            (cache[f"blocks.{layer}.mlp.hook_post"], post[layer]),
        ):
            assert (ours_ - ref).abs().max() <= 1e-6 * ref.abs().max(), layer
    # float32 and the explicit attention path agree too
    model.set_attention_impl("explicit")
    torch.testing.assert_close(model(batch), got, rtol=1e-10, atol=1e-12)
    m32 = ours(ckpts, name, torch.float32)
    assert ((m32(m32.tokenize(Q, D)).double() - got).abs() / got.abs().clamp(min=1e-3)).max() <= 1e-5
    m16 = ours(ckpts, name, torch.bfloat16)  # bf16 weights, float32 norms and rotary angles
    assert (m16.score(Q, D).double() - got).abs().max() <= 0.05 * got.abs().max()


@pytest.mark.parametrize("name", ["qwen3", "qwen2-2"])
def test_nig_equals_captum_layer_conductance_float64(ckpts, name):
    from captum.attr import LayerConductance

    model, hf = ours(ckpts, name), hf_model(ckpts, name)
    for p in hf.parameters():
        p.requires_grad_(False)
    batch = model.tokenize(Q[:2], D[:2])
    attr = NeuronIntegratedGradients(model).attribute(batch, n_steps=8)
    x = hf.model.embed_tokens(batch.input_ids)
    xb = baseline_embeddings(model, batch.input_ids, batch.groups, "pad")
    replaced = (xb != x).any(-1)
    assert torch.equal(replaced, (batch.groups == QUERY) | (batch.groups == DOC))  # the template is kept

    def forward(embeds, mask):
        return hf_scores(hf, model, batch.input_ids.repeat(len(embeds) // len(batch), 1), mask, embeds=embeds)

    for layer in range(model.cfg.n_layers):
        lc = LayerConductance(forward, hf.model.layers[layer].mlp.down_proj)
        ref = lc.attribute(
            x, baselines=xb, additional_forward_args=(batch.attention_mask,), n_steps=8,
            method="riemann_trapezoid", attribute_to_layer_input=True,
        ).detach()  # fmt: skip
        scale = ref.abs().max().item()
        assert scale > 0
        # 1e-5: HF runs RMSNorm and rotary in float32 inside a float64 model (measured: 6e-7)
        assert (attr.values[:, layer] - ref).abs().max().item() <= 1e-5 * scale, layer


def test_resid_pre_patch_equals_hf_hook_patch_and_alignment_is_neutral(ckpts):
    model, hf = ours(ckpts, "qwen3"), hf_model(ckpts, "qwen3")
    for fn in (lambda q, d: perturb.tfc1(q, d, where="middle"), lambda q, d: d.split(" ", 1)[1]):
        al = perturb.align(model, Q[:2], D[:2], fn)
        pert = [fn(q, d) for q, d in zip(Q[:2], D[:2], strict=True)]
        for side, docs in ((al.clean, D[:2]), (al.perturbed, pert)):
            torch.testing.assert_close(model(side), model(model.tokenize(Q[:2], docs)), atol=1e-6, rtol=0)
    res = patch(model, al, sites="resid_pre", layers=[1], metric="raw")
    got = res.patched["resid_pre"]
    assert float(got.max() - got.min()) > 1e-4  # some positions move the score: the check can fail
    clean_states = []
    h = hf.model.layers[1].register_forward_pre_hook(
        lambda m, a, k: clean_states.append(a[0] if a else k["hidden_states"]), with_kwargs=True
    )
    c, p = al.clean, al.perturbed
    with torch.no_grad():
        hf(input_ids=c.input_ids, attention_mask=c.attention_mask, position_ids=c.position_ids)
    h.remove()
    src = clean_states[0]
    for b in range(len(c)):
        n = c.input_ids.shape[1]  # every 6th position, the changed ones and the last ones (time)
        changed = al.changed[b].nonzero().flatten().tolist()
        for pos in sorted(set(range(0, n, 6)) | set(changed) | set(range(n - 4, n))):

            def hook(m, a, k, b=b, pos=pos):
                hs = (a[0] if a else k["hidden_states"]).clone()
                hs[:, pos] = src[b, pos]
                return ((hs,) + a[1:], k) if a else (a, {**k, "hidden_states": hs})

            hh = hf.model.layers[1].register_forward_pre_hook(hook, with_kwargs=True)
            with torch.no_grad():
                ref = hf_scores_pos(hf, model, p.select([b], n_pos=p.input_ids.shape[1]))
            hh.remove()
            torch.testing.assert_close(got[b, 0, pos].double(), ref[0], atol=1e-6, rtol=1e-6)


def hf_scores_pos(hf, model, row):
    logits = hf(
        input_ids=row.input_ids, attention_mask=row.attention_mask, position_ids=row.position_ids
    ).logits
    last = HookedDecoderReranker.last_positions(row.attention_mask)
    no, yes = (model.tokenizer.convert_tokens_to_ids(a) for a in model.template.answer_tokens)
    return torch.log_softmax(logits[torch.arange(1), last][:, [no, yes]], -1)[:, 1]


def test_ablate_runs_and_groups_cover_every_token(ckpts):
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.sets import NeuronSet

    model = ours(ckpts, "llama")
    attr = NeuronIntegratedGradients(model).attribute(model.tokenize(Q[:2], D[:2]), n_steps=4)
    by_group = attr.by_group()
    assert by_group.shape[2] == 5 and attr.group_names == ("cls", "query", "sep", "doc", "prompt")
    torch.testing.assert_close(by_group.sum(2), attr.per_neuron(), rtol=1e-9, atol=1e-12)
    ns = NeuronSet([(0, 1), (1, 3)], n_layers=model.cfg.n_layers, d_mlp=model.cfg.d_mlp)
    base = model.score(Q, D)
    for mode in ("zero", "baseline"):
        for positions in ("all", "query", "doc", "prompt"):
            with ablate(model, ns, mode=mode, positions=positions) as ab:
                out = ab.score(Q, D)
            assert out.shape == base.shape and not torch.equal(out, base)


def test_loading_refusals(ckpts, tok_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="template='qwen3-reranker'") as e:
        load_model(ckpts["qwen3"])
    assert "config.json" in str(e.value)
    two = RerankTemplate("bad", "Q: {query} D: {doc}", ("irrelevant", "relevant"))
    with pytest.raises(ModelLoadError, match="not one") as e:
        load_model(ckpts["qwen3"], template=two)
    assert str(ckpts["qwen3"]) in str(e.value)
    known = load_model(ckpts["qwen3"], name="Qwen/Qwen3-Reranker-0.6B")  # a known id picks its template
    assert known.template == get_template("qwen3-reranker")
    with pytest.raises(InputError, match="unknown template"):
        load_model(ckpts["qwen3"], template="nope")
    with pytest.raises(InputError, match=r"\{doc\} exactly once"):
        RerankTemplate("x", "{query}", ("no", "yes"))
    import json

    import transformers as tf

    torch.manual_seed(0)
    three = tmp_path / "three"
    tf.Qwen2ForSequenceClassification(
        tf.Qwen2Config(vocab_size=len(tok_dir[1]), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, num_labels=3, pad_token_id=tok_dir[1].pad_token_id)
    ).save_pretrained(three)  # fmt: skip
    tok_dir[1].save_pretrained(three)
    with pytest.raises(ModelLoadError, match="3 labels"):
        load_model(three)
    cfg_path = ckpts["llama"] / "config.json"
    saved = cfg_path.read_text()
    try:
        cfg = json.loads(saved)
        cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
        cfg_path.write_text(json.dumps(cfg))
        with pytest.raises(Exception, match="rope_type='llama3'"):
            load_model(ckpts["llama"], template=CUSTOM)
    finally:
        cfg_path.write_text(saved)
