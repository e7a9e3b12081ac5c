"""Which heads' paths into the score carry the TFC1 effect: path patching on Vaswani with the real
all-MiniLM-L6-v2 bi-encoder (a results script, not a timing benchmark).

Usage: ``python benchmarks/path_patching.py [--pairs 8] [--max-words 64] [--top 5]``

Pairs: Vaswani queries with their first relevant document (``benchmarks/_common.vaswani_pairs``: the
embedded collection where ``../shared/data/vaswani`` is missing), documents cut to ``--max-words`` words,
perturbed by TFC1 (the query's first term injected into the document, ``perturb.tfc1``). Model:
``load_model("all-MiniLM-L6-v2")`` (mean pooling, cosine); the document side is patched, the query
embeddings fixed. Every head is a sender (``path_patch_heads_to_score``), ``direction="denoise"`` (the
perturbed run, the clean head written in), ``metric="raw"`` (score change, so pairs whose score barely
moves do not divide by a small change): ``score`` = every path (the ordinary head patch),
``score_direct`` = the head's direct path into the score, every later head and MLP frozen. For the
``--top`` heads by ``|mean|`` the 95 % percentile bootstrap interval over pairs
(``mechir_nig.statistics.bootstrap_ci``). Then the head with the largest total effect (before the last
layer) is followed: its paths into the queries, keys and values of each later layer's heads and into
the MLPs. Last, as in "Pathway to Relevance", the ``--receivers`` heads with the largest |mean| direct
effect (``top_direct_heads``) receive: every earlier head path-patched into their queries, keys and
values (``path_patch_into_heads``), the ``--top`` senders per receiver input with their intervals.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(__file__))
from _common import vaswani_pairs  # noqa: E402

from mechir_nig import load_model  # noqa: E402
from mechir_nig.interventions import perturb  # noqa: E402
from mechir_nig.interventions.path_patching import (  # noqa: E402
    path_patch,
    path_patch_heads_to_score,
    path_patch_into_heads,
)
from mechir_nig.sets import ComponentSet  # noqa: E402
from mechir_nig.statistics import bootstrap_ci  # noqa: E402


def effect(per_pair: Tensor, delta: Tensor) -> str:
    """``mean [95 % bootstrap CI over pairs] (share of the mean clean - perturbed change)``."""
    per_pair = per_pair.double()
    lo, hi = bootstrap_ci(per_pair.numpy())
    m = float(per_pair.mean())
    return f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] ({m / float(delta.mean()):+.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--max-words", type=int, default=64)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--receivers", type=int, default=2, help="receiver heads of the last analysis")
    args = ap.parse_args()
    queries, docs, name = vaswani_pairs(args.pairs, args.max_words)
    be = load_model("all-MiniLM-L6-v2")
    al = perturb.align(be, queries, docs, perturb.tfc1)
    t0 = time.perf_counter()
    res = path_patch_heads_to_score(be, al, metric="raw")
    seconds = time.perf_counter() - t0
    total = res["score"]
    delta = total.clean_scores - total.corrupted_scores
    lo, hi = bootstrap_ci(delta.double().numpy())
    print(
        f"{len(queries)} pairs of {name}, all-MiniLM-L6-v2 bi-encoder, TFC1; clean - perturbed score: mean "
        f"{delta.mean():+.4f} (95% CI {lo:+.4f} .. {hi:+.4f}); path patching of every head "
        f"({be.cfg.n_layers} x {be.cfg.n_heads}) into the score ({seconds:.1f} s on {be.device}: one run's wall time, not a benchmark figure)"
    )
    n_heads = be.cfg.n_heads
    top: list[int] = []
    for key in ("score", "score_direct"):
        v = res[key]["heads"].double()  # [batch, layer, n_heads]: patched - perturbed score
        print(f"\n{key}: patched - perturbed score per head, mean over pairs (layer rows, head columns)")
        for layer in range(be.cfg.n_layers):
            print(f"  L{layer} " + " ".join(f"{x:+.4f}" for x in v.mean(0)[layer].tolist()))
        top += [i for i in v.mean(0).flatten().abs().topk(args.top).indices.tolist() if i not in top]
    print(
        f"\nthe top {args.top} heads by |mean| of either: mean patched - perturbed score [95% bootstrap CI "
        "over pairs] (share of clean - perturbed)"
    )
    for i in top:
        layer, head = divmod(i, n_heads)
        cells = []
        for key in ("score", "score_direct"):
            cells.append(f"{key} {effect(res[key]['heads'][:, layer, head], delta)}")
        print(f"  L{layer}H{head}: " + "   ".join(cells))
    d, t = res["score_direct"]["heads"].double(), res["score"]["heads"].double()
    corr = torch.corrcoef(torch.stack([d.mean(0).flatten(), t.mean(0).flatten()]))[0, 1]
    print(f"\nPearson correlation of the per-head means, direct vs total: {corr:.3f}")
    follow(be, al, t.mean(0), delta)
    into_heads(be, al, res["score_direct"], delta, args.receivers, args.top)


def follow(be: Any, al: Any, total: Tensor, delta: Tensor) -> None:
    """Where the head with the largest total effect sends it: its paths into the queries, keys and values
    of every later layer's heads and into the MLPs of its layer and the later ones (one sender)."""
    n_layers, n_heads = be.cfg.n_layers, be.cfg.n_heads
    layer, head = divmod(int(total[:-1].flatten().abs().argmax()), n_heads)  # a head before the last layer
    sender = ComponentSet([(layer, head)], kind="head", n_layers=n_layers, width=n_heads)
    receivers: list[Any] = [(x, m) for m in range(layer + 1, n_layers) for x in ("q", "k", "v")]
    receivers += [("mlp", m) for m in range(layer, n_layers)] + ["score_direct", "score"]
    res = path_patch(be, al, senders=sender, receivers=receivers, metric="raw")
    print(
        f"\npaths of L{layer}H{head} (patched - perturbed score, mean over pairs, 95% bootstrap CI, share):"
    )
    for key in res.receivers:
        print(f"  -> {key:12s} {effect(res[key]['head_set'][:, 0], delta)}")


def into_heads(be: Any, al: Any, direct: Any, delta: Tensor, receivers: int, top: int) -> None:
    """The earlier heads whose paths into the queries, keys and values of the top direct heads carry the
    effect (``path_patch_into_heads``, the direct-path result reused)."""
    t0 = time.perf_counter()
    res = path_patch_into_heads(be, al, receiver_heads=receivers, direct=direct, metric="raw")
    seconds = time.perf_counter() - t0
    print(
        f"\nevery earlier head into the q/k/v of the top {receivers} direct heads ({seconds:.0f} s, one run):"
    )
    for key in res.receivers:
        part = res[key]
        v = part["heads"].double()  # [batch, sender layer, n_heads]
        means = v.mean(0).flatten()
        order = means.abs().argsort(descending=True)[:top].tolist()
        cells = []
        for i in order:
            li, h = divmod(i, be.cfg.n_heads)
            cells.append(f"L{part.layers[li]}H{h} {effect(v[:, li, h], delta)}")
        print(f"  -> {key:8s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
