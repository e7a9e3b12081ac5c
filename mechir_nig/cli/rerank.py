"""``mechir-nig rerank``: BM25 top-k and the model re-ranking it (nDCG@10, RR@10), into ``OUT/rerank.json``."""

from __future__ import annotations

import argparse
from typing import Any

from mechir_nig.cli._common import Session, add_common, positive_int, str_list

EPILOG = """example:
  mechir-nig rerank --model cross-encoder/ms-marco-MiniLM-L-6-v2 --collection irds:vaswani --k 100 --out vaswani"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rerank",
        help="BM25 top-k and the model re-ranking it, evaluated on the qrels",
        description="Retrieve the BM25 top --k of every query, re-rank it with the model and evaluate both "
        "runs with ir_measures on the collection's qrels. Writes OUT/rerank.json.",
        epilog=EPILOG,
    )
    add_common(p)
    g = p.add_argument_group("re-ranking")
    g.add_argument("--k", type=positive_int, default=100, help="BM25 depth re-ranked per query")
    g.add_argument("--measures", type=str_list, default=["nDCG@10", "RR@10"], help="ir_measures names")
    g.add_argument("--batch-size", type=positive_int, default=64, help="texts or pairs per forward")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    from mechir_nig.evaluation import _parse_measures
    from mechir_nig.experiments import rerank_study

    _parse_measures(args.measures)  # unknown names fail before any work
    col = s.collection()
    model = s.model()
    with s.stage("rerank"):
        study = rerank_study(
            model,
            col,
            k=args.k,
            measures=tuple(args.measures),
            batch_size=args.batch_size,
            progress=s.progress and s.main,
        )
    out = s.path("rerank")
    from mechir_nig.cli._common import write_json

    if s.main:  # rerank_study() shards the queries and gathers the run on every rank
        write_json(out, study)
    s.wrote(out)
    for name in ("bm25", "reranked"):
        cells = ", ".join(f"{m} {v:.4f}" for m, v in study[name].items())
        s.say(f"{name:9s} top-{args.k} of {study['queries']} queries: {cells}")
    s.say(f"wrote {out}")
    s.record(summary={"bm25": study["bm25"], "reranked": study["reranked"]})
    return study
