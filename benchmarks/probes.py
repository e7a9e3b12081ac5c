"""Probes and embedding directions on Vaswani with the all-MiniLM-L6-v2 bi-encoder (document side).

Usage: ``python benchmarks/probes.py [--collection ../shared/data/vaswani] [--queries 60] [--k 10]``

1. IR features (``mechir_nig.analysis.ir_features``) of one relevant and one BM25 non-relevant document
   per query; ridge probes (5 folds held out by document, shuffled-label control) of each document token's
   ``tf``, ``query_tf`` and ``idf`` from ``resid_pre`` of layer 0 (the embeddings after their LayerNorm)
   and ``resid_post`` of every layer.
2. ``embedding_directions``: the SVD of the centred token embedding matrix and the correlation of the top
   ``--k`` components' loadings with token IDF over the collection (bootstrap intervals over tokens).
3. ``idf_edit``: the score change when each query term's word embedding moves by ``±alpha`` (one standard
   deviation of the tokens' loadings on it) along the IDF direction, against a random unit direction.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    default = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "vaswani")
    ap.add_argument("--collection", default=default if os.path.isdir(default) else "embedded")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()

    import torch

    from mechir_nig import load_model
    from mechir_nig.analysis import collection_statistics, embedding_directions, idf_edit, ir_features, probe
    from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
    from mechir_nig.statistics import bootstrap_ci

    torch.manual_seed(0)
    t0 = time.perf_counter()
    col = load_collection(args.collection)
    be = load_model("all-MiniLM-L6-v2")
    qids = sorted(col.queries)[: args.queries]
    pairs = judged_pairs(
        col,
        max_relevant_per_query=1,
        max_nonrelevant_per_query=1,
        candidates=bm25_candidates(col, k=20, query_ids=qids),
        sample_nonrelevant_from_candidates=True,
        query_ids=qids,
    )
    stats = collection_statistics(col)
    feats = ir_features(be, stats, pairs)
    print(
        f"{col.name}: {len(pairs)} pairs of {len(set(feats.keys))} queries, {int(feats.mask.sum())} document "
        f"tokens in words; N = {stats.n_docs}, avgdl = {stats.avgdl:.1f} ({time.perf_counter() - t0:.1f} s)"
    )
    for name in ("tf", "query_tf", "idf"):
        t = time.perf_counter()
        res = probe(be, pairs, name, features=feats, sites=["resid_pre", "resid_post"], folds=5, seed=0)
        print(f"\n## ridge probe of per-token {name} ({res.n_rows} tokens, {time.perf_counter() - t:.1f} s)")
        keep = [r for r in res.table() if r["site"] == "resid_post" or r["layer"] == 0]
        print("| site | layer | R² (pooled) | fold mean ± std | shuffled control |\n|---|---|---|---|---|")
        for r in keep:
            print(
                f"| {r['site']} | {r['layer']} | {r['r2']:.3f} | {r['fold_mean']:.3f} ± {r['fold_std']:.3f} "
                f"| {r['control']:.3f} |"
            )

    t = time.perf_counter()
    dirs = embedding_directions(be, col, k=args.k, n_resamples=args.resamples)
    print(
        f"\n## embedding directions ({len(dirs.token_ids)} tokens present, {time.perf_counter() - t:.1f} s)"
    )
    print(dirs.to_markdown())
    terms = embedding_directions(be, col, k=args.k, idf="terms", n_resamples=args.resamples)
    print(
        f"IDF of whole-word tokens' terms ({len(terms.token_ids)} tokens): best component {terms.idf_component}, "
        f"Pearson {terms.pearson[terms.idf_component][0]:.3f}, Spearman {terms.spearman[terms.idf_component][0]:.3f}"
    )

    u = dirs.idf_direction
    alpha = float(dirs.loadings[:, dirs.idf_component].std())
    rand = torch.randn(u.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    print(f"\n## idf_edit along component {dirs.idf_component} (alpha = {alpha:.3f}, 1 std of the loadings)")
    print("| direction | alpha | mean score change [95% CI] | pairs with a higher score |\n|---|---|---|---|")
    for label, d in (("IDF direction", u), ("random direction", rand)):
        for a in (alpha, -alpha):
            delta = idf_edit(be, pairs, d, a)
            low, high = bootstrap_ci(delta.numpy(), seed=0)
            print(
                f"| {label} | {a:+.3f} | {float(delta.mean()):+.4f} [{low:+.4f}, {high:+.4f}] | "
                f"{int((delta > 0).sum())}/{len(delta)} |"
            )
    print(f"\ntotal {time.perf_counter() - t0:.1f} s (one run's wall time, not a benchmark figure)")


if __name__ == "__main__":
    main()
