"""How the cost of NIG and of collection attribution grows: time and peak memory per factor, with the
fitted exponents (log-log least squares).

Usage: ``python benchmarks/scaling.py [--d-model 128] [--d-mlp 512] [--heads 4] [--repeats 3] [--threads 1]
[--nig-factors pairs,tokens,steps,layers] [--collection-factors pairs,tokens] [--plot docs/img/scaling.png]
[--markdown] [--quick]``

Models: seeded random BERT cross-encoders (``mechir_nig.testing.make_tiny_cross_encoder``, the MiniLM
vocabulary, 512 positions) of ``--d-model``/``--d-mlp``/``--heads`` and 1 to 8 layers. One factor
varies at a time around the base point (2 pairs, 128 tokens, 8 steps, 2 layers):

* NIG, one pair batch: ``NeuronIntegratedGradients(ce).attribute(batch, n_steps)`` over all layers, at
  the default window (``internal_batch_size = 8192 // tokens`` points per forward/backward), as pairs
  (1..32), tokens per pair (64..512: ``[CLS] q [SEP] d [SEP]``, a 6-word query), steps (4..64) and
  layers (1..8) grow. Memory grows with the points of a call (pairs x (steps + 1)) until they fill
  one window, then stays flat: the "last two values" exponent shows it;
* collection attribution: ``attribute_collection(ce, pairs, n_steps=8, batch_size=8)`` as judged pairs
  (4..32, base 8) and tokens per pair (64..512) grow.

Time: for each factor, the calls at its values run alternately (value 1, value 2, ..., value 1, ...)
``--repeats`` rounds (default 3) after one untimed warm-up round (``_common.alternate``), so a change in
the machine's load hits every value alike; the script prints, per value, the **median and the spread
[min - max]** of the repeats (and the IQR from 4 repeats on), and fits the exponents on the medians (the
range of the exponents fitted on each round alone is printed next to them). Peak memory is the growth
of the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` before each run, after
``malloc_trim`` gave freed pages back) above its RSS before the run: the transient memory of one call
(activations, gradients, the result), not the model. It is recorded at every timed run (no extra
runs) and the median over the repeats is printed, with its range in the per-value lines: the
computation is deterministic, so the runs differ only by allocator and page-fault noise (up to about
10 % at these sizes). The exponent of a factor is the slope of log(cost) on log(factor): 1 is linear. One torch thread by default: on the shared 2-core development
machine, 2-thread runs measured mostly OpenMP barrier waits (compare ``--threads 2``). With ``--plot``
the curves (medians, min-max bars) are drawn with matplotlib (when installed) on the factor relative
to its base value.

Prints: the settings header; per factor value ``NIG pairs = 4: 0.326 s  [min 0.320 - max 0.340, n=3]  peak
+96 MiB [95 - 97]``; per factor the fitted exponents of time (median, and the range over rounds) and
memory (all values and last two); with ``--markdown`` the tables for docs/benchmarks.md, each time as
``median [min-max]`` seconds, e.g. ``0.17 [0.16-0.19]``. ``--quick`` (two values per factor, one repeat
unless ``--repeats`` is given) is a smoke test of the script, not figures for the docs.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import Seconds, alternate, decimals, header, spread, synthetic_pairs  # noqa: E402

BASE = {"pairs": 2, "tokens": 128, "steps": 8, "layers": 2}
NIG_VALUES = {
    "pairs": [1, 2, 4, 8, 16, 32],
    "tokens": [64, 128, 256, 512],
    "steps": [4, 8, 16, 32, 64],
    "layers": [1, 2, 4, 8],
}
COLLECTION_BASE = {"pairs": 8, "tokens": 128, "steps": 8, "layers": 2}
COLLECTION_VALUES = {"pairs": [4, 8, 16, 32], "tokens": [64, 128, 256, 512]}


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmHWM``, ``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def _trim() -> None:
    """``malloc_trim(0)`` (glibc): return the free pages of every malloc arena to the system."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peaks then include reused free memory
        pass


class Point:
    """One factor value: a call to time, and the seconds and peak-RSS growths (MiB) of its timed runs."""

    def __init__(self, value: int, fn: Callable[[], Any]) -> None:
        self.value, self.fn = value, fn
        self.times: list[float] = []
        self.peaks: list[float] = []

    def __call__(self) -> Seconds:
        """Run once; record the peak growth (and return the seconds, which ``alternate`` records)."""
        gc.collect()
        _trim()  # give freed heap pages back, so the RSS before the run is what is live
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        before = _status("VmRSS")
        t0 = time.perf_counter()
        self.fn()
        sec = time.perf_counter() - t0
        self.peaks.append(max((_status("VmHWM") - before) / 1024, 0.0))
        return Seconds(sec)

    @property
    def time(self) -> float:
        return statistics.median(self.times)

    @property
    def peak(self) -> float:
        return statistics.median(self.peaks)


