"""Test collections, judged pairs and first-stage candidates.

``load_collection`` reads ir_datasets ids, local TREC/TSV/JSONL files or the embedded collection;
``judged_pairs`` turns qrels into (query, document, label) records for attribution; ``bm25_candidates``,
``scoreddocs_candidates`` and ``read_trec_run`` give first-stage runs to re-rank. ir_datasets,
ir_measures and bm25s are imported only when a function needs them.
"""

from mechir_nig.data.candidates import BM25Index, bm25_candidates, scoreddocs_candidates
from mechir_nig.data.collections import (
    Collection,
    DataWarning,
    load_collection,
    read_jsonl,
    read_trec_docs,
    read_trec_qrels,
    read_trec_run,
    read_trec_topics,
    read_tsv,
)
from mechir_nig.data.pairs import JudgedPair, JudgedPairs, judged_pairs
from mechir_nig.errors import DataError

__all__ = [
    "BM25Index",
    "Collection",
    "DataError",
    "DataWarning",
    "JudgedPair",
    "JudgedPairs",
    "bm25_candidates",
    "judged_pairs",
    "load_collection",
    "read_jsonl",
    "read_trec_docs",
    "read_trec_qrels",
    "read_trec_run",
    "read_trec_topics",
    "read_tsv",
    "scoreddocs_candidates",
]
