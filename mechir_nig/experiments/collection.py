"""Collection studies: BM25 vs neural re-ranking, and split-half stability of NIG neuron rankings.

``split_half_stability`` follows the paper's question "are the relevance neurons a property of the model
or of the queries?": the queries are split into two disjoint halves (seeded), the relevant pairs of each
half are attributed, and the top-``fraction`` neuron sets of the two halves are compared (Jaccard) with
the overlap expected of random sets of the same sizes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from mechir_nig.errors import InputError


def rerank_study(
    model: Any,
    collection: Any,
    *,
    k: int = 100,
    measures: tuple[str, ...] = ("nDCG@10", "RR@10"),
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """BM25 top-``k`` and the model re-ranking it, evaluated with ir_measures on the collection's qrels."""
    from mechir_nig.data import bm25_candidates
    from mechir_nig.evaluation import evaluate, rerank

    t0 = time.perf_counter()
    bm25 = bm25_candidates(collection, k=k)
    t1 = time.perf_counter()
    reranked = rerank(model, collection, bm25, batch_size=batch_size, progress=progress)
    t2 = time.perf_counter()
    qrels = collection.qrels
    return {
        "collection": collection.name,
        "queries": len(bm25),
        "k": k,
        "bm25": dict(evaluate(bm25, qrels, measures)),
        "reranked": dict(evaluate(reranked, qrels, measures)),
        "seconds": {"bm25": round(t1 - t0, 2), "rerank": round(t2 - t1, 2)},
    }


def split_half_stability(
    model: Any,
    collection: Any,
    *,
    fraction: float = 0.01,
    max_relevant_per_query: int = 3,
    n_steps: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Overlap of the top-``fraction`` relevant-label neuron sets of two disjoint query halves."""
    from mechir_nig.attribution.neurons import overlap_report, select_top
    from mechir_nig.data import judged_pairs
    from mechir_nig.experiments.attribute import attribute_collection

    qids = sorted(
        {q.query_id for q in collection.qrels if q.relevance > 0 and q.query_id in collection.queries}
    )
    if len(qids) < 2:
        raise InputError("the collection needs at least two queries with relevant documents")
    random.Random(seed).shuffle(qids)
    halves = [sorted(qids[: len(qids) // 2]), sorted(qids[len(qids) // 2 :])]
    out: dict[str, Any] = {"fraction": fraction, "n_steps": n_steps, "seed": seed, "halves": []}
    sets = []
    for h, ids in enumerate(halves):
        pairs = judged_pairs(
            collection,
            query_ids=ids,
            max_relevant_per_query=max_relevant_per_query,
            max_nonrelevant_per_query=0,
            seed=seed,
        )
        t0 = time.perf_counter()
        ckpt = Path(checkpoint_dir) / f"half{h}.ckpt" if checkpoint_dir is not None else None
        stats = attribute_collection(
            model,
            pairs,
            n_steps=n_steps,
            batch_size=batch_size,
            checkpoint=ckpt,
            resume=ckpt is not None,
            progress=progress,
            collection=collection.name,
        )
        secs = time.perf_counter() - t0
        top = select_top(stats.scheme_scores("relevant"), fraction=fraction, name=f"half{h}")
        sets.append(top)
        out["halves"].append(
            {
                "queries": len(ids),
                "pairs": stats.counts["relevant"],
                "seconds": round(secs, 1),
                "set_size": len(top),
            }
        )
    out["overlap"] = overlap_report(sets[0], sets[1])
    out["layer_profiles"] = [s.layer_profile() for s in sets]
    return out
