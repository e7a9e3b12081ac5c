"""Hooked encoder port: parity with Hugging Face, hooks, batching and bad input."""

from __future__ import annotations

import warnings

import hf_hooks
import pytest
import torch
from conftest import DOCS, QUERIES, hf_cross_encoder, make_tiny_cross_encoder

from mechir_nig import (
    HookedBiEncoder,
    HookedCrossEncoder,
    InputError,
    ModelLoadError,
    TruncationWarning,
    UnsupportedArchitectureError,
)
from mechir_nig.models.tokenization import GROUPS

MIXED_Q = QUERIES + ["neuron", "a much longer query about the formation of black holes in distant galaxies"]
MIXED_D = DOCS + ["Short.", DOCS[1] + " " + DOCS[0] + " " + DOCS[2]]


def hf_score(hf, batch):
    with torch.no_grad():
        logits = hf(
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
            attention_mask=batch.attention_mask,
        ).logits
    return logits[:, 0] if logits.shape[1] == 1 else torch.log_softmax(logits, -1)[:, 1]


@pytest.mark.parametrize(
    "n_labels,n_layers,n_heads,d_model,d_mlp,act",
    [
        (1, 2, 2, 32, 64, "gelu"),
        (2, 3, 4, 48, 96, "gelu"),
        (1, 1, 1, 16, 40, "gelu_new"),
        (2, 4, 8, 64, 128, "relu"),
    ],
)
def test_score_parity_tiny(tmp_path, tokenizer, n_labels, n_layers, n_heads, d_model, d_mlp, act):
    folder = make_tiny_cross_encoder(
        tmp_path,
        tokenizer,
        n_labels=n_labels,
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_mlp=d_mlp,
        seed=n_layers,
        act=act,
    )
    ce = HookedCrossEncoder.from_pretrained(folder)
    hf = hf_cross_encoder(folder)
    batch = ce.tokenize(MIXED_Q, MIXED_D)
    assert batch.attention_mask.sum(-1).unique().numel() > 2  # really mixed lengths, padded
    with torch.no_grad():
        ours = ce(batch)
    ref = hf_score(hf, batch)
    assert ours.shape == (len(MIXED_Q),)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ref.std() > 1e-3  # the scores are not trivially constant


def test_score_parity_minilm_body(minilm_ce, minilm_ce_dir):
    hf = hf_cross_encoder(minilm_ce_dir)
    batch = minilm_ce.tokenize(MIXED_Q, MIXED_D)
    with torch.no_grad():
        ours = minilm_ce(batch)
    ref = hf_score(hf, batch)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ref.std() > 1e-2


def test_per_component_parity_minilm(minilm_ce, minilm_ce_dir):
    hf = hf_cross_encoder(minilm_ce_dir)
    batch = minilm_ce.tokenize(MIXED_Q, MIXED_D)
    with torch.no_grad():
        out = hf.bert(**hf_hooks.inputs(batch), output_hidden_states=True)
        _, cache = minilm_ce.run_with_cache(batch)
    m = batch.attention_mask.bool()
    assert (cache["blocks.0.hook_resid_pre"][m] - out.hidden_states[0][m]).abs().max() <= 1e-5
    for layer in range(minilm_ce.cfg.n_layers):
        ours = cache[f"blocks.{layer}.hook_normalized_resid_post"][m]
        assert (ours - out.hidden_states[layer + 1][m]).abs().max() <= 1e-5, layer
    assert (cache["pooler.hook_pooler_out"] - out.pooler_output).abs().max() <= 1e-5
    with torch.no_grad():
        word = hf.bert.embeddings.word_embeddings(batch.input_ids)
    assert torch.equal(cache["hook_embed"], word)


def test_mlp_post_equals_hf_intermediate(tiny_ce, tiny_ce_dir):
    hf = hf_cross_encoder(tiny_ce_dir)
    batch = tiny_ce.tokenize(QUERIES, DOCS)
    seen = {}
    handles = [
        layer.intermediate.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out))
        for i, layer in enumerate(hf.bert.encoder.layer)
    ]
    try:
        hf_score(hf, batch)
    finally:
        for h in handles:
            h.remove()
    _, cache = tiny_ce.run_with_cache(batch)
    m = batch.attention_mask.bool()
    for i in range(tiny_ce.cfg.n_layers):
        assert (cache[f"blocks.{i}.mlp.hook_post"][m] - seen[i][m]).abs().max() <= 1e-5


