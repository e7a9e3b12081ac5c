"""Compatibility module: the data layer before it was split (kept so that old imports work).

Everything here is re-exported from its new home: the parsers from :mod:`mechir_nig.data.formats`
(``trec``, ``tsv``, ``jsonl``, ``run``), :class:`Collection` from :mod:`mechir_nig.data.collection`,
:func:`load_collection` from :mod:`mechir_nig.data.sources`, and :class:`DataWarning` from
:mod:`mechir_nig.errors`. New code should import from :mod:`mechir_nig.data`.

Example:
    >>> from mechir_nig.data.collections import load_collection  # still works
    >>> load_collection("embedded").name
    'embedded'
"""

from __future__ import annotations

from mechir_nig.data.collection import Collection, LazyDocs, Run, _select_query_ids, select_query_ids
from mechir_nig.data.formats import (
    TOPIC_FIELDS,
    PathLike,
    read_jsonl,
    read_trec_docs,
    read_trec_qrels,
    read_trec_run,
    read_trec_topics,
    read_tsv,
)
from mechir_nig.data.sources import load_collection
from mechir_nig.errors import DataWarning

_TOPIC_FIELDS = TOPIC_FIELDS

__all__ = [
    "Collection",
    "DataWarning",
    "LazyDocs",
    "PathLike",
    "Run",
    "_select_query_ids",
    "load_collection",
    "read_jsonl",
    "read_trec_docs",
    "read_trec_qrels",
    "read_trec_run",
    "read_trec_topics",
    "read_tsv",
    "select_query_ids",
]
