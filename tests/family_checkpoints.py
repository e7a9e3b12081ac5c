"""Tiny seeded random checkpoints of every non-BERT family, with tokenizers trained here (no download).

Shared by the family tests (test_modernbert, test_deberta, test_decoder, test_t5) and test_every_family:
each builder saves a Hugging Face model with ``save_pretrained`` and its tokenizer into a given folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from conftest import DOCS, QUERIES

from mechir_nig.models.templates import get_template


# -- ModernBERT -------------------------------------------------------------------------------------------
def wordpiece_tokenizer():
    """A WordPiece tokenizer trained here, with [CLS]/[SEP]/[PAD]/[MASK] and the pair template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials)
    text = QUERIES + DOCS + ["the relevance of a document to a query, the document answers the question"]
    tok.train_from_iterator(text * 3, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )


def make_modernbert(folder, tok, *, n_labels=1, pooling="cls", seed=0, biases=False, n_layers=3):
    """Save a seeded random ModernBERT (``n_labels=0``: the bare ``ModernBertModel``) beside ``tok``."""
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel

    torch.manual_seed(seed)
    cfg = ModernBertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        global_attn_every_n_layers=2,  # layers: global, local, global
        local_attention=8,  # |i - j| <= 4: far shorter than the pairs
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        max_position_embeddings=256,
        classifier_pooling=pooling,
        num_labels=max(n_labels, 1),
        pad_token_id=tok.pad_token_id,
        cls_token_id=tok.cls_token_id,
        sep_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        initializer_range=0.2,
        attention_bias=biases,
        mlp_bias=biases,
        norm_bias=biases,
        classifier_bias=biases,
    )
    model = (ModernBertForSequenceClassification if n_labels else ModernBertModel)(cfg).eval()
    with torch.no_grad():  # non-trivial norms (and biases), so parity covers them
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -- DeBERTa-v2/v3 ----------------------------------------------------------------------------------------
DEBERTA_VARIANTS: dict[str, dict[str, Any]] = {
    "v3": dict(
        num_labels=1,
        position_biased_input=False,
        type_vocab_size=0,
        share_att_key=True,
        position_buckets=8,
        max_relative_positions=64,
        norm_rel_ebd="layer_norm",
        pooler_hidden_act="gelu",
        num_attention_heads=2,
    ),
    "v2": dict(
        num_labels=2,
        position_biased_input=True,
        type_vocab_size=2,
        share_att_key=False,
        position_buckets=-1,
        max_relative_positions=16,
        norm_rel_ebd="none",
        pooler_hidden_act="tanh",
        num_attention_heads=4,
    ),
}
"""``v3``: DeBERTa-v3's options (no absolute positions or token types, shared keys, log buckets); ``v2``:
absolute positions, token types, separate position projections, clipped relative positions."""


def deberta_tokenizer():
    """A SentencePiece-style Unigram tokenizer trained here, as a ``DebertaV2Tokenizer``."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import DebertaV2Tokenizer

    uni = SentencePieceUnigramTokenizer()
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    uni.train_from_iterator((QUERIES + DOCS) * 3, vocab_size=300, special_tokens=specials, unk_token="[UNK]")
    vocab = json.loads(uni.to_str())["model"]["vocab"]
    return DebertaV2Tokenizer(vocab=[tuple(p) for p in vocab], unk_id=3)


def make_deberta(folder, tokenizer, *, bare=False, seed=0, **options):
    """Save a seeded random DeBERTa-v2 classifier (``bare``: the ``DebertaV2Model``) beside ``tokenizer``."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

    cfg = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=256,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        pad_token_id=tokenizer.pad_token_id,
        **options,
    )
    torch.manual_seed(seed)
    model = (DebertaV2Model if bare else DebertaV2ForSequenceClassification)(cfg).eval()
    with torch.no_grad():  # move every weight, bias and LayerNorm off its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