def expected_shapes(cfg, b, p):
    d, h, dh, f, e = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_embed
    shapes = {
        "hook_embed": (b, p, e),
        "hook_pos_embed": (b, p, e),
        "hook_token_type_embed": (b, p, e),
        "hook_full_embed": (b, p, d),
        "embed.ln.hook_scale": (b, p, 1),  # the embedding LayerNorm, before ELECTRA's projection
        "embed.ln.hook_normalized": (b, p, e),
    }
    for i in range(cfg.n_layers):
        for ln in ("ln1", "ln2"):
            shapes[f"blocks.{i}.{ln}.hook_scale"] = (b, p, 1)
            shapes[f"blocks.{i}.{ln}.hook_normalized"] = (b, p, d)
        for name in (
            "hook_resid_pre",
            "hook_resid_mid",
            "hook_resid_post",
            "hook_attn_out",
            "hook_mlp_out",
            "hook_normalized_resid_post",
        ):
            shapes[f"blocks.{i}.{name}"] = (b, p, d)
        for name in ("q", "k", "v", "z"):
            shapes[f"blocks.{i}.attn.hook_{name}"] = (b, p, h, dh)
        shapes[f"blocks.{i}.attn.hook_attn_scores"] = (b, h, p, p)
        shapes[f"blocks.{i}.attn.hook_pattern"] = (b, h, p, p)
        shapes[f"blocks.{i}.mlp.hook_pre"] = (b, p, f)
        shapes[f"blocks.{i}.mlp.hook_post"] = (b, p, f)
    return shapes


def test_run_with_cache_has_every_hook(tiny_ce):
    from transformer_lens.ActivationCache import ActivationCache

    batch = tiny_ce.tokenize(QUERIES, DOCS)
    scores, cache = tiny_ce.run_with_cache(batch)
    assert isinstance(cache, ActivationCache)
    b, p = batch.input_ids.shape
    shapes = expected_shapes(tiny_ce.cfg, b, p)
    shapes.update(
        {
            "pooler.hook_pooler_out": (b, tiny_ce.cfg.d_model),
            "classifier.hook_logits": (b, 1),
            "hook_score": (b,),
        }
    )
    for name, shape in shapes.items():
        assert tuple(cache[name].shape) == shape, name
    assert set(cache.keys()) == set(shapes)
    assert torch.equal(cache["hook_score"], scores)
    # the pattern is a distribution over unpadded keys only
    pat = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)))
    pad_keys = ~batch.attention_mask.bool()
    assert (
        pat.permute(0, 2, 1, 3)[pad_keys.unsqueeze(1).expand(-1, p, -1).unsqueeze(2).expand(-1, -1, 2, -1)]
        .abs()
        .max()
        < 1e-6
    )


def test_patching_own_cache_leaves_scores_unchanged(tiny_ce):
    batch = tiny_ce.tokenize(MIXED_Q, MIXED_D)
    scores, cache = tiny_ce.run_with_cache(batch)
    for name in cache.keys():
        patched = tiny_ce.run_with_hooks(batch, fwd_hooks=[(name, lambda x, hook, v=cache[name]: v.clone())])
        assert (patched - scores).abs().max() <= 1e-6, name
    # a real intervention does change them
    zeroed = tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.0.mlp.hook_post", lambda x, hook: x * 0)])
    assert (zeroed - scores).abs().max() > 1e-3
    assert not any(hp.has_hooks() for hp in tiny_ce.hook_points())  # nothing left behind


def test_hooks_removed_after_exception(tiny_ce):
    batch = tiny_ce.tokenize(QUERIES[:1], DOCS[:1])

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_ce.run_with_hooks(batch, fwd_hooks=[("blocks.1.mlp.hook_post", boom)])
    assert not any(hp.has_hooks() for hp in tiny_ce.hook_points())


