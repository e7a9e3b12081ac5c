"""Helpers shared by the benchmark scripts: interleaved timing and the MiniLM cross-encoder."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def interleaved_times(fns: dict[str, Callable[[], object]], *, repeats: int = 7, warmup: int = 2) -> dict:
    """Median seconds of each function, run alternately (A B A B ...) so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def minilm_cross_encoder_dir() -> Path:
    from mechir_nig.testing import minilm_cross_encoder

    folder = Path(tempfile.mkdtemp(prefix="mechir_nig_bench_"))
    return minilm_cross_encoder(folder)


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
