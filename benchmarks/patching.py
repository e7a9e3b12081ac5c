"""Activation patching speed: ``patch`` vs a naive MechIR-style loop, measured side by side in one run.

Usage: ``python benchmarks/patching.py [--pairs 8] [--min-tokens 100] [--tokens 128] [--repeats 2]``

A TFC1 perturbation (a query term injected at the start of the document) of ``--pairs`` pairs of
``--min-tokens``..``--tokens`` word pieces, aligned with ``perturb.align``, on the MiniLM cross-encoder
body (all-MiniLM-L6-v2 under a seeded head). Direction ``denoise`` (run corrupted, patch in clean).

Sections:
  resid  (layer x position) sweep of ``blocks.{l}.hook_resid_pre``. Naive: MechIR 0.2.0's scheme, one
         patched (layer, position) per forward of the whole batch (n_layers x n_positions full forwards
         of the HF ``BertForSequenceClassification``, hooks on the HF modules). Targets: ours >= 3x faster,
         ours <= 0.4 x n_layers x n_positions plain forwards of the same batch.
  heads  (layer x head) sweep of ``attn.hook_z``. Naive: one head per forward of the batch (hook on the HF
         ``BertSelfAttention`` output, the per-head context before the output projection).
Both print the largest difference between our values and the naive loop's (they must agree).
  forward  one plain forward of the batch: ours vs the HF eager model (the unit of the naive loop).
  vaswani  a TFC1 patching summary on Vaswani with the real all-MiniLM-L6-v2 bi-encoder (document side
           patched, query embedding fixed): ``--vaswani-pairs`` queries, each with its first relevant
           document (qrels order), the query's first term injected at the end; denoise recovery per layer
           and token group (cls / doc / injected term / sep) and per (layer, head).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved_times, minilm_cross_encoder_dir, synthetic_pairs  # noqa: E402

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.interventions import perturb  # noqa: E402
from mechir_nig.interventions.patching import patch  # noqa: E402


def hf_inputs(batch):
    return {
        "input_ids": batch.input_ids,
        "token_type_ids": batch.token_type_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
    }


def _out0(out):
    return out[0] if isinstance(out, tuple) else out


def _with0(out, new):
    return (new, *out[1:]) if isinstance(out, tuple) else new


@torch.no_grad()
def naive_resid(hf, base, source, positions=None):
    """One (layer, position) patched per full forward of the batch (MechIR 0.2.0's loop); ``positions``:
    only these (a sample, to extrapolate the time of the full loop from)."""
    src = hf(**hf_inputs(source), output_hidden_states=True).hidden_states  # resid_pre of block l = [l]
    n_layers = hf.config.num_hidden_layers
    n_pos = base.input_ids.shape[1]
    mods = [hf.bert.embeddings, *hf.bert.encoder.layer[: n_layers - 1]]  # outputs = resid_pre of block l
    out = torch.full((len(base), n_layers, n_pos), float("nan"))
    for layer in range(n_layers):
        for p in range(n_pos) if positions is None else positions:

            def hook(mod, inp, o, layer=layer, p=p):
                h = _out0(o).clone()
                h[:, p] = src[layer][:, p]
                return _with0(o, h)

            handle = mods[layer].register_forward_hook(hook)
            try:
                out[:, layer, p] = hf(**hf_inputs(base)).logits[:, 0]
            finally:
                handle.remove()
    return out


@torch.no_grad()
def naive_heads(hf, base, source):
    """One (layer, head) patched per full forward of the batch."""
    cfg = hf.config
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    d_head = cfg.hidden_size // n_heads
    ctx: dict[int, torch.Tensor] = {}
    handles = [
        hf.bert.encoder.layer[i].attention.self.register_forward_hook(
            lambda m, a, o, i=i: ctx.__setitem__(i, _out0(o).clone())
        )
        for i in range(n_layers)
    ]
    try:
        hf(**hf_inputs(source))
    finally:
        for h in handles:
            h.remove()
    out = torch.empty(len(base), n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            sl = slice(head * d_head, (head + 1) * d_head)

            def hook(mod, inp, o, layer=layer, sl=sl):
                c = _out0(o).clone()
                c[..., sl] = ctx[layer][..., sl]
                return _with0(o, c)

            handle = hf.bert.encoder.layer[layer].attention.self.register_forward_hook(hook)
            try:
                out[:, layer, head] = hf(**hf_inputs(base)).logits[:, 0]
            finally:
                handle.remove()
    return out


def pairs(n: int, lo: int, hi: int) -> tuple[list[str], list[str]]:
    queries, docs = synthetic_pairs(n, hi)
    lengths = torch.linspace(lo, hi, n).round().long().tolist()
    return queries, [" ".join(d.split()[: length - 9]) for d, length in zip(docs, lengths, strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--min-tokens", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--where", default="end", help="where TFC1 injects the term: start, middle or end")
    ap.add_argument("--sections", default="forward,resid,heads")
    ap.add_argument("--vaswani-pairs", type=int, default=32)
    ap.add_argument(
        "--naive-positions",
        type=int,
        default=0,
        help="run the naive resid loop on this many evenly spaced positions only and extrapolate its time "
        "to all positions (every naive forward costs the same); 0 = all positions",
    )
    args = ap.parse_args()
    if args.sections == "vaswani":
        vaswani_summary(args.vaswani_pairs)
        return
    from transformers import BertForSequenceClassification

    folder = minilm_cross_encoder_dir()
    ce = HookedCrossEncoder.from_pretrained(folder)
    hf = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    queries, docs = pairs(args.pairs, args.min_tokens, args.tokens)
    al = perturb.align(ce, queries, docs, lambda q, d: perturb.tfc1(q, d, where=args.where))
    base, source = al.perturbed, al.clean
    n_layers, n_heads = ce.cfg.n_layers, ce.cfg.n_heads
    n_pos = base.input_ids.shape[1]
    print(
        f"device=cpu threads={torch.get_num_threads()} pairs={len(al)} aligned positions={n_pos} "
        f"spans={base.lengths.tolist()} layers={n_layers} heads={n_heads}"
    )
    with torch.no_grad():
        fwd = interleaved_times({"forward": lambda: ce(base)}, repeats=15, warmup=3)["forward"]
    print(f"plain forward of the batch: {fwd * 1e3:.1f} ms")
    sample = None
    if args.naive_positions:
        sample = torch.linspace(0, n_pos - 1, args.naive_positions).round().long().unique().tolist()
    for section in args.sections.split(","):
        results: dict[str, torch.Tensor] = {}
        if section == "vaswani":
            vaswani_summary(args.vaswani_pairs)
            continue
        if section == "forward":
            with torch.no_grad():
                t = interleaved_times(
                    {"ours": lambda: ce(base), "hf": lambda: hf(**hf_inputs(base))}, repeats=15, warmup=3
                )
            print(f"[forward] ours {t['ours'] * 1e3:.1f} ms, HF eager {t['hf'] * 1e3:.1f} ms")
            continue
        if section == "resid":
            scale = 1.0 if sample is None else n_pos / len(sample)

            def ours_fn(results=results):
                results["ours"] = patch(ce, al, sites="resid_pre", metric="raw").patched["resid_pre"]

            def naive_fn(results=results):
                results["naive"] = naive_resid(hf, base, source, sample)

            units, what = n_layers * n_pos, "positions"
        elif section == "heads":
            scale = 1.0

            def ours_fn(results=results):
                results["ours"] = patch(ce, al, sites="heads", metric="raw").patched["heads"]

            def naive_fn(results=results):
                results["naive"] = naive_heads(hf, base, source)

            units, what = n_layers * n_heads, "heads"
        else:
            raise SystemExit(f"unknown section {section!r}")
        t = interleaved_times({"ours": ours_fn, "naive": naive_fn}, repeats=args.repeats, warmup=0)
        naive_t = t["naive"] * scale
        ran = ~results["naive"].isnan()
        diff = (results["ours"][ran] - results["naive"][ran]).abs().max().item()
        note = "" if scale == 1.0 else f" (extrapolated from {len(sample)} of {n_pos} positions)"
        print(
            f"[{section}] ours {t['ours']:.2f} s, naive {naive_t:.2f} s{note} = {units} forwards of the batch: "
            f"ratio {naive_t / t['ours']:.2f}x; ours = {t['ours'] / fwd:.0f} plain forwards = "
            f"{t['ours'] / fwd / units:.3f} x n_layers x n_{what}; naive = {naive_t / fwd / units:.3f} x; "
            f"max |ours - naive| = {diff:.2e}"
        )


def vaswani_summary(n_pairs: int) -> None:
    """TFC1 (first query term appended) on Vaswani with the real all-MiniLM-L6-v2 bi-encoder."""
    from mechir_nig import HookedBiEncoder
    from mechir_nig.data import load_collection
    from mechir_nig.models.tokenization import CLS, DOC, SEP
    from mechir_nig.testing import minilm_path

    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vaswani")
    col = load_collection(shared)
    be = HookedBiEncoder.from_pretrained(minilm_path())
    first: dict[str, str] = {}
    for qrel in col.qrels:
        if (
            qrel.relevance > 0
            and qrel.query_id not in first
            and perturb.query_terms(col.queries[qrel.query_id])
        ):
            first[qrel.query_id] = qrel.doc_id
    qids = list(first)[:n_pairs]
    docs_by_id = col.get_docs(first[q] for q in qids)
    queries = [col.queries[q] for q in qids]
    docs = [docs_by_id[first[q]] for q in qids]
    al = perturb.align(be, queries, docs, perturb.tfc1)
    res = patch(be, al, sites=["resid_pre", "heads"])
    delta = res.clean_scores - res.corrupted_scores
    print(
        f"[vaswani] {len(qids)} pairs, all-MiniLM-L6-v2 bi-encoder (cosine, mean pooling), TFC1 = first query "
        f"term appended; clean - perturbed score: mean {delta.mean():+.4f} (min {delta.min():+.4f}, max "
        f"{delta.max():+.4f}); denoise recovery (run perturbed, patch in clean), NaN-free pairs averaged"
    )
    v = res["resid_pre"]  # [batch, layer, pos]
    mask = res.base_mask.bool()
    inj = al.injected.cpu()
    groups = {
        "cls": (res.groups == CLS) & mask,
        "doc": (res.groups == DOC) & mask & ~inj,
        "injected": inj & mask,
        "sep": (res.groups == SEP) & mask,
    }
    print("resid_pre: recovery summed over the group's positions, mean over pairs")
    print("layer " + " ".join(f"{g:>9}" for g in groups))
    for li, layer in enumerate(res.layers):
        cells = []
        for m in groups.values():
            per_pair = torch.nansum(v[:, li] * m, -1)
            cells.append(f"{per_pair.mean():9.3f}")
        print(f"{layer:5d} " + " ".join(cells))
    h = res["heads"].nanmean(0)  # [layer, n_heads]
    print("heads: mean recovery per (layer, head)")
    for li, layer in enumerate(res.layers):
        print(f"{layer:5d} " + " ".join(f"{x:+.3f}" for x in h[li].tolist()))
    top = h.flatten().abs().topk(5).indices.tolist()
    n_heads = h.shape[1]
    print(
        "largest |head effect|: "
        + ", ".join(f"L{i // n_heads}H{i % n_heads} {h.flatten()[i]:+.3f}" for i in top)
    )


if __name__ == "__main__":
    main()