def test_alone_equals_in_padded_batch(minilm_ce):
    batch = minilm_ce.tokenize(MIXED_Q, MIXED_D)
    with torch.no_grad():
        together = minilm_ce(batch)
        alone = torch.stack([minilm_ce(minilm_ce.tokenize([q], [d]))[0] for q, d in zip(MIXED_Q, MIXED_D)])
    assert (together - alone).abs().max() <= 1e-5
    assert torch.allclose(minilm_ce.score(MIXED_Q, MIXED_D, batch_size=3), together, atol=1e-5)


def test_start_stop_at_layer(tiny_ce):
    batch = tiny_ce.tokenize(MIXED_Q, MIXED_D)
    with torch.no_grad():
        full = tiny_ce(batch)
        resid = tiny_ce(batch, stop_at_layer=1)
        resumed = tiny_ce(None, None, batch.attention_mask, residual=resid, start_at_layer=1)
        _, cache = tiny_ce.run_with_cache(batch)
    assert resid.shape == (*batch.input_ids.shape, tiny_ce.cfg.d_model)
    assert (resid - cache["blocks.1.hook_resid_pre"]).abs().max() <= 1e-5  # SDPA vs explicit pattern path
    assert (resumed - full).abs().max() <= 1e-6
    with pytest.raises(InputError, match="residual"):
        tiny_ce(batch, start_at_layer=1)
    with pytest.raises(InputError, match="n_layers"):
        tiny_ce(batch, stop_at_layer=9)


