"""GPU figures: scoring, NIG and a collection attribution on a BERT-large-shaped model, fp32 and bf16.

Usage::

    python benchmarks/gpu.py                        # needs CUDA; prints SKIP and exits 0 without it
    python benchmarks/gpu.py --model /path/to/monobert-large   # a real checkpoint instead of random weights
    python benchmarks/gpu.py --allow-cpu --n-layers 2 --d-model 64 --d-mlp 128 --n-heads 2 \\
        --tokens 32 --steps 4 --pairs 4 --score-pairs 8   # exercise the script on the CPU (small shape)

Measures, at ``--tokens`` (256) tokens per pair and ``--steps`` (50) trapezoid steps, for float32 and
bfloat16 (``dtype=``):

- scoring: pairs/s of ``score_batch`` (batches of ``--score-batch``);
- NIG (all layers, ``reduce="neuron"``): pairs/s, and the ratio to its floor (one forward + one
  input-gradient backward, parameters frozen, over the same interpolation points and windows);
- ``attribute_collection`` of ``--pairs`` synthetic judged pairs: pairs/s;
- the bf16 error against fp32 (relative L2 of the scores and of per-neuron NIG);
- a 1-GPU ``torchrun --standalone --nproc-per-node 1`` run of the same collection attribution
  (``distributed=True``: the sharded code path, nccl), its pairs/s and its agreement with the
  single-process statistics.

Without ``--model`` the model is a seeded random BERT-large-shaped ``BertForSequenceClassification``
(24 layers, 16 heads, 1024 / 4096; speed is the same as a trained model's, but the bf16 error of
random weights is not a trained model's: pass a real checkpoint for that figure). Figures go to
docs/benchmarks.md ("GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import synthetic_pairs  # noqa: E402


def build_model(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    from transformers import AutoTokenizer

    from mechir_nig.testing import make_tiny_cross_encoder, minilm_path

    folder = Path(tempfile.mkdtemp(prefix="mechir_nig_gpu_"))
    return make_tiny_cross_encoder(
        folder,
        AutoTokenizer.from_pretrained(str(minilm_path())),
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_model=args.d_model,
        d_mlp=args.d_mlp,
        max_positions=max(512, args.tokens),
        seed=0,
    )


def judged(n: int, n_tokens: int) -> list:
    from mechir_nig.data.pairs import JudgedPair

    q, d = synthetic_pairs(n, n_tokens)
    return [
        JudgedPair(f"q{i}", f"d{i}", q[i], d[i], i % 2, "relevant" if i % 2 else "nonrelevant")
        for i in range(n)
    ]


def best_of(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Minimum seconds of ``fn`` over ``repeats`` runs after one warm-up (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def floor_fn(model, batch, n_steps: int, window: int) -> Callable[[], None]:
    """One forward + one input-gradient backward over the points and windows NIG evaluates."""
    from mechir_nig.attribution import alphas, baseline_embeddings

    dev, acc = model.device, model.cfg.acc_dtype
    al = torch.tensor(alphas("riemann_trapezoid", n_steps + 1), dtype=acc, device=dev)
    with torch.no_grad():
        x = model.word_embeddings(batch.input_ids).to(acc)
        xb = baseline_embeddings(model, batch.input_ids, batch.groups, "pad").to(acc)
    n_points = len(al)
    total = len(batch) * n_points

    def run() -> None:
        for s in range(0, total, window):
            idx = torch.arange(s, min(s + window, total), device=dev)
            pj, k = idx // n_points, idx % n_points
            emb = (xb[pj] + al[k][:, None, None] * (x[pj] - xb[pj])).requires_grad_(True)
            with torch.enable_grad():
                f = model(None, batch.token_type_ids[pj], batch.attention_mask[pj], input_embeds=emb)
                torch.autograd.grad(f.sum(), emb)

    return run


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def measure(folder: Path, dtype: torch.dtype, args: argparse.Namespace, device: torch.device) -> dict:
    from mechir_nig import HookedCrossEncoder, attribute_collection
    from mechir_nig.attribution import NeuronIntegratedGradients
    from mechir_nig.attribution.nig.plan import default_window

    model = HookedCrossEncoder.from_pretrained(folder, dtype=dtype, device=device, max_length=args.tokens)
    q, d = synthetic_pairs(args.score_pairs, args.tokens)
    sbatch = model.tokenize(q, d)
    t_score = best_of(lambda: model.score_batch(sbatch, batch_size=args.score_batch), args.repeats, device)
    q, d = synthetic_pairs(args.pairs, args.tokens)
    batch = model.tokenize(q, d)
    window = default_window(batch.input_ids.shape[1], args.internal_batch_size)
    nig = NeuronIntegratedGradients(model)
    out: dict = {}

    def run_nig() -> None:
        out["attr"] = nig.attribute(batch, n_steps=args.steps, reduce="neuron", internal_batch_size=window)

    t_nig = best_of(run_nig, args.repeats, device)
    t_floor = best_of(floor_fn(model, batch, args.steps, window), args.repeats, device)
    pairs = judged(args.pairs, args.tokens)
    t0 = time.perf_counter()
    col = attribute_collection(
        model,
        pairs,
        n_steps=args.steps,
        batch_size=args.pairs,
        internal_batch_size=window,
        progress=False,
        distributed=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_col = time.perf_counter() - t0
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "score_pairs_per_s": args.score_pairs / t_score,
        "nig_pairs_per_s": args.pairs / t_nig,
        "nig_over_floor": t_nig / t_floor,
        "collection_pairs_per_s": args.pairs / t_col,
        "scores": model.score_batch(sbatch, batch_size=args.score_batch),
        "per_neuron": out["attr"].per_neuron(),
        "collection": col,
        "window": window,
    }


def worker(args: argparse.Namespace) -> None:
    """Run under torchrun: the sharded collection attribution; rank 0 writes time and statistics."""
    from mechir_nig import HookedCrossEncoder, attribute_collection
    from mechir_nig.runtime.distributed import is_main, local_device

    device = local_device() if not args.allow_cpu else torch.device("cpu")
    model = HookedCrossEncoder.from_pretrained(args.model, device=device, max_length=args.tokens)
    pairs = judged(args.pairs, args.tokens)
    t0 = time.perf_counter()
    col = attribute_collection(
        model,
        pairs,
        n_steps=args.steps,
        batch_size=args.pairs,
        internal_batch_size=args.internal_batch_size,
        progress=False,
        distributed=True,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if is_main():
        means = {lab: col.mean(lab).tolist() for lab in ("relevant", "nonrelevant")}
        Path(args.worker_out).write_text(json.dumps({"seconds": elapsed, "means": means}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a cross-encoder folder (default: random BERT-large shape)")
    ap.add_argument("--n-layers", type=int, default=24)
    ap.add_argument("--n-heads", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--d-mlp", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=16, help="pairs attributed (NIG and the collection run)")
    ap.add_argument("--score-pairs", type=int, default=512)
    ap.add_argument("--score-batch", type=int, default=64)
    ap.add_argument(
        "--internal-batch-size", type=int, default=None, help="points per window (default 8192 // tokens)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-torchrun", action="store_true", help="leave out the 1-GPU torchrun run")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no CUDA (a check)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("SKIP: no CUDA device (torch.cuda.is_available() is False); the GPU figures need a GPU")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    folder = build_model(args)
    res = {dt: measure(folder, dt, args, device) for dt in (torch.float32, torch.bfloat16)}
    r32, r16 = res[torch.float32], res[torch.bfloat16]
    print(
        f"{name}, torch {torch.__version__}; model {args.model or 'random'} "
        f"{'' if args.model else f'({args.n_layers} layers, {args.d_model}/{args.d_mlp}, {args.n_heads} heads)'}; "
        f"{args.tokens} tokens, {args.steps} steps, "
        f"window {r32['window']} points; min of {args.repeats}"
    )
    print(
        f"{'':<10} {'score pairs/s':>14} {'NIG pairs/s':>12} {'NIG / floor':>12} {'collection pairs/s':>19}"
    )
    for r in (r32, r16):
        print(
            f"{r['dtype']:<10} {r['score_pairs_per_s']:14.1f} {r['nig_pairs_per_s']:12.2f} "
            f"{r['nig_over_floor']:12.3f} {r['collection_pairs_per_s']:19.2f}"
        )
    print(
        f"bf16 vs fp32 relative L2: scores {rel_l2(r16['scores'], r32['scores']):.4f}, "
        f"per-neuron NIG {rel_l2(r16['per_neuron'], r32['per_neuron']):.4f}"
    )
    if args.no_torchrun:
        return
    out = Path(tempfile.mkdtemp()) / "worker.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", __file__,
        "--worker", "--worker-out", str(out), "--model", str(folder), "--tokens", str(args.tokens),
        "--steps", str(args.steps), "--pairs", str(args.pairs),
    ]  # fmt: skip
    if args.internal_batch_size:
        cmd += ["--internal-batch-size", str(args.internal_batch_size)]
    if args.allow_cpu:
        cmd.append("--allow-cpu")
    print("torchrun:", " ".join(cmd[2:]).replace("torch.distributed.run", "torchrun", 1))
    subprocess.run(cmd, check=True)
    got = json.loads(out.read_text())
    single = r32["collection"]
    diff = max(
        (torch.tensor(got["means"][lab], dtype=torch.float64) - single.mean(lab)).abs().max().item()
        for lab in ("relevant", "nonrelevant")
    )
    print(
        f"1-process torchrun (fp32, distributed=True): {args.pairs / got['seconds']:.2f} pairs/s "
        f"(incl. process-group setup); max |mean - single-process mean| = {diff:.2e}"
    )


if __name__ == "__main__":
    main()
