"""Helpers shared by the benchmark scripts: alternated timing with repeats, median and spread, the
equality check printed next to every comparison, the MiniLM cross-encoder and the pairs it runs on."""

from __future__ import annotations

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


def interleaved_times(fns: Mapping[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 2) -> dict:
    """Median seconds of each function over :func:`alternate` (for scripts that print medians only)."""
    times = alternate(fns, repeats=repeats, warmup=warmup, quiet=True)
    return {k: statistics.median(v) for k, v in times.items()}


def spread(values: list[float]) -> str:
    """``median [min-max]`` of a list of seconds (with the interquartile range from 4 values on)."""
    med = statistics.median(values)
    text = f"{med:8.2f} s  [min {min(values):.2f} - max {max(values):.2f}"
    if len(values) >= 4:
        q = statistics.quantiles(values, n=4)
        text += f", IQR {q[0]:.2f} - {q[2]:.2f}"
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
