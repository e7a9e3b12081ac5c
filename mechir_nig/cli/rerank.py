"""``mechir-nig rerank``: BM25 top-k and the model re-ranking it (nDCG@10, RR@10), into ``OUT/rerank.json``."""

from __future__ import annotations

import argparse
from typing import Any

from mechir_nig.cli._common import Session, add_command, option, write_json

EPILOG = """example:
  mechir-nig rerank --model cross-encoder/ms-marco-MiniLM-L-6-v2 --collection irds:vaswani --k 100 --out vaswani"""

HELP = "BM25 top-k and the model re-ranking it, evaluated on the qrels"
DESCRIPTION = (
    "Retrieve the BM25 top --k of every query, re-rank it with the model and evaluate both "
    "runs with ir_measures on the collection's qrels. Writes OUT/rerank.json."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "rerank", run, HELP, DESCRIPTION, EPILOG)
    g = p.add_argument_group("re-ranking")
    option(g, "--k", default=100, help="BM25 depth re-ranked per query")
    option(g, "--measures")
    option(g, "--batch-size", default=64, help="texts or pairs per forward")


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
    # rerank_study() shards the queries and gathers the run on every rank
    out = s.save("rerank", lambda path: write_json(path, study))
    for name in ("bm25", "reranked"):
        cells = ", ".join(f"{m} {v:.4f}" for m, v in study[name].items())
        s.say(f"{name:9s} top-{args.k} of {study['queries']} queries: {cells}")
    s.say(f"wrote {out}")
    s.record(summary={"bm25": study["bm25"], "reranked": study["reranked"]})
    return study
