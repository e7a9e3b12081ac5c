"""NIG speed and memory, measured side by side in one run.

Usage: ``python benchmarks/nig.py [--pairs 8] [--tokens 128] [--steps 32] [--sections floor,captum,loop,large,memory,tolerance]``

Sections (each prints ratios of functions timed alternately in the same process):
  floor   NIG over all layers vs the floor: one forward + one input-gradient backward (parameters
          frozen) over the same interpolation points and windows.            target <= 1.15
  captum  vs captum.attr.LayerConductance run once per layer (HF eager model, parameters frozen,
          same points, all points in one batch).                                expect >= 4x
  loop    vs a hand-written per-pair loop in the style of public NIG code: one pair at a time, forward
          hooks on the HF BertIntermediate modules of every layer, parameters not frozen.
  large   vs Captum per layer on a BERT-large-shaped random model (24 layers, 1024/4096).  >= 12x
  memory  peak RSS at n_steps=256 vs 16 with the same internal_batch_size (fresh subprocesses).
  tolerance  time to reach |delta| < 1 % of |F(x) - F(x')|: ours with n_steps="auto", tol=0.01 (all
          layers) vs Captum LayerConductance at its default 50 steps, trapezoid, run once per layer;
          each side's achieved max |delta| / |F(x) - F(x')| is measured, not assumed.    target >= 10x
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved_times, minilm_cross_encoder_dir, synthetic_pairs  # noqa: E402

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.attribution import NeuronIntegratedGradients, alphas, baseline_embeddings  # noqa: E402


def floor_fn(ce, batch, n_steps, window):
    """Forward + input-gradient backward over the same points, windows and length order as NIG."""
    al = torch.tensor(alphas("riemann_trapezoid", n_steps + 1))
    x = ce.word_embeddings(batch.input_ids)
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")
    n_points = len(al)
    total = len(batch) * n_points

    def run():
        for s in range(0, total, window):
            idx = torch.arange(s, min(s + window, total))
            pj, k = idx // n_points, idx % n_points
            lp = pj - pj[0]
            sl = slice(int(pj[0]), int(pj[-1]) + 1)
            xw, bw = x[sl], xb[sl]
            emb = (bw[lp] + al[k][:, None, None] * (xw - bw)[lp]).requires_grad_(True)
            with torch.enable_grad():
                f = ce(None, batch.token_type_ids[sl][lp], batch.attention_mask[sl][lp], input_embeds=emb)
                torch.autograd.grad(f.sum(), emb)

    return run


def captum_fn(hf, ce, batch, n_steps, layers, method=None):
    """Captum ``LayerConductance`` once per layer, all points in one batch (``method``: Captum's default)."""
    from captum.attr import LayerConductance

    for p in hf.parameters():
        p.requires_grad_(False)
    x = hf.bert.embeddings.word_embeddings(batch.input_ids)
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")

    def forward(e, tt, m):
        return hf(inputs_embeds=e, token_type_ids=tt, attention_mask=m).logits[:, 0]

    def run():
        for layer in layers:
            LayerConductance(forward, hf.bert.encoder.layer[layer].intermediate).attribute(
                x,
                baselines=xb,
                additional_forward_args=(batch.token_type_ids, batch.attention_mask),
                n_steps=n_steps,
                **({"method": method} if method else {}),
            )

    return run


def loop_fn(hf, ce, batch, n_steps):
    """Public-code style: per pair, all points of that pair in one batch, hooks on HF modules."""
    al = torch.tensor(alphas("riemann_trapezoid", n_steps + 1))
    for p in hf.parameters():
        p.requires_grad_(True)

    def run():
        for i in range(len(batch)):
            n = int(batch.attention_mask[i].sum())
            ids = batch.input_ids[i : i + 1, :n]
            x = hf.bert.embeddings.word_embeddings(ids).detach()
            xb = baseline_embeddings(ce, ids, batch.groups[i : i + 1, :n], "pad")
            emb = xb + al[:, None, None] * (x - xb)
            acts = []

            def grab(module, inp, out, acts=acts):
                out.retain_grad()
                acts.append(out)

            hooks = [layer.intermediate.register_forward_hook(grab) for layer in hf.bert.encoder.layer]
            try:
                logits = hf(
                    inputs_embeds=emb,
                    token_type_ids=batch.token_type_ids[i : i + 1, :n].expand(len(al), -1),
                    attention_mask=batch.attention_mask[i : i + 1, :n].expand(len(al), -1),
                ).logits[:, 0]
                logits.sum().backward()
                _ = [(a.grad[:-1] * (a[1:] - a[:-1])).sum(0).detach() for a in acts]
            finally:
                for h in hooks:
                    h.remove()
                hf.zero_grad(set_to_none=True)

    return run


def section_minilm(args, sections):
    from transformers import BertForSequenceClassification

    folder = minilm_cross_encoder_dir()
    ce = HookedCrossEncoder.from_pretrained(folder)
    hf = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    q, d = synthetic_pairs(args.pairs, args.tokens)
    batch = ce.tokenize(q, d)
    window = args.window or max(1, 8192 // args.tokens)
    nig = NeuronIntegratedGradients(ce)

    def run_nig():
        nig.attribute(batch, n_steps=args.steps, internal_batch_size=window)

    head = f"MiniLM-L6 cross-encoder, {args.pairs} pairs x {args.tokens} tokens x {args.steps} steps, window {window}"
    print(f"{head}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    fns = {"nig_all_layers": run_nig}
    if "floor" in sections:
        fns["floor"] = floor_fn(ce, batch, args.steps, window)
    if "captum" in sections:
        fns["captum_per_layer"] = captum_fn(hf, ce, batch, args.steps, range(ce.cfg.n_layers))
    if "loop" in sections:
        fns["per_pair_hf_hooks"] = loop_fn(hf, ce, batch, args.steps)
    t = interleaved_times(fns, repeats=args.repeats, warmup=1)
    for name, sec in t.items():
        print(f"  {name:20s} {sec:8.2f} s   ({args.pairs / sec:6.2f} pairs/s)")
    if "floor" in t:
        print(f"  ratio NIG / floor            = {t['nig_all_layers'] / t['floor']:.3f}  (target <= 1.15)")
    if "captum_per_layer" in t:
        print(
            f"  speed-up vs Captum per layer = {t['captum_per_layer'] / t['nig_all_layers']:.2f}x  (expect >= 4x)"
        )
    if "per_pair_hf_hooks" in t:
        print(f"  speed-up vs per-pair loop    = {t['per_pair_hf_hooks'] / t['nig_all_layers']:.2f}x")


def section_large(args):
    from transformers import AutoTokenizer, BertForSequenceClassification

    from mechir_nig.testing import make_tiny_cross_encoder, minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    folder = make_tiny_cross_encoder(
        tempfile.mkdtemp(prefix="bert_large_"), tok, n_layers=24, n_heads=16, d_model=1024, d_mlp=4096
    )
    ce = HookedCrossEncoder.from_pretrained(folder)
    hf = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    q, d = synthetic_pairs(args.large_pairs, args.large_tokens)
    batch = ce.tokenize(q, d)
    nig = NeuronIntegratedGradients(ce)
    steps = args.large_steps

    def run_nig():
        nig.attribute(batch, n_steps=steps)

    print(
        f"BERT-large-shaped random (24 x 1024 / 4096), {args.large_pairs} pairs x {args.large_tokens} tokens x {steps} steps"
    )
    t = interleaved_times(
        {"nig_all_layers": run_nig, "captum_per_layer": captum_fn(hf, ce, batch, steps, range(24))},
        repeats=2,
        warmup=0,
    )
    for name, sec in t.items():
        print(f"  {name:20s} {sec:8.2f} s")
    print(
        f"  speed-up vs Captum per layer = {t['captum_per_layer'] / t['nig_all_layers']:.2f}x  (expect >= 12x)"
    )


def captum_completeness(hf, ce, batch, n_points):
    """Captum ``IntegratedGradients``' own |delta| / |F(x) - F(x')| on ``n_points`` trapezoid points (the
    points ``LayerConductance`` uses at ``n_points - 1`` steps). Captum's trapezoid step sizes are
    ``1/n`` inside and ``1/(2n)`` at the ends for ``n`` points, summing to ``(n - 1)/n``: a ``-1/n`` bias."""
    from captum.attr import IntegratedGradients

    x = hf.bert.embeddings.word_embeddings(batch.input_ids).detach()
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad")

    def forward(e, tt, m):
        return hf(inputs_embeds=e, token_type_ids=tt, attention_mask=m).logits[:, 0]

    _, delta = IntegratedGradients(forward).attribute(
        x,
        baselines=xb,
        additional_forward_args=(batch.token_type_ids, batch.attention_mask),
        n_steps=n_points,
        method="riemann_trapezoid",
        return_convergence_delta=True,
    )
    with torch.no_grad():
        gap = forward(x, batch.token_type_ids, batch.attention_mask) - forward(
            xb, batch.token_type_ids, batch.attention_mask
        )
    return (delta.detach() / gap).abs()


def section_tolerance(args):
    from transformers import BertForSequenceClassification

    folder = minilm_cross_encoder_dir()
    ce = HookedCrossEncoder.from_pretrained(folder)
    hf = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    q, d = synthetic_pairs(args.pairs, args.tokens)
    batch = ce.tokenize(q, d)
    window = args.window or max(1, 8192 // args.tokens)
    nig = NeuronIntegratedGradients(ce)
    tol, captum_steps = 0.01, 50

    def run_auto():
        return nig.attribute(batch, n_steps="auto", tol=tol, internal_batch_size=window)

    print(
        f"Time to |delta| < {tol:.0%}: MiniLM-L6 cross-encoder, {args.pairs} pairs x {args.tokens} tokens, "
        f"all {ce.cfg.n_layers} layers, window {window}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    attr = run_auto()  # also the warm-up
    ours = (attr.convergence_delta / (attr.scores - attr.baseline_scores)).abs()
    # the completeness of Captum's grid: 51 trapezoid points with true trapezoid weights (our delta at
    # n_steps=50), and Captum IntegratedGradients' own delta on the same points (its weights' -1/51 bias)
    grid = nig.attribute(
        batch, n_steps=captum_steps, return_convergence_delta=True, layers=[ce.cfg.n_layers - 1]
    )
    grid_rel = (grid.convergence_delta / (grid.scores - grid.baseline_scores)).abs()
    own = captum_completeness(hf, ce, batch, captum_steps + 1)
    captum = captum_fn(hf, ce, batch, captum_steps, range(ce.cfg.n_layers), method="riemann_trapezoid")
    t = interleaved_times(
        {"nig_auto": run_auto, "captum_per_layer_50": captum}, repeats=args.repeats, warmup=0
    )
    used = attr.n_steps_used.tolist()
    points = attr.meta["points_evaluated"]
    print(
        f"  nig_auto (tol={tol})                 {t['nig_auto']:8.2f} s   n_steps_used {used}, {points} points"
    )
    print(
        f"  captum_per_layer ({captum_steps} trapezoid steps) {t['captum_per_layer_50']:8.2f} s   "
        f"{ce.cfg.n_layers} layers x {len(batch)} pairs x {captum_steps + 1} points"
    )

    def fmt(v):
        return f"max {v.max().item():.2e} (per pair {', '.join(f'{x:.1e}' for x in v.tolist())})"

    print(f"  |delta| / |F(x) - F(x')|, ours (auto):                     {fmt(ours)}")
    print(f"  |delta| / |F(x) - F(x')|, Captum's 51-point grid:          {fmt(grid_rel)}")
    print(f"  |delta| / |F(x) - F(x')|, Captum IntegratedGradients' own: {fmt(own)}")
    print(
        f"  Captum's grid reaches {tol:.0%} on {int((grid_rel < tol).sum())} / {len(batch)} pairs "
        f"({int((own < tol).sum())} / {len(batch)} by Captum's own delta)"
    )
    print(
        f"  speed-up to {tol:.0%} vs Captum per layer = {t['captum_per_layer_50'] / t['nig_auto']:.2f}x  (target >= 10x)"
    )


MEMORY_CHILD = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from _common import synthetic_pairs
from mechir_nig import HookedCrossEncoder
from mechir_nig.attribution import NeuronIntegratedGradients
ce = HookedCrossEncoder.from_pretrained({folder!r})
batch = ce.tokenize(*synthetic_pairs({pairs}, {tokens}))
def hwm():  # peak RSS of this process (VmHWM starts afresh at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
before = hwm()
NeuronIntegratedGradients(ce).attribute(batch, n_steps={steps}, internal_batch_size={window})
after = hwm()
print(json.dumps({{"before_kib": before, "peak_kib": after}}))
"""


def section_memory(args):
    folder = minilm_cross_encoder_dir()
    window = args.window or max(1, 8192 // args.tokens)
    out = {}
    for steps in (16, 256):
        code = MEMORY_CHILD.format(
            bench=os.path.dirname(os.path.abspath(__file__)),
            folder=str(folder),
            pairs=args.pairs,
            tokens=args.tokens,
            steps=steps,
            window=window,
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[steps] = json.loads(res.stdout.strip().splitlines()[-1])
    p16, p256 = out[16]["peak_kib"], out[256]["peak_kib"]
    print(f"Peak RSS, {args.pairs} pairs x {args.tokens} tokens, internal_batch_size={window}:")
    for s, r in out.items():
        print(
            f"  n_steps={s:4d}: peak {r['peak_kib'] / 1024:8.1f} MiB (after loading: {r['before_kib'] / 1024:.1f} MiB)"
        )
    b16, b256 = out[16]["before_kib"], out[256]["before_kib"]
    print(f"  ratio peak(256) / peak(16) = {p256 / p16:.3f}  (target <= 1.2)")
    print(f"  ratio of the growth above the loaded model = {(p256 - b256) / (p16 - b16):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--window", type=int, default=None, help="internal_batch_size (default 8192 // tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--large-pairs", type=int, default=1)
    ap.add_argument("--large-tokens", type=int, default=32)
    ap.add_argument("--large-steps", type=int, default=4)
    ap.add_argument("--sections", default="floor,captum,loop,large,memory,tolerance")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if sections & {"floor", "captum", "loop"}:
        section_minilm(args, sections)
    if "large" in sections:
        section_large(args)
    if "memory" in sections:
        section_memory(args)
    if "tolerance" in sections:
        section_tolerance(args)


if __name__ == "__main__":
    main()
