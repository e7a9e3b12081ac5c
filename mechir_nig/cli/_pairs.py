"""Pairs for the commands that study a few (query, document) pairs: ``patch`` and ``faithfulness``."""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from mechir_nig.cli._common import positive_int


class Pair(NamedTuple):
    query_id: str
    doc_id: str
    query: str
    doc: str


def add_pair_options(g: Any, *, max_pairs: int = 4) -> None:
    """``--pairs``, ``--per-query``, ``--k``, ``--max-pairs``, ``--seed``."""
    g.add_argument(
        "--pairs",
        choices=("judged", "bm25"),
        default="judged",
        help="'judged': relevant documents from the qrels; 'bm25': each query's BM25 top documents",
    )
    g.add_argument("--per-query", type=positive_int, default=1, help="pairs taken per query")
    g.add_argument("--k", type=positive_int, default=10, help="BM25 depth for --pairs bm25")
    g.add_argument(
        "--max-pairs", type=positive_int, default=max_pairs, help="pairs studied (the first ones usable)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling of judged pairs")


def candidate_pairs(col: Any, args: argparse.Namespace) -> list[Pair]:
    """Every candidate pair in collection order (queries in order, ``--per-query`` pairs each)."""
    if args.pairs == "judged":
        from mechir_nig.data import judged_pairs

        pairs = judged_pairs(
            col, max_relevant_per_query=args.per_query, max_nonrelevant_per_query=0, seed=args.seed
        )
        return [Pair(p.query_id, p.doc_id, p.query, p.doc) for p in pairs]
    from mechir_nig.data import bm25_candidates

    run = bm25_candidates(col, k=max(args.k, args.per_query))
    chosen = [(q, d) for q, ranked in run.items() for d in list(ranked)[: args.per_query]]
    docs = col.get_docs(d for _, d in chosen)
    return [Pair(q, d, col.queries[q], docs[d]) for q, d in chosen if d in docs]
