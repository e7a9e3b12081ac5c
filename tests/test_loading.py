"""Loading defects: each broken checkpoint or misfit tokenizer raises ``ModelLoadError`` at load time,
naming the file or folder involved and saying the fix, instead of scoring garbage.

Checkpoints are tiny seeded random models saved with ``save_pretrained`` into ``tmp_path`` and then
broken (a file removed, truncated or edited).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DOCS, QUERIES

from mechir_nig import HookedBiEncoder, HookedCrossEncoder, ModelLoadError, load_model
from mechir_nig.testing import family_tokenizer, make_tiny_checkpoint, make_tiny_cross_encoder

TEXTS = QUERIES + DOCS + ["Short."]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def both(*fragments: str | Path) -> str:
    """A ``match=`` pattern requiring every fragment (a path or a phrase) somewhere in the message."""
    return "(?s)" + "".join(f"(?=.*{re.escape(str(f))})" for f in fragments)


def save_bert(folder: Path, cls_name: str, tokenizer=None, *, vocab_size: int = 30522, **overrides) -> Path:
    """Save a seeded tiny ``transformers.<cls_name>`` (BERT family), with ``tokenizer`` when given."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=vocab_size, initializer_range=0.2, **(TINY | overrides))
    model = getattr(T, cls_name)(cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def masked_mean_normalised(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return F.normalize((hidden * m).sum(1) / m.sum(1), p=2, dim=-1)


def hf_body_embeddings(body, be: HookedBiEncoder, texts) -> torch.Tensor:
    batch = be.tokenize(texts)
    with torch.no_grad():
        hidden = body(
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
            attention_mask=batch.attention_mask,
        ).last_hidden_state
    return masked_mean_normalised(hidden, batch.attention_mask)


# -- a. no tokenizer files ----------------------------------------------------------------------------
def test_cross_encoder_folder_without_tokenizer(tmp_path):
    folder = save_bert(tmp_path / "ce", "BertForSequenceClassification", num_labels=1)
    assert not (folder / "vocab.txt").exists() and not (folder / "tokenizer.json").exists()
    for load in (HookedCrossEncoder.from_pretrained, load_model):
        with pytest.raises(ModelLoadError, match=both(folder, "no tokenizer files", "save_pretrained")):
            load(folder)
        with pytest.raises(ModelLoadError, match=both(folder, "tokenizer=")):
            load(folder)


def test_bi_encoder_folder_without_tokenizer(tmp_path, tokenizer):
    folder = save_bert(tmp_path / "be", "BertModel")
    for load in (HookedBiEncoder.from_pretrained, load_model):
        with pytest.raises(ModelLoadError, match=both(folder, "no tokenizer files", "save_pretrained")):
            load(folder)
    # the fix the message names works: pass tokenizer=
    be = HookedBiEncoder.from_pretrained(folder, tokenizer=tokenizer)
    assert be.encode(["what is a neuron"]).shape == (1, 32)


# -- b. no `architectures` field: routed on the weights ---------------------------------------------
def test_cross_encoder_without_architectures_field(tmp_path, tokenizer):
    from transformers import BertForSequenceClassification

    folder = make_tiny_cross_encoder(tmp_path, tokenizer, n_labels=1)
    edit_config(folder, lambda c: c.pop("architectures"))
    assert "architectures" not in json.loads((folder / "config.json").read_text())
    model = load_model(folder)
    assert type(model) is HookedCrossEncoder and model.cfg.n_labels == 1
    hf = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    batch = model.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        ours = model(batch)
        ref = hf(
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
            attention_mask=batch.attention_mask,
        ).logits[:, 0]
    assert (ours - ref).abs().max().item() <= 1e-5  # the classifier was kept, not dropped
    assert ref.std() > 1e-3


@pytest.mark.parametrize("family", ["electra", "roberta"])
def test_other_family_without_architectures_field(tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    folder = make_tiny_checkpoint(tmp_path, family, family_tokenizer(family), n_labels=2)
    edit_config(folder, lambda c: c.pop("architectures"))
    model = load_model(folder)
    assert type(model) is HookedCrossEncoder and model.cfg.n_labels == 2
    hf = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    batch = model.tokenize(QUERIES, DOCS)
    with torch.no_grad():
        ours = model(batch)
        logits = hf(
            input_ids=batch.input_ids,
            token_type_ids=batch.token_type_ids,
            attention_mask=batch.attention_mask,
        ).logits
    ref = torch.log_softmax(logits, -1)[:, 1]
    assert (ours - ref).abs().max().item() <= 1e-5
    assert ref.std() > 1e-4


# -- c. heads that are not relevance heads -----------------------------------------------------------
@pytest.mark.parametrize(
    "cls_name,extra", [("BertForMaskedLM", {}), ("BertForTokenClassification", {"num_labels": 5})]
)
def test_task_head_checkpoint(tmp_path, tokenizer, cls_name, extra):
    import transformers as T

    folder = save_bert(tmp_path / "ckpt", cls_name, tokenizer, **extra)
    assert json.loads((folder / "config.json").read_text())["architectures"] == [cls_name]
    config_json = folder / "config.json"
    for load in (load_model, HookedBiEncoder.from_pretrained):
        with pytest.raises(
            ModelLoadError, match=both(config_json, "architectures", cls_name, "ignore_head=True")
        ):
            load(folder)
    with pytest.raises(ModelLoadError, match=both(config_json, cls_name, "not a relevance head")):
        HookedCrossEncoder.from_pretrained(folder)

    # the encoder itself loads when asked, and matches the HF body (masked mean, L2-normalised)
    be = HookedBiEncoder.from_pretrained(folder, ignore_head=True)
    assert type(be) is HookedBiEncoder and be.pooling == "mean" and be.similarity == "cosine"
    assert type(load_model(folder, ignore_head=True)) is HookedBiEncoder
    body = getattr(T, cls_name).from_pretrained(str(folder), attn_implementation="eager").eval().bert
    ref = hf_body_embeddings(body, be, TEXTS)
    ours = be.encode(TEXTS)
    assert ours.shape == ref.shape == (len(TEXTS), 32)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert (ref @ ref.T).min() < 0.99  # distinct texts, distinct embeddings


def test_token_classification_without_architectures_is_not_a_cross_encoder(tmp_path, tokenizer):
    folder = save_bert(tmp_path / "tok", "BertForTokenClassification", tokenizer, num_labels=5)
    edit_config(folder, lambda c: c.pop("architectures"))
    weights = folder / "model.safetensors"
    for load in (load_model, HookedCrossEncoder.from_pretrained):
        with pytest.raises(ModelLoadError, match=both(weights, "5 labels", "1 or 2", "ignore_head=True")):
            load(folder)
    with pytest.raises(ModelLoadError, match=both(weights, "5 labels", "ignore_head=True")):
        HookedBiEncoder.from_pretrained(folder)
    # its body is still usable as a bi-encoder on request
    assert type(HookedBiEncoder.from_pretrained(folder, ignore_head=True)) is HookedBiEncoder


# -- d. tokenizer vocabulary larger than the embedding table ----------------------------------------
@pytest.mark.parametrize("cls_name", ["BertForSequenceClassification", "BertModel"])
def test_tokenizer_larger_than_vocab(tmp_path, tokenizer, cls_name):
    assert len(tokenizer) == 30522
    folder = save_bert(tmp_path / "small", cls_name, tokenizer, vocab_size=1000, num_labels=1)
    load = (
        HookedCrossEncoder.from_pretrained
        if cls_name.endswith("Classification")
        else HookedBiEncoder.from_pretrained
    )
    with pytest.raises(
        ModelLoadError, match=both(folder, "30522 tokens", "1000 rows", "vocab_size", "tokenizer=")
    ):
        load(folder)
    with pytest.raises(ModelLoadError, match="vocab_size"):
        load_model(folder)


# -- e. token types the model lacks -------------------------------------------------------------------
def test_pair_model_with_one_token_type(tmp_path, tokenizer):
    folder = save_bert(
        tmp_path / "tt1", "BertForSequenceClassification", tokenizer, type_vocab_size=1, num_labels=1
    )
    with pytest.raises(
        ModelLoadError, match=both(folder, "type_vocab_size=1", "token type 1", "type_vocab_size >= 2")
    ):
        HookedCrossEncoder.from_pretrained(folder)
    with pytest.raises(ModelLoadError, match="type_vocab_size"):
        load_model(folder)


def test_bi_encoder_with_one_token_type_loads(tmp_path, tokenizer):
    from transformers import BertModel

    folder = save_bert(tmp_path / "tt1", "BertModel", tokenizer, type_vocab_size=1)
    be = HookedBiEncoder.from_pretrained(folder)
    assert be.cfg.n_token_types == 1
    assert type(load_model(folder)) is HookedBiEncoder
    batch = be.tokenize(TEXTS)
    assert int(batch.token_type_ids.max()) == 0  # single texts use token type 0 only
    body = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    ref = hf_body_embeddings(body, be, TEXTS)
    assert (be.encode(TEXTS) - ref).abs().max().item() <= 1e-5


# -- f. corrupt weight files -------------------------------------------------------------------------
def test_truncated_safetensors(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    for load in (HookedCrossEncoder.from_pretrained, HookedBiEncoder.from_pretrained, load_model):
        with pytest.raises(
            ModelLoadError, match=both(weights, "truncated or corrupt", "save the checkpoint again")
        ):
            load(folder)


def test_garbage_pytorch_model_bin(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    weights.write_bytes(b"this is not a torch checkpoint\x00\xff" * 64)
    for load in (HookedCrossEncoder.from_pretrained, load_model):
        with pytest.raises(ModelLoadError, match=both(weights, "truncated or corrupt", "download or save")):
            load(folder)


def test_valid_pytorch_model_bin_still_loads(tmp_path, tokenizer):
    """Control for the garbage-.bin case: a real .bin (torch.save of the state dict) loads and scores the same."""
    from safetensors.torch import load_file

    folder = make_tiny_cross_encoder(tmp_path / "ref", tokenizer)
    ref = HookedCrossEncoder.from_pretrained(folder)
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    ce = HookedCrossEncoder.from_pretrained(folder)
    batch = ce.tokenize(QUERIES, DOCS)
    assert torch.equal(ce(batch), ref(batch))


# -- g. broken config.json ---------------------------------------------------------------------------
def test_invalid_config_json(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    cfg = folder / "config.json"
    cfg.write_text('{"model_type": "bert",')
    for load in (HookedCrossEncoder.from_pretrained, HookedBiEncoder.from_pretrained, load_model):
        with pytest.raises(ModelLoadError, match=both(cfg, "not valid JSON", "save_pretrained")):
            load(folder)


def test_config_json_without_model_type(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    edit_config(folder, lambda c: c.pop("model_type"))
    cfg = folder / "config.json"
    for load in (HookedCrossEncoder.from_pretrained, load_model):
        with pytest.raises(ModelLoadError, match=both(cfg, "no model_type", "save_pretrained")):
            load(folder)


def test_missing_config_json(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=both(folder, "no config.json", "save_pretrained")):
        load_model(folder)


# -- h. tokenizer that maps every word to its unknown token -------------------------------------------
def empty_bert_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4})


def empty_roberta_tokenizer():
    from transformers import RobertaTokenizer

    return RobertaTokenizer()  # no vocab, no merges


@pytest.mark.parametrize("make_tok", [empty_bert_tokenizer, empty_roberta_tokenizer])
def test_tokenizer_of_unknown_tokens(tmp_path, tokenizer, make_tok):
    bad = make_tok()
    assert len(bad) <= 5
    ce_dir = make_tiny_cross_encoder(tmp_path / "ce", tokenizer)
    be_dir = save_bert(tmp_path / "be", "BertModel", tokenizer)
    for load, folder in (
        (HookedCrossEncoder.from_pretrained, ce_dir),
        (HookedBiEncoder.from_pretrained, be_dir),
        (load_model, ce_dir),
    ):
        with pytest.raises(ModelLoadError, match=both(folder, "unknown token", "tokenizer=")):
            load(folder, tokenizer=bad)


def test_tokenizer_without_padding_token(tmp_path, tokenizer):
    from transformers import BertTokenizer

    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    no_pad = BertTokenizer(vocab=tokenizer.get_vocab(), pad_token=None)
    assert no_pad.pad_token_id is None
    with pytest.raises(ModelLoadError, match=both(folder, "no padding token", "tokenizer=")):
        HookedCrossEncoder.from_pretrained(folder, tokenizer=no_pad)


# -- i. config and weights disagree on the number of layers -----------------------------------------
def test_config_with_fewer_layers_than_weights(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer, n_layers=3)
    edit_config(folder, lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] - 1))
    for load in (HookedCrossEncoder.from_pretrained, load_model):
        with pytest.raises(
            ModelLoadError,
            match=both(
                folder / "model.safetensors", folder / "config.json", "encoder.layer.2", "num_hidden_layers"
            ),
        ):
            load(folder)


def test_config_with_more_layers_than_weights(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer, n_layers=2)
    edit_config(folder, lambda c: c.update(num_hidden_layers=3))
    with pytest.raises(
        ModelLoadError, match=both(folder / "model.safetensors", "encoder.layer.2", "config.json")
    ):
        HookedCrossEncoder.from_pretrained(folder)


# -- the unbroken checkpoint loads (control for every case above) -----------------------------------
def test_intact_checkpoint_loads(tmp_path, tokenizer):
    folder = make_tiny_cross_encoder(tmp_path, tokenizer)
    ce = load_model(folder)
    assert type(ce) is HookedCrossEncoder
    assert ce.score(QUERIES, DOCS).isfinite().all()


@pytest.mark.parametrize("field,value", [("intermediate_size", 128), ("max_position_embeddings", 256)])
def test_config_sizes_that_do_not_match_the_weights(tmp_path, tokenizer, field, value):
    folder = make_tiny_cross_encoder(tmp_path / "m", tokenizer)
    edit_config(folder, lambda c: c.__setitem__(field, value))
    with pytest.raises(
        ModelLoadError, match=both(folder / "model.safetensors", "config.json", "does not match")
    ):
        HookedCrossEncoder.from_pretrained(folder)
