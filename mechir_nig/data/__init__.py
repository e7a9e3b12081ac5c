"""Test collections, judged pairs and first-stage candidates.

Layout:

* :mod:`~mechir_nig.data.formats`: streaming parsers, one module per format family (``trec``: documents,
  topics, qrels; ``tsv``; ``jsonl``; ``run``), malformed lines reported with file and line;
* :mod:`~mechir_nig.data.collection`: the :class:`Collection` record (documents as a ``dict`` or a lazy
  :class:`LazyDocs` docstore, queries, qrels with an optional grade map and relevance threshold);
* :mod:`~mechir_nig.data.sources`: :func:`load_collection` from a folder, explicit files, the embedded
  set or an ``irds:`` id (ir_datasets, documents looked up lazily by id); ``lazy=True`` streams local
  corpora and runs too (memory for the documents and results asked for, not the corpus);
* :mod:`~mechir_nig.data.pairs`: :func:`judged_pairs`, labelled (query, document) pairs for attribution;
* :mod:`~mechir_nig.data.candidates`: :func:`bm25_candidates` (bm25s, batched retrieval),
  :func:`scoreddocs_candidates` (streamed, top ``k`` per query by heap), and :func:`read_trec_run` for
  runs to re-rank (``k=`` streams the file).

ir_datasets, ir_measures and bm25s are imported only when a function needs them.

Example:
    >>> from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
    >>> col = load_collection("embedded")
    >>> pairs = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1)
    >>> len(pairs), len(bm25_candidates(col, k=5))
    (30, 15)
"""

from mechir_nig.data.candidates import BM25Index, bm25_candidates, scoreddocs_candidates
from mechir_nig.data.collection import Collection, LazyDocs, Run, ScoredDocStream
from mechir_nig.data.formats import (
    iter_trec_run,
    read_jsonl,
    read_trec_docs,
    read_trec_qrels,
    read_trec_run,
    read_trec_topics,
    read_tsv,
    top_k_run,
)
from mechir_nig.data.pairs import JudgedPair, JudgedPairs, judged_pairs
from mechir_nig.data.sources import load_collection
from mechir_nig.errors import DataError, DataWarning

__all__ = [
    "BM25Index",
    "Collection",
    "DataError",
    "DataWarning",
    "JudgedPair",
    "JudgedPairs",
    "LazyDocs",
    "Run",
    "ScoredDocStream",
    "bm25_candidates",
    "iter_trec_run",
    "judged_pairs",
    "load_collection",
    "read_jsonl",
    "read_trec_docs",
    "read_trec_qrels",
    "read_trec_run",
    "read_trec_topics",
    "read_tsv",
    "scoreddocs_candidates",
    "top_k_run",
]
