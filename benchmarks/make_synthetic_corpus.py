"""Write a synthetic MS MARCO-sized TSV collection for the streaming benchmark (not committed).

Usage: ``python benchmarks/make_synthetic_corpus.py [FOLDER] [--docs 2000000] [--words 60] [--queries 1000]
[--judged 10] [--relevant 3] [--run-depth 100] [--seed 0] [--force]``

FOLDER (default ``/tmp/mechir_nig_synthetic/docs_<N>``) receives ``docs.tsv`` (``D<i><TAB>text``, about
``--words`` random words of a Zipf-distributed 20,000-word vocabulary; 2M documents of 60 words are
~0.85 GB), ``queries.tsv``, ``qrels.txt`` (``--judged`` documents per query drawn from the whole corpus,
``--relevant`` of them graded 1: 1,000 queries x 10 = 10,000 judged pairs) and ``run.txt`` (a TREC run
of ``--run-depth`` results per query), written by :func:`mechir_nig.testing.make_synthetic_collection`,
plus ``meta.json`` with the arguments: a folder whose ``meta.json`` matches is reused (``--force``
rewrites it). Load it with ``load_collection(FOLDER, lazy=True)``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("/tmp/mechir_nig_synthetic")


def ensure_corpus(
    folder: str | Path,
    n_docs: int,
    *,
    words: int = 60,
    queries: int = 1000,
    judged: int = 10,
    relevant: int = 3,
    run_depth: int = 100,
    seed: int = 0,
    force: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """The folder's ``meta.json`` record, writing the collection first unless it is there already."""
    from mechir_nig.testing import make_synthetic_collection

    folder = Path(folder)
    params = {
        "docs": n_docs,
        "words": words,
        "queries": queries,
        "judged": judged,
        "relevant": relevant,
        "run_depth": run_depth,
        "seed": seed,
    }
    meta_path = folder / "meta.json"
    if not force and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and (folder / "docs.tsv").is_file():
            return meta
    if verbose:
        print(f"writing {n_docs:,} documents of ~{words} words to {folder} ...", flush=True)
    t0 = time.perf_counter()
    info = make_synthetic_collection(
        folder,
        n_docs,
        n_queries=queries,
        judged_per_query=judged,
        relevant_per_query=relevant,
        words_per_doc=words,
        run_depth=run_depth,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    meta = {
        "params": params,
        "docs_bytes": info["docs_bytes"],
        "judged": info["judged"],
        "run_lines": info["run_lines"],
        "seconds": round(seconds, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    if verbose:
        print(f"  {info['docs_bytes'] / 2**20:,.0f} MiB of documents in {seconds:.0f} s", flush=True)
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "folder", nargs="?", default=None, help="output folder (default /tmp/mechir_nig_synthetic/docs_N)"
    )
    ap.add_argument("--docs", type=int, default=2_000_000)
    ap.add_argument("--words", type=int, default=60, help="mean words per document")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--judged", type=int, default=10, help="judged documents per query")
    ap.add_argument("--relevant", type=int, default=3, help="of which graded relevant")
    ap.add_argument("--run-depth", type=int, default=100, help="results per query in run.txt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite even when meta.json matches")
    args = ap.parse_args()
    folder = Path(args.folder) if args.folder else DEFAULT_ROOT / f"docs_{args.docs}"
    meta = ensure_corpus(
        folder,
        args.docs,
        words=args.words,
        queries=args.queries,
        judged=args.judged,
        relevant=args.relevant,
        run_depth=args.run_depth,
        seed=args.seed,
        force=args.force,
    )
    print(json.dumps({"folder": str(folder), **meta}, indent=1))


if __name__ == "__main__":
    main()