def test_tokenization_matches_hf_and_groups(tiny_ce, tokenizer):
    batch = tiny_ce.tokenize(MIXED_Q, MIXED_D)
    ref = tokenizer(MIXED_Q, MIXED_D, padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.token_type_ids, ref["token_type_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    g = batch.groups[0]
    n_q = len(tokenizer(MIXED_Q[0], add_special_tokens=False)["input_ids"])
    n_d = len(tokenizer(MIXED_D[0], add_special_tokens=False)["input_ids"])
    names = [GROUPS[i] for i in g.tolist()]
    assert names[: 2 + n_q + n_d + 1] == ["cls"] + ["query"] * n_q + ["sep"] + ["doc"] * n_d + ["sep"]
    assert set(names[2 + n_q + n_d + 1 :]) <= {"pad"}
    assert not batch.truncated.any()


def test_truncation_is_reported(tiny_ce, tokenizer):
    long_doc = " ".join(["neurons"] * 100)
    with pytest.warns(TruncationWarning, match="1 of 2"):
        batch = tiny_ce.tokenize(["q one", "q two"], ["short doc", long_doc], max_length=32)
    assert batch.truncated.tolist() == [False, True]
    assert batch.input_ids.shape[1] == 32
    assert batch.input_ids[1, -1].item() == tokenizer.sep_token_id
    ref = tokenizer(["q two"], [long_doc], truncation="only_second", max_length=32, return_tensors="pt")
    assert torch.equal(batch.input_ids[1:], ref["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_ce.tokenize(["q"], ["short doc"], max_length=32)  # no warning when nothing is cut


@pytest.mark.parametrize(
    "queries,docs,match",
    [
        (["q"], ["d", "e"], "different lengths"),
        ([""], ["d"], r"queries\[0\] is empty"),
        (["q"], ["   "], r"docs\[0\] is empty"),
        ("q", ["d"], "list of strings"),
        ([], [], "empty"),
        (["q", 3], ["d", "e"], r"queries\[1\] is a int"),
    ],
)
def test_bad_pairs(tiny_ce, queries, docs, match):
    with pytest.raises(InputError, match=match):
        tiny_ce.tokenize(queries, docs)


def test_query_too_long_and_bad_max_length(tiny_ce):
    with pytest.raises(InputError, match="shorten the query or raise max_length"):
        tiny_ce.tokenize([" ".join(["word"] * 40)], ["doc"], max_length=16)
    with pytest.raises(InputError, match="exceeds the model's 128 positions"):
        tiny_ce.tokenize(["q"], ["d"], max_length=1000)


def test_missing_folder_names_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=str(missing)):
        HookedCrossEncoder.from_pretrained(missing)


def test_hub_id_offline_says_so(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="offline.*local folder"):
        HookedCrossEncoder.from_pretrained("cross-encoder/ms-marco-MiniLM-L-6-v2")


def test_unsupported_architectures(tmp_path, minilm_path, tokenizer):
    import json

    with pytest.raises(UnsupportedArchitectureError, match="BertForSequenceClassification"):
        HookedCrossEncoder.from_pretrained(minilm_path)  # a BertModel: no relevance head
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    with pytest.raises(UnsupportedArchitectureError, match="supported model_type values: bert"):
        HookedCrossEncoder.from_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="supported"):
        HookedBiEncoder.from_pretrained(tmp_path)


def test_bin_checkpoint_loads(tmp_path, tiny_ce_dir, tiny_ce):
    import shutil

    from safetensors.torch import load_file

    for f in tiny_ce_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    torch.save(load_file(str(tiny_ce_dir / "model.safetensors")), tmp_path / "pytorch_model.bin")
    ce = HookedCrossEncoder.from_pretrained(tmp_path)
    batch = ce.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        assert torch.equal(ce(batch), tiny_ce(batch))


def test_tl_weight_views_share_storage(tiny_ce):
    attn = tiny_ce.blocks[0].attn
    cfg = tiny_ce.cfg
    assert attn.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert attn.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert tiny_ce.blocks[0].mlp.W_in.shape == (cfg.d_model, cfg.d_mlp)
    assert attn.W_Q.data_ptr() == attn.W_QKV.data_ptr()


# ---------------------------------------------------------------- bi-encoder


def test_bi_encoder_parity_with_hf(minilm_be, minilm_path):
    from transformers import BertModel

    hf = BertModel.from_pretrained(str(minilm_path), attn_implementation="eager").eval()
    texts = MIXED_D + QUERIES
    batch = minilm_be.tokenize(texts)
    with torch.no_grad():
        h = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    m = batch.attention_mask.unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    ours = minilm_be.encode(texts, batch_size=4)
    assert ours.shape == (len(texts), 384)
    assert (ours - ref).abs().max() <= 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)


def test_bi_encoder_ranks_relevant_first(minilm_be):
    for q, rel in zip(QUERIES, DOCS):
        others = [d for d in DOCS if d != rel]
        scores = minilm_be.score([q] * len(DOCS), [rel] + others)
        assert scores.argmax().item() == 0, q
        assert scores[0] - scores[1:].max() > 0.1


def test_bi_encoder_hooks_and_dot_cls(minilm_path):
    be = HookedBiEncoder.from_pretrained(minilm_path, pooling="cls", similarity="dot")
    batch = be.tokenize(DOCS)
    emb, cache = be.run_with_cache(batch)
    assert torch.equal(emb, cache["blocks.5.hook_normalized_resid_post"][:, 0])
    assert cache["blocks.2.mlp.hook_post"].shape == (*batch.input_ids.shape, 1536)
    with pytest.raises(InputError, match="pooling must be one of"):
        HookedBiEncoder.from_pretrained(minilm_path, pooling="max")


def test_bi_encoder_follows_sentence_transformers_settings(minilm_be, minilm_path):
    """pooling and max_length come from the saved sentence-transformers config (mean, 256 tokens)."""
    from sentence_transformers import SentenceTransformer

    assert (minilm_be.pooling, minilm_be.max_length) == ("mean", 256)
    st = SentenceTransformer(str(minilm_path), device="cpu")
    long_text = " ".join(["the retrieval model ranks documents about neurons and synapses"] * 40)
    texts = [long_text, DOCS[0]]
    with pytest.warns(TruncationWarning, match="1 of 2"):
        ours = minilm_be.encode(texts)
    ref = torch.as_tensor(st.encode(texts, convert_to_numpy=True))
    assert (ours - ref).abs().max() <= 1e-5


def test_missing_pooler_weights_is_a_clear_error(tmp_path, tiny_ce_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    for f in tiny_ce_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    sd = {k: v for k, v in load_file(str(tiny_ce_dir / "model.safetensors")).items() if "pooler" not in k}
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="no pooler weights"):
        HookedCrossEncoder.from_pretrained(tmp_path)


def test_sharded_checkpoint_loads(tmp_path, tokenizer, tiny_ce):
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification.from_pretrained(str(tiny_ce.cfg.model_name))
    hf.save_pretrained(tmp_path, max_shard_size="300KB")
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ce = HookedCrossEncoder.from_pretrained(tmp_path)
    batch = ce.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        assert torch.equal(ce(batch), tiny_ce(batch))


def test_explicit_pooling_overrides_the_saved_config(tmp_path, minilm_path):
    import json
    import shutil

    shutil.copytree(minilm_path, tmp_path / "m")
    pool_cfg = tmp_path / "m" / "1_Pooling" / "config.json"
    cfg = json.loads(pool_cfg.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    pool_cfg.write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="pass pooling= to override"):
        HookedBiEncoder.from_pretrained(tmp_path / "m")
    assert HookedBiEncoder.from_pretrained(tmp_path / "m", pooling="cls").pooling == "cls"


def test_batched_scoring_rejects_bad_batch_size(tiny_ce):
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        tiny_ce.score(QUERIES, DOCS, batch_size=0)


def test_no_transformers_length_warning_on_truncated_input(tiny_ce_dir, minilm_path, capsys, caplog):
    """transformers warns "Token indices sequence length is longer than ..." when it tokenizes a text
    longer than the model's maximum without truncating it; the toolkit counts such texts itself and
    truncates them (reported), so the warning must not fire."""
    import logging

    from transformers.utils import logging as hf_logging

    ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir)  # fresh tokenizers: transformers warns once each
    be = HookedBiEncoder.from_pretrained(minilm_path)
    hf_logging.set_verbosity_warning()
    hf_logging.enable_propagation()
    long_doc = " ".join(DOCS * 40)  # > 512 tokens
    try:
        with caplog.at_level(logging.WARNING), pytest.warns(TruncationWarning):
            ce.tokenize([QUERIES[0]], [long_doc])
            be.tokenize([long_doc])
    finally:
        hf_logging.disable_propagation()
        hf_logging.set_verbosity_error()
    text = caplog.text + capsys.readouterr().err
    assert "sequence length is longer" not in text