# -- decoder rerankers (Qwen2/Qwen3/Llama) ----------------------------------------------------------------
DECODER_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def decoder_tokenizer(folder: Path):
    """A byte-level BPE with Qwen's special tokens, trained on the texts and the qwen3-reranker template;
    saved into ``folder``. Returns ``(folder, tokenizer)``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = (
        QUERIES
        + DOCS
        + ["yes no yes no", "yes", "no", "Judge whether the Document meets the requirements"] * 5
    )
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=DECODER_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(text + [get_template("qwen3-reranker").prompt] * 3, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": DECODER_SPECIALS[1:]})
    tok.save_pretrained(folder)
    return folder, tok


def make_decoder(folder, tok, kind, n_labels=1, *, pad_row=False):
    """Save a seeded random decoder beside ``tok``: ``kind`` ``"qwen3"``/``"llama"`` (causal LMs),
    ``"llama-seq"`` or ``"qwen2"`` (``...ForSequenceClassification`` with ``n_labels``).

    Hugging Face initialises the pad token's embedding row to zero; the NIG baseline ``pad`` then starts the
    path at a zero input, where RMSNorm is sharp (``x / sqrt(mean(x^2) + eps)``) and a short grid misses the
    spike. ``pad_row=True`` gives that row random values, as a trained checkpoint's pad token has."""
    import transformers as tf

    common = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    if kind == "qwen3":
        hf = tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=12, rope_theta=5000.0, **common))
    elif kind == "llama":
        hf = tf.LlamaForCausalLM(
            tf.LlamaConfig(attention_bias=True, **{**common, "tie_word_embeddings": True})
        )
    elif kind == "llama-seq":
        hf = tf.LlamaForSequenceClassification(tf.LlamaConfig(num_labels=n_labels, **common))
    else:
        hf = tf.Qwen2ForSequenceClassification(tf.Qwen2Config(num_labels=n_labels, **common))
    with torch.no_grad():  # norms away from 1, biases away from 0: every weight is exercised
        for n, p in hf.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.3)
        if pad_row:
            emb = hf.get_input_embeddings().weight
            emb[tok.pad_token_id] = torch.randn_like(emb[0]) * emb.std()
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# -- monoT5 -----------------------------------------------------------------------------------------------
T5_QUERIES = ["what is a neuron", "how do cells fire", "where is the brain"]
T5_DOCS = [
    "a neuron is a cell of the nervous system that fires signals",
    "cells fire",
    "the brain is in the head and holds many neurons that fire",
]
T5_CORPUS = [f"Query: {q} Document: {d} Relevant: true false" for q in T5_QUERIES for d in T5_DOCS] * 20
T5_VARIANTS = {"v1.0": ("relu", True), "v1.1": ("gated-gelu", False)}


def t5_tokenizer():
    """A Unigram (SentencePiece-style) tokenizer with T5's specials, ``</s>`` appended, "true"/"false" whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list("abc"),
    )
    tok.train_from_iterator(T5_CORPUS, trainer=trainer)
    tok.add_tokens(["▁true", "▁false", "true", "false"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def make_t5(folder, tok, variant, *, spread=0.3):
    """Save a seeded random ``T5ForConditionalGeneration`` of ``variant`` (``T5_VARIANTS``) beside ``tok``,
    every weight moved by ``spread`` times a standard normal (0.3: scores that differ; smaller: a smoother
    NIG path, which a short integration grid completes)."""
    from transformers import T5Config, T5ForConditionalGeneration

    ff, tie = T5_VARIANTS[variant]
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok) + 4,
        d_model=16,
        d_kv=6,
        d_ff=24,
        num_layers=2,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        feed_forward_proj=ff,
        tie_word_embeddings=tie,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    hf = T5ForConditionalGeneration(cfg)
    with torch.no_grad():  # T5's init gives tiny final norms; spread the weights so scores differ
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * spread)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
