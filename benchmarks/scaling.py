"""How the cost of NIG and of collection attribution grows: time and peak memory per factor, with the
fitted exponents (log-log least squares).

Usage: ``python benchmarks/scaling.py [--d-model 128] [--d-mlp 512] [--heads 4] [--repeats 3] [--threads 1]
[--nig-factors pairs,tokens,steps,layers] [--collection-factors pairs,tokens] [--plot docs/img/scaling.png]
[--markdown]``

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

Time is the minimum of ``--repeats`` runs after a warm-up (the machine is shared: the minimum is the
least disturbed); peak memory is the growth of the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` before each run, after ``malloc_trim`` gave freed pages back) above its RSS
before the run, minimum of the repeats: the transient memory of one call (activations, gradients,
the result), not the model. The
exponent of a factor is the slope of log(cost) on log(factor): 1 is linear. One torch thread by
default: on the shared 2-core development machine, 2-thread runs measured mostly OpenMP barrier waits
(compare ``--threads 2``). With ``--plot`` the
curves are drawn with matplotlib (when installed) on the factor relative to its base value.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import synthetic_pairs  # noqa: E402

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


def measure(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(min seconds, min peak-RSS growth in MiB) of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times, peaks = [], []
    for _ in range(repeats):
        gc.collect()
        _trim()  # give freed heap pages back, so the RSS before the run is what is live
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        before = _status("VmRSS")
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        peaks.append((_status("VmHWM") - before) / 1024)
    return min(times), max(min(peaks), 0.0)


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
) -> dict[str, list[tuple[int, float, float]]]:
    out: dict[str, list[tuple[int, float, float]]] = {}
    for factor in factors:
        rows = []
        for v in values[factor]:
            settings = {**base, factor: v}
            sec, mib = measure(point(models, **settings), repeats)
            rows.append((v, sec, mib))
            print(f"  {name:10s} {factor:6s} = {v:4d}: {sec:8.3f} s  peak +{mib:7.1f} MiB", flush=True)
        out[factor] = rows
    return out


def report(title: str, base: dict[str, int], results: dict[str, list[tuple[int, float, float]]]) -> list[str]:
    """Markdown rows: factor, values, times, memory, exponents."""
    lines = [
        f"**{title}** (base: {', '.join(f'{k} {v}' for k, v in base.items())})",
        "",
        "| factor | values | time (s) | peak memory growth (MiB) | time exponent | memory exponent "
        "| memory exponent, last two values |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for factor, rows in results.items():
        xs = [float(r[0]) for r in rows]
        t_exp = exponent(xs, [r[1] for r in rows])
        m_exp = exponent(xs, [r[2] for r in rows])
        m_last = exponent(xs[-2:], [r[2] for r in rows[-2:]])
        lines.append(
            f"| {factor} | {' / '.join(str(r[0]) for r in rows)} | {' / '.join(f'{r[1]:.3g}' for r in rows)} "
            f"| {' / '.join(f'{r[2]:.0f}' for r in rows)} | **{t_exp:.2f}** | {m_exp:.2f} | {m_last:.2f} |"
        )
    return lines


def plot(
    path: str, results: dict[str, dict[str, list[tuple[int, float, float]]]], bases: dict[str, dict]
) -> None:
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
        for factor, rows in results.get(kind, {}).items():
            base = bases[kind][factor]
            xs = [r[0] / base for r in rows]
            t_exp = exponent([float(r[0]) for r in rows], [r[1] for r in rows])
            label = f"{kind}: {factor} (slope {t_exp:.2f})"
            axes[0].plot(xs, [r[1] for r in rows], style, marker=markers[factor], label=label)
            axes[1].plot(
                xs, [max(r[2], 0.5) for r in rows], style, marker=markers[factor], label=f"{kind}: {factor}"
            )
    for ax, what in zip(axes, ("time (s, min of repeats)", "peak RSS growth (MiB)"), strict=True):
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
    ap.add_argument("--repeats", type=int, default=3)
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
    ap.add_argument("--quick", action="store_true", help="two values per factor, one repeat (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        for values in (NIG_VALUES, COLLECTION_VALUES):
            for factor, vs in values.items():
                values[factor] = vs[:2]
        args.repeats = 1
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    models = Models(args.d_model, args.d_mlp, args.heads)
    print(
        f"random BERT d_model {args.d_model}, d_mlp {args.d_mlp}, {args.heads} heads; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; min of {args.repeats} repeats",
        flush=True,
    )
    t0 = time.perf_counter()
    results: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
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
        print(f"{kind}: fitted exponents (cost ~ factor^e)")
        for factor, rows in res.items():
            xs = [float(r[0]) for r in rows]
            print(
                f"  {factor:6s} time e = {exponent(xs, [r[1] for r in rows]):5.2f}   "
                f"peak memory e = {exponent(xs, [r[2] for r in rows]):5.2f} "
                f"(last two values: {exponent(xs[-2:], [r[2] for r in rows[-2:]]):5.2f})"
            )
    if args.markdown:
        print()
        if "NIG" in results:
            print("\n".join(report("NIG, one pair batch, all layers", BASE, results["NIG"])))
            print()
        if "collection" in results:
            print("\n".join(report("Collection attribution", COLLECTION_BASE, results["collection"])))
    if args.plot:
        plot(args.plot, results, {"NIG": BASE, "collection": COLLECTION_BASE})


if __name__ == "__main__":
    main()