@pytest.mark.parametrize("family_dir", ["tiny_ce_dir", "tiny_ce2_dir"])
def test_masked_slot_with_explicit_positions_is_neutral(request, family_dir):
    """Inserting masked tokens inside a pair, with every real token keeping its position id, leaves the
    score unchanged: the rule interventions.perturb aligns clean and perturbed inputs by."""
    from dataclasses import replace

    ce = HookedCrossEncoder.from_pretrained(request.getfixturevalue(family_dir))
    batch = ce.tokenize(QUERIES[:2], DOCS[:2])
    n = batch.input_ids.shape[1]
    ref = ce(batch)
    same = replace(batch, position_ids=torch.arange(n).expand(2, n))
    assert (ce(same) - ref).abs().max() == 0
    j, m = 6, 3  # insert 3 masked slots before position 6 of every row
    ins = lambda t, fill: torch.cat([t[:, :j], torch.full((2, m), fill, dtype=t.dtype), t[:, j:]], 1)  # noqa: E731
    slotted = replace(
        batch,
        input_ids=ins(batch.input_ids, 1037),
        token_type_ids=ins(batch.token_type_ids, 1),
        attention_mask=ins(batch.attention_mask, 0),
        groups=ins(batch.groups, 3),
        position_ids=ins(torch.arange(n).expand(2, n), 0),
    )
    assert slotted.lengths.tolist() == [int(x) + m for x in batch.lengths]
    assert (ce(slotted) - ref).abs().max() <= 1e-6
    assert len(slotted.select([1])) == 1 and slotted.select([1]).input_ids.shape[1] == int(slotted.lengths[1])
    with pytest.raises((InputError, Exception), match="position_ids"):
        ce(replace(batch, position_ids=torch.arange(n + 1).expand(2, n + 1)))
