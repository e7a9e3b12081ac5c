"""NIG on a large decoder reranker: peak memory and time per pair, with and without gradient checkpointing.

Usage: ``python benchmarks/decoder_memory.py [--kept 1,2,3] [--tokens 256] [--steps 32] [--vocab 32768]
[--repeats 3] [--full [--full-plain]]``

Model: a seeded random ``Qwen3ForCausalLM`` of Qwen3-Reranker-0.6B's block shape (hidden 1024, 16 query
heads and 8 KV heads of 128, SwiGLU 3072, RMSNorm, rotary), scored through the ``qwen3-reranker``
template, with only ``--kept`` of its 28 layers (a CPU stand-in) and the vocabulary cut from 151,669 to
``--vocab`` rows (the score reads two rows of the LM head; the embedding matrix only adds its size).
One pair of exactly ``--tokens`` tokens (template, query and a document cut to fit), ``--steps``
intervals (``n_steps + 1`` points), float32, the default window (``8192 // tokens`` points), NIG of
``mlp_post`` at layer 0 only (``layers=[0]``: every other block is above the first attributed layer, the
case checkpointing is for).

Each configuration runs in a fresh subprocess that loads the model, runs one untimed warm-up
attribution (``n_steps=2``), then the same attribution ``--repeats`` times (default 3): peak memory is the
process's resident high-water mark (``VmHWM``) over those timed attributions (reset after loading and the
warm-up through ``/proc/self/clear_refs``; one value per configuration, as the same attribution allocates
the same each time), next to the resident size before them; time per pair is the median and the range
[min - max] of the timed attributions' wall times (valid only on a quiet machine: the script prints the
load average). The repeats' attributions are checked equal (largest difference of their sums printed).
Configurations: each ``--kept`` count without checkpointing, and with ``checkpoint_blocks=True`` where a
block lies above layer 0; they run one after the other (not alternated: each is a process of its own
whose peak is the point). A table at the end lists peak, growth and median [min - max] time per pair.

The extrapolation to all 28 layers is an estimate, printed with its formula: the per-block activation
memory ``b`` is the growth, per kept layer (smallest to largest ``--kept``), of what the attribution
adds to the resident size (peak minus the size before it, so weights are not counted twice); without
checkpointing each block above adds ``b``, with it each adds only its input ``i = window points × tokens ×
d_model × 4`` bytes (computed) while one block's activations ``b`` are live in the backward; the 28 − L
missing blocks' weights and the full vocabulary's embeddings are added to both. The time per pair
extrapolates the medians (``t(L)``: the median at ``L`` kept layers). With three or more
``--kept`` counts the growth per checkpointed block is measured too and printed next to ``i``.

``--full`` then measures what the estimate predicts: the stand-in with all 28 layers and the full
151,669-row vocabulary (0.6B parameters, about 2.4 GB saved to a temporary folder), with
``checkpoint_blocks=True``; ``--full-plain`` also without checkpointing (estimated at about 23 GiB: only
on a machine with that much free memory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import header, repeats  # noqa: E402

SHAPE = dict(d_model=1024, n_heads=16, n_kv_heads=8, head_dim=128, d_mlp=3072)
"""Qwen3-Reranker-0.6B's block (its config: hidden_size, num_attention_heads, num_key_value_heads,
head_dim, intermediate_size)."""
FULL_LAYERS, FULL_VOCAB = 28, 151_669

CHILD = """
import json, sys, time, torch, warnings
from mechir_nig import load_model
from mechir_nig.attribution import NeuronIntegratedGradients
torch.manual_seed(0)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
model = load_model({folder!r}, template="qwen3-reranker")
words = "the cell query document model attention layer signal water light energy data".split()
doc = " ".join(words[i % len(words)] for i in range(4 * {tokens}))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the document is cut to fit: on purpose
    batch = model.tokenize(["what is a neuron"], [doc], max_length={tokens})
nig = NeuronIntegratedGradients(model)
nig.attribute(batch, n_steps=2, layers=[0], checkpoint_blocks={ckpt})  # warm-up (allocator, kernels)
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current resident size
    reset = True
except OSError:
    reset = False
before = status("VmRSS:")
seconds, sums = [], []
for _ in range({repeats}):  # the same attribution {repeats} times: the peak covers them all
    t0 = time.perf_counter()
    attr = nig.attribute(batch, n_steps={steps}, layers=[0], checkpoint_blocks={ckpt})
    seconds.append(time.perf_counter() - t0)
    sums.append(float(attr.values.double().sum()))
print(json.dumps({{"tokens": int(batch.lengths[0]), "before_kib": before, "peak_kib": status("VmHWM:"),
                  "reset": reset, "seconds": seconds, "window": attr.meta.get("points_evaluated"),
                  "sum": sums[0], "repeat_diff": max(abs(x - sums[0]) for x in sums)}}))