def _cell(values: list[float]) -> str:
    """A Markdown table cell: ``median [min-max]`` with the median's 2 significant digits below 1 s
    and 2 decimals above, e.g. ``0.17 [0.16-0.19]``, ``0.073 [0.071-0.080]``, ``2.27 [2.21-2.40]``."""
    med = statistics.median(values)
    d = decimals(med, 2)
    return f"{med:.{d}f} [{min(values):.{d}f}-{max(values):.{d}f}]"


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(x) (``nan`` with fewer than two positive points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


class Models:
    """Random BERT cross-encoders of one width and 1..8 layers, built on first use."""

    def __init__(self, d_model: int, d_mlp: int, heads: int) -> None:
        from transformers import AutoTokenizer

        from mechir_nig.testing import minilm_path

        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        self.shape = {"d_model": d_model, "d_mlp": d_mlp, "n_heads": heads}
        self.root = tempfile.mkdtemp(prefix="mechir_nig_scaling_")
        self.cache: dict[int, Any] = {}

    def __call__(self, n_layers: int) -> Any:
        if n_layers not in self.cache:
            from mechir_nig import HookedCrossEncoder
            from mechir_nig.testing import make_tiny_cross_encoder

            folder = make_tiny_cross_encoder(
                os.path.join(self.root, f"l{n_layers}"),
                self.tokenizer,
                n_layers=n_layers,
                max_positions=512,
                **self.shape,
            )
            self.cache[n_layers] = HookedCrossEncoder.from_pretrained(folder)
        return self.cache[n_layers]


def nig_point(models: Models, pairs: int, tokens: int, steps: int, layers: int) -> Callable[[], Any]:
    from mechir_nig.attribution import NeuronIntegratedGradients

    ce = models(layers)
    batch = ce.tokenize(*synthetic_pairs(pairs, tokens))
    assert int(batch.lengths.max()) == tokens, (int(batch.lengths.max()), tokens)
    nig = NeuronIntegratedGradients(ce)
    return lambda: nig.attribute(batch, n_steps=steps)


def collection_point(models: Models, pairs: int, tokens: int, steps: int, layers: int) -> Callable[[], Any]:
    from mechir_nig.data import JudgedPair
    from mechir_nig.experiments.attribute import attribute_collection

    ce = models(layers)
    queries, docs = synthetic_pairs(pairs, tokens)
    judged = [
        JudgedPair(f"q{i}", f"d{i}", q, d, i % 2, "relevant" if i % 2 else "nonrelevant")
        for i, (q, d) in enumerate(zip(queries, docs, strict=True))
    ]
    return lambda: attribute_collection(ce, judged, n_steps=steps, batch_size=8, progress=False)


def sweep(
    name: str,
    point: Callable[..., Callable[[], Any]],
    models: Models,
    base: dict[str, int],
    values: dict[str, list[int]],
    factors: list[str],
    repeats: int,
) -> dict[str, list[Point]]:
    """Per factor, its values timed alternately ``repeats`` rounds after one warm-up round."""
    out: dict[str, list[Point]] = {}
    for factor in factors:
        points = [Point(v, point(models, **{**base, factor: v})) for v in values[factor]]
        times = alternate({str(p.value): p for p in points}, repeats=repeats, warmup=1, quiet=True)
        for p in points:
            p.times = times[str(p.value)]
            p.peaks = p.peaks[-repeats:]  # the timed runs only (the warm-up recorded one too)
            print(
                f"  {name:10s} {factor:6s} = {p.value:4d}: {spread(p.times, digits=3)}  peak +{p.peak:6.1f} MiB "
                f"[{min(p.peaks):.1f} - {max(p.peaks):.1f}]",
                flush=True,
            )
        out[factor] = points
    return out


def exponents(points: list[Point]) -> tuple[float, float, float, float, float]:
    """Time exponent on the medians, its min and max over the rounds fitted alone, memory exponent
    on the median peaks over all values and over the last two."""
    xs = [float(p.value) for p in points]
    per_round = [exponent(xs, [p.times[r] for p in points]) for r in range(len(points[0].times))]
    peaks = [p.peak for p in points]
    return (
        exponent(xs, [p.time for p in points]),
        min(per_round),
        max(per_round),
        exponent(xs, peaks),
        exponent(xs[-2:], peaks[-2:]),
    )


def report(title: str, base: dict[str, int], results: dict[str, list[Point]], repeats: int) -> list[str]:
    """Markdown rows: factor, values, times (median [min-max]), memory (median), exponents."""
    lines = [
        f"**{title}** (base: {', '.join(f'{k} {v}' for k, v in base.items())}; time: median [min-max] "
        f"of {repeats} alternated repeats)",
        "",
        "| factor | values | time (s) | peak memory growth (MiB) | time exponent (per round) "
        "| memory exponent | memory exponent, last two values |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for factor, points in results.items():
        t_exp, t_lo, t_hi, m_exp, m_last = exponents(points)
        lines.append(
            f"| {factor} | {' / '.join(str(p.value) for p in points)} "
            f"| {' / '.join(_cell(p.times) for p in points)} "
            f"| {' / '.join(f'{p.peak:.0f}' for p in points)} "
            f"| **{t_exp:.2f}** ({t_lo:.2f}-{t_hi:.2f}) | {m_exp:.2f} | {m_last:.2f} |"
        )
    return lines


def plot(path: str, results: dict[str, dict[str, list[Point]]], bases: dict[str, dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"pairs": "o", "tokens": "s", "steps": "^", "layers": "D"}
    for kind, style in (("NIG", "-"), ("collection", "--")):
        for factor, points in results.get(kind, {}).items():
            base = bases[kind][factor]
            xs = [p.value / base for p in points]
            med = [p.time for p in points]
            bars = [
                [m - min(p.times) for m, p in zip(med, points)],
                [max(p.times) - m for m, p in zip(med, points)],
            ]
            label = f"{kind}: {factor} (slope {exponents(points)[0]:.2f})"
            axes[0].errorbar(xs, med, yerr=bars, fmt=style, marker=markers[factor], capsize=2, label=label)
            axes[1].plot(
                xs,
                [max(p.peak, 0.5) for p in points],
                style,
                marker=markers[factor],
                label=f"{kind}: {factor}",
            )
    for ax, what in zip(
        axes, ("time (s, median, min-max bars)", "peak RSS growth (MiB, median)"), strict=True
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("factor / its base value")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle("How the cost of NIG and collection attribution grows (random BERT, CPU)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--d-mlp", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="alternated timed rounds per factor (default 3; 1 with --quick)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine a 2-thread op waits at OpenMP barriers for a "
        "core another process holds, which swamps the work being measured)",
    )
    ap.add_argument("--nig-factors", default="pairs,tokens,steps,layers")
    ap.add_argument("--collection-factors", default="pairs,tokens")
    ap.add_argument("--plot", default=None, help="write a PNG of the curves here (needs matplotlib)")
    ap.add_argument(
        "--markdown", action="store_true", help="print the Markdown tables for docs/benchmarks.md"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="two values per factor, one repeat unless --repeats is given (a smoke test, not docs figures)",
    )
    args = ap.parse_args()
    if args.quick:
        for values in (NIG_VALUES, COLLECTION_VALUES):
            for factor, vs in values.items():
                values[factor] = vs[:2]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    models = Models(args.d_model, args.d_mlp, args.heads)
    header("benchmarks/scaling.py: how the cost of NIG and collection attribution grows")
    print(
        f"  random BERT d_model {args.d_model}, d_mlp {args.d_mlp}, {args.heads} heads; per factor its values "
        f"alternated, median [min - max] of {args.repeats} repeats after 1 warm-up round"
        + ("; --quick: a smoke test, not figures for the docs" if args.quick else ""),
        flush=True,
    )
    if args.repeats < 3:
        print(f"  (only {args.repeats} repeat(s): the project's figures need at least 3)", flush=True)
    t0 = time.perf_counter()
    results: dict[str, dict[str, list[Point]]] = {}
    nig_factors = [f for f in args.nig_factors.split(",") if f]
    col_factors = [f for f in args.collection_factors.split(",") if f]
    if nig_factors:
        results["NIG"] = sweep("NIG", nig_point, models, BASE, NIG_VALUES, nig_factors, args.repeats)
    if col_factors:
        results["collection"] = sweep(
            "collection",
            collection_point,
            models,
            COLLECTION_BASE,
            COLLECTION_VALUES,
            col_factors,
            args.repeats,
        )
    print(f"\n(total {time.perf_counter() - t0:.0f} s)\n")
    for kind, res in results.items():
        print(f"{kind}: fitted exponents (cost ~ factor^e; time on the medians, memory on the median peaks)")
        for factor, points in res.items():
            t_exp, t_lo, t_hi, m_exp, m_last = exponents(points)
            print(
                f"  {factor:6s} time e = {t_exp:5.2f} (rounds alone {t_lo:.2f} - {t_hi:.2f})   "
                f"peak memory e = {m_exp:5.2f} (last two values: {m_last:5.2f})"
            )
    if args.markdown:
        print()
        if "NIG" in results:
            print("\n".join(report("NIG, one pair batch, all layers", BASE, results["NIG"], args.repeats)))
            print()
        if "collection" in results:
            print(
                "\n".join(
                    report("Collection attribution", COLLECTION_BASE, results["collection"], args.repeats)
                )
            )
    if args.plot:
        plot(args.plot, results, {"NIG": BASE, "collection": COLLECTION_BASE})


if __name__ == "__main__":
    main()
