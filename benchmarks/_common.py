"""Helpers shared by the benchmark scripts: alternated timing with repeats, median and spread, the
equality check printed next to every comparison, the MiniLM cross-encoder and the pairs it runs on."""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"


class Seconds(float):
    """What a timed function returns when it measured itself (a subprocess's own clock, without the
    transport): :func:`alternate` records this instead of the wall time of the call."""


def alternate(
    fns: Mapping[str, Callable[[], object]], *, repeats: int = 3, warmup: int = 1, quiet: bool = False
) -> dict[str, list[float]]:
    """Seconds of each call, the functions run alternately (A B C A B C ...) ``repeats`` times after
    ``warmup`` untimed rounds, so a change in machine load hits every method alike. A function that
    returns :class:`Seconds` is recorded at that time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            ret = fn()
            times[name].append(float(ret) if isinstance(ret, Seconds) else time.perf_counter() - t0)
        if not quiet:
            print(
                f"    round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                flush=True,
            )
    return times


def repeats(text: str) -> int:
    """argparse type of ``--repeats``: an int >= 3 (a figure is the median of at least 3 runs)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 3:
        raise argparse.ArgumentTypeError(
            f"needs an int >= 3 (a figure is the median of at least 3 runs), got {text}"
        )
    return n


def interleaved_times(fns: Mapping[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 2) -> dict:
    """Median seconds of each function over :func:`alternate` (for scripts that print medians only)."""
    times = alternate(fns, repeats=repeats, warmup=warmup, quiet=True)
    return {k: statistics.median(v) for k, v in times.items()}


def decimals(value: float, digits: int) -> int:
    """Decimals that show ``digits`` significant digits of ``value`` below 1, at least 2."""
    return max(2, digits - 1 - math.floor(math.log10(value))) if value > 0 else 2


def spread(values: list[float], digits: int | None = None) -> str:
    """``median [min-max]`` of a list of seconds (with the interquartile range from 4 values on); 2
    decimals, or with ``digits`` enough to show that many significant digits of a median below 1 s."""
    med = statistics.median(values)
    d = 2 if digits is None else decimals(med, digits)
    text = f"{med:8.{d}f} s  [min {min(values):.{d}f} - max {max(values):.{d}f}"
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        text += f", IQR {q[0]:.{d}f} - {q[2]:.{d}f}"
    return text + f", n={len(values)}]"


def print_times(
    times: Mapping[str, list[float]],
    ours: str,
    notes: Mapping[str, str] | None = None,
    *,
    no_ratio: tuple[str, ...] = (),
) -> None:
    """Median and spread per method, then each other method's median over ours (``x``: how many times
    longer it takes) with the range of the per-round ratios (rounds are alternated, so a round's
    ratio compares runs made under the same load)."""
    notes = notes or {}
    width = max(len(k) for k in times)
    for name, vals in times.items():
        print(f"  {name:{width}s} {spread(vals)}  {notes.get(name, '')}".rstrip())
    base = times[ours]
    for name, vals in times.items():
        if name == ours or name in no_ratio:
            continue
        per_round = [v / b for v, b in zip(vals, base, strict=True)]
        print(
            f"  ratio {name} / {ours} = {statistics.median(vals) / statistics.median(base):.2f}x "
            f"(per round {min(per_round):.2f} - {max(per_round):.2f})"
        )


def print_diff(
    what: str, ours: torch.Tensor, other: torch.Tensor, *, scale: torch.Tensor | None = None
) -> float:
    """Print and return ``max |ours - other|`` (and relative to ``max |scale|`` when given)."""
    diff = (ours.double() - other.double()).abs().max().item()
    ref = (scale if scale is not None else other).double().abs().max().item()
    print(
        f"  values: max |{what}| = {diff:.2e} (largest |value| {ref:.2e}, relative {diff / max(ref, 1e-30):.1e})"
    )
    return diff


def print_rank_agreement(
    what: str, estimate: torch.Tensor, exact: torch.Tensor, *, top: int = 20
) -> tuple[float, float]:
    """Print and return the Spearman rank correlation of ``estimate`` with ``exact`` (same shape) over
    every index where both are finite, and over the ``top`` indices of largest ``|exact|``."""
    from mechir_nig.statistics import correlation

    x, y = estimate.double().flatten(), exact.double().flatten()
    keep = x.isfinite() & y.isfinite()
    x, y = x[keep], y[keep]
    best = y.abs().argsort(descending=True)[:top]
    r_all, r_top = correlation(x, y), correlation(x[best], y[best])
    print(
        f"  {what}: Spearman over all {len(x)} indices {r_all:+.3f}; over the exact top {len(best)} "
        f"(largest |exact|) {r_top:+.3f}"
    )
    return r_all, r_top


def header(title: str) -> None:
    """The run's settings line: date, machine, torch and threads (the figures mean nothing without it)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "load average unknown"
    print(
        f"{title}\n  {now}, {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {load}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )


def minilm_cross_encoder_dir() -> Path:
    """all-MiniLM-L6-v2's body under a seeded 1-logit head, saved as a ``BertForSequenceClassification``."""
    from mechir_nig.testing import minilm_cross_encoder

    folder = Path(tempfile.mkdtemp(prefix="mechir_nig_bench_"))
    return minilm_cross_encoder(folder)


def vaswani_pairs(n: int, max_words: int | None = None) -> tuple[list[str], list[str], str]:
    """``n`` (query, first relevant document in qrels order) pairs of Vaswani (``shared/data/vaswani`` next
    to the repository), or of the embedded collection when that folder is missing; ``max_words`` cuts
    the documents. Returns the queries, the documents and the collection's name."""
    from mechir_nig.data import load_collection

    folder = SHARED / "data" / "vaswani"
    col = load_collection(folder if folder.is_dir() else "embedded")
    first: dict[str, str] = {}
    for qrel in col.qrels:
        if qrel.relevance > 0 and qrel.query_id not in first:
            first[qrel.query_id] = qrel.doc_id
    qids = sorted(first, key=lambda q: (len(q), q))[:n]
    texts = col.get_docs(first[q] for q in qids)
    docs = [texts[first[q]] for q in qids]
    if max_words:
        docs = [" ".join(d.split()[:max_words]) for d in docs]
    return [col.queries[q] for q in qids], docs, str(folder) if folder.is_dir() else "embedded"


def judged_sample(col: object, n: int) -> object:
    """The first ``n`` judged pairs of collection ``col``: 1 relevant and 1 BM25-top-20 non-relevant
    document per query (``judged_pairs``), the pairs ``collection.py`` and ``versions.py`` attribute.
    Imports ``mechir_nig`` when called, so that ``versions.py``'s child runs it on the earlier version."""
    from mechir_nig.data import bm25_candidates, judged_pairs

    pairs = judged_pairs(
        col,
        max_relevant_per_query=1,
        max_nonrelevant_per_query=1,
        candidates=bm25_candidates(col, k=20),
        sample_nonrelevant_from_candidates=True,
    )
    return type(pairs)(pairs[:n], pairs.report)


def synthetic_pairs(n: int, n_tokens: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` query/document pairs of exactly ``n_tokens`` word pieces each ([CLS] q [SEP] d [SEP])."""
    words = "the cell query document model attention layer signal water light energy data".split()
    g = torch.Generator().manual_seed(seed)
    queries, docs = [], []
    for _ in range(n):
        q = [words[i] for i in torch.randint(len(words), (6,), generator=g)]
        d = [words[i] for i in torch.randint(len(words), (n_tokens - 6 - 3,), generator=g)]
        queries.append(" ".join(q))
        docs.append(" ".join(d))
    return queries, docs


FAMILIES = ("bert", "modernbert", "deberta", "qwen3", "t5")
"""``--family`` choices: BERT is all-MiniLM-L6-v2's real body; the others are seeded random checkpoints."""

FAMILY_SHAPES: dict[str, dict[str, dict[str, float]]] = {
    # small: a realistic small shape per family, 6 layers each (Captum's factor is about the layer count,
    # the same for every family); tiny: the test suite's shapes (checks the script, not a timing)
    "modernbert": {
        "small": dict(n_layers=6, d_model=384, d_mlp=1152, n_heads=6, local_attention=128),
        "tiny": dict(n_layers=3, d_model=32, d_mlp=48, n_heads=4, local_attention=8),
    },
    "deberta": {  # DeBERTa-v3-xsmall's width (384, 6 heads, 1536) at 6 of its 12 layers
        "small": dict(n_layers=6, d_model=384, d_mlp=1536, num_attention_heads=6),
        "tiny": dict(n_layers=2, d_model=32, d_mlp=64, num_attention_heads=2),
    },
    "qwen3": {  # a Qwen3 block at half the 0.6B width (GQA 8 / 4 heads of 64)
        "small": dict(n_layers=6, d_model=512, d_mlp=1536, n_heads=8, n_kv_heads=4, head_dim=64),
        "tiny": dict(n_layers=2, d_model=32, d_mlp=40, n_heads=4, n_kv_heads=2, head_dim=12),
    },
    "t5": {  # t5-v1_1-small's width (512, 6 heads of 64, gated 1024) at 6 encoder + 6 decoder layers;
        # small: Hugging Face's init (spread 0: the tests' absolute N(0, 0.3) spread gives, at width 512 and
        # without T5's missing 1/sqrt(d_head), attention logits of 2e3 and float32 values off by 90 %) and
        # an LM head of std 0.1 (HF's std 1 saturates the true/false softmax at width 512)
        "small": dict(n_layers=6, d_model=512, d_kv=64, d_mlp=1024, n_heads=6, spread=0.0, head_std=0.1),
        "tiny": dict(n_layers=2, d_model=16, d_kv=6, d_mlp=24, n_heads=3),
    },
}


def family_checkpoint(family: str, size: str, texts: list[str], folder: Path | None = None) -> Path:
    """A seeded random checkpoint of ``family`` at ``size`` (``FAMILY_SHAPES``), its tokenizer trained on
    ``texts``, saved with ``save_pretrained`` (in a fresh temporary folder unless ``folder``); ``bert``
    is all-MiniLM-L6-v2's body under a seeded head (``size`` does not apply)."""
    from mechir_nig import testing

    folder = folder or Path(tempfile.mkdtemp(prefix=f"mechir_nig_bench_{family}_"))
    if family == "bert":
        return testing.minilm_cross_encoder(folder)
    shape = FAMILY_SHAPES[family][size]
    if family == "modernbert":
        return testing.make_modernbert(folder, testing.wordpiece_tokenizer(texts, vocab_size=2000), **shape)
    if family == "deberta":
        tok = testing.unigram_deberta_tokenizer(texts, vocab_size=2000)
        return testing.make_deberta(folder, tok, **{**testing.DEBERTA_V3, **shape})
    if family == "qwen3":
        return testing.make_decoder(
            folder, testing.decoder_tokenizer(texts, vocab_size=2000), "qwen3", **shape
        )
    if family == "t5":
        tok = testing.t5_tokenizer(
            [f"Query: {t} Document: {t} Relevant: true false" for t in texts] * 3, vocab_size=1000
        )
        return testing.make_t5(folder, tok, "v1.1", **shape)
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