"""


def build(kept: int, vocab: int, root: Path) -> Path:
    """The seeded random 0.6B-shape decoder with ``kept`` layers (tokenizer trained on the template)."""
    from mechir_nig.testing import decoder_tokenizer, make_decoder

    tok = decoder_tokenizer(["what is a neuron", "yes", "no"] * 5)
    return make_decoder(root / f"qwen3_{kept}", tok, "qwen3", n_layers=kept, vocab_size=vocab, **SHAPE)


def run(folder: Path, args: argparse.Namespace, ckpt: bool) -> dict:
    code = CHILD.format(
        folder=str(folder), tokens=args.tokens, steps=args.steps, ckpt=ckpt, repeats=args.repeats
    )
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"configuration failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["median_s"] = statistics.median(out["seconds"])
    return out


def per_pair(r: dict) -> str:
    """``median [min - max, n]`` seconds per pair of a configuration's timed attributions."""
    s = r["seconds"]
    return f"{r['median_s']:.1f} s [{min(s):.1f} - {max(s):.1f}, n={len(s)}] per pair"


def mib(kib: float) -> str:
    return f"{kib / 1024:8.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    ap.add_argument(
        "--kept", default="1,2,3", help="layers kept, comma-separated (two or more counts: the slopes)"
    )
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32768, help="vocabulary rows (the real model: 151669)")
    ap.add_argument(
        "--repeats",
        type=repeats,
        default=3,
        help="timed attributions per configuration, after one warm-up (3 or more: median and spread)",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="also measure all 28 layers and the full vocabulary with checkpoint_blocks=True",
    )
    ap.add_argument("--full-plain", action="store_true", help="with --full: also without checkpointing")
    args = ap.parse_args()
    kept = sorted({int(k) for k in args.kept.split(",")})
    if len(kept) < 2 or kept[0] < 1:
        ap.error("--kept needs two layer counts >= 1 (the per-block slope), e.g. 1,2")
    header(
        f"NIG on a Qwen3-Reranker-0.6B-shape decoder ({', '.join(f'{k} {v}' for k, v in SHAPE.items())}, "
        f"vocab {args.vocab}), {args.tokens} tokens, {args.steps} steps, layers=[0], float32"
    )
    print(
        f"  per configuration, one fresh process: 1 warm-up attribution, then {args.repeats} timed ones "
        "(time per pair: median [min - max, n]); the peak is the resident high-water mark over all "
        f"{args.repeats} (one value: the same attribution allocates the same each time)",
        flush=True,
    )
    rows: dict[tuple[int, bool], dict] = {}
    with tempfile.TemporaryDirectory(prefix="mechir_nig_decoder_memory_") as tmp:
        for k in kept:
            folder = build(k, args.vocab, Path(tmp))
            for ckpt in (False, True) if k > 1 else (False,):
                r = rows[k, ckpt] = run(folder, args, ckpt)
                print(
                    f"  {k} layer(s), checkpoint_blocks={str(ckpt):5s}: peak {mib(r['peak_kib'])} "
                    f"(+{mib(r['peak_kib'] - r['before_kib']).strip()} over {mib(r['before_kib']).strip()} "
                    f"before the attributions), {per_pair(r)} ({r['tokens']} tokens)"
                    + ("" if r["reset"] else "  [VmHWM not reset: includes loading]"),
                    flush=True,
                )
    print(
        "\n| layers kept | checkpoint_blocks | peak (VmHWM) | growth over the size before | time per pair, median [min - max] |"
    )
    print("| ---: | --- | ---: | ---: | ---: |")
    for (k, ckpt), r in rows.items():
        s = r["seconds"]
        print(
            f"| {k} | {ckpt} | {mib(r['peak_kib']).strip()} | {mib(r['peak_kib'] - r['before_kib']).strip()} "
            f"| {r['median_s']:.2f} s [{min(s):.2f} - {max(s):.2f}] (n={len(s)}) |"
        )
    sums = {key: r["sum"] for key, r in rows.items()}
    same = all(
        abs(sums[k, True] - sums[k, False]) <= 1e-6 * max(abs(sums[k, False]), 1e-30) for k in kept[1:]
    )
    repeat_diff = max(r["repeat_diff"] for r in rows.values())
    ckpt_diff = max((abs(sums[k, True] - sums[k, False]) for k in kept[1:]), default=0.0)
    steady = all(r["repeat_diff"] <= 1e-6 * max(abs(r["sum"]), 1e-30) for r in rows.values())
    if not (same and steady):  # a timing of different answers is no timing
        raise SystemExit(
            f"the attributions differ (to 1e-6 relative): with vs without checkpointing by {ckpt_diff:.2e}, "
            f"between the repeats of a configuration by {repeat_diff:.2e}"
        )
    print(
        f"  attributions with and without checkpointing: equal (sum of values; largest difference "
        f"{ckpt_diff:.2e}); largest difference between the repeats of a configuration {repeat_diff:.2e}"
    )

    lo, hi = kept[0], kept[-1]
    d, points = SHAPE["d_model"], args.steps + 1

    def grown(k: int, ckpt: bool) -> float:  # what the attribution adds (the weights are in "before")
        return rows[k, ckpt]["peak_kib"] - rows[k, ckpt]["before_kib"]

    b = (grown(hi, False) - grown(lo, False)) / (hi - lo)  # KiB of activations per block
    tokens = rows[hi, False]["tokens"]
    window = min(points, 8192 // tokens)  # the default window (points per forward/backward)
    i = window * tokens * d * 4 / 1024  # a checkpointed block keeps its input (per window)
    with_ckpt = [k for k in kept if k > 1]
    if len(with_ckpt) >= 2:  # the measured growth per checkpointed block, next to the computed i
        k1, k2 = with_ckpt[0], with_ckpt[-1]
        slope = (grown(k2, True) - grown(k1, True)) / (k2 - k1)
        print(
            f"  measured growth of the attribution's memory per block: {mib(b).strip()} without checkpointing, "
            f"{mib(slope).strip()} with it, vs a block's input i = {mib(i).strip()}"
        )
    per_layer_params = (
        d * SHAPE["n_heads"] * SHAPE["head_dim"] * 2  # q, o
        + d * SHAPE["n_kv_heads"] * SHAPE["head_dim"] * 2  # k, v
        + 3 * d * SHAPE["d_mlp"]  # gate, up, down
    )
    w = per_layer_params * 4 / 1024  # KiB of float32 weights per missing layer
    extra = (FULL_LAYERS - hi) * w + (FULL_VOCAB - args.vocab) * d * 4 / 1024
    plain = rows[hi, False]["peak_kib"] + (FULL_LAYERS - hi) * b + extra
    ckpt_at = rows[hi, True]["peak_kib"] + (FULL_LAYERS - hi) * i + extra
    t_block = (rows[hi, False]["median_s"] - rows[lo, False]["median_s"]) / (hi - lo)
    print(
        f"\n  estimate for all {FULL_LAYERS} layers and the full vocabulary (float32, layers=[0]):\n"
        f"    b = per-block activations = (growth({hi}) - growth({lo})) / {hi - lo} = {mib(b).strip()} "
        f"(growth = peak - resident size before the attribution)\n"
        f"    i = a checkpointed block's input = {window} points (a window) x {tokens} tokens x {d} x 4 B "
        f"= {mib(i).strip()}\n"
        f"    W = ({FULL_LAYERS} - {hi}) x {mib(w).strip()} weights + ({FULL_VOCAB} - {args.vocab}) x {d} x 4 B "
        f"embeddings = {mib(extra).strip()}\n"
        f"    without checkpointing: peak({hi}) + ({FULL_LAYERS} - {hi}) x b + W = {plain / 1024**2:.2f} GiB\n"
        f"    with checkpoint_blocks: peak_ckpt({hi}) + ({FULL_LAYERS} - {hi}) x i + W = {ckpt_at / 1024**2:.2f} GiB\n"
        f"    time per pair (medians): t({hi}) + ({FULL_LAYERS} - {hi}) x {t_block:.1f} s per block = "
        f"{rows[hi, False]['median_s'] + (FULL_LAYERS - hi) * t_block:.0f} s without checkpointing; "
        f"with it, each block above layer 0 runs its forward once more (about +1/3 of its time)"
    )
    if not args.full:
        return
    estimate = {False: plain, True: ckpt_at}
    print(f"\n  measured: all {FULL_LAYERS} layers, vocabulary {FULL_VOCAB} (the real model's shape):")
    with tempfile.TemporaryDirectory(prefix="mechir_nig_decoder_memory_full_") as tmp:
        folder = build(FULL_LAYERS, FULL_VOCAB, Path(tmp))
        for ckpt in (True, False) if args.full_plain else (True,):
            r = run(folder, args, ckpt)
            print(
                f"    checkpoint_blocks={str(ckpt):5s}: peak {mib(r['peak_kib']).strip()} (estimate "
                f"{estimate[ckpt] / 1024**2:.2f} GiB; +{mib(r['peak_kib'] - r['before_kib']).strip()} over "
                f"{mib(r['before_kib']).strip()} before the attributions), {per_pair(r)} "
                f"({r['tokens']} tokens)",
                flush=True,
            )


if __name__ == "__main__":
    main()
