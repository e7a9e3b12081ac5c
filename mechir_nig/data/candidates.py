"""First-stage candidates to re-rank: BM25 (bm25s), a collection's scoreddocs, or a TREC run file.

Every function returns a run in ir_measures' dict format, ``{query_id: {doc_id: score}}``, which
:func:`mechir_nig.evaluation.rerank` re-scores and :func:`mechir_nig.evaluation.evaluate` measures.

At MS MARCO scale (millions of passages, a top-1000 run per query) nothing here needs the corpus or the
run in memory except BM25: :func:`scoreddocs_candidates` streams a collection's scoreddocs (a
:class:`~mechir_nig.data.collection.ScoredDocStream` with ``load_collection(..., lazy=True)``) keeping
the top ``k`` per query with a heap, and :func:`read_trec_run` with ``k=`` does the same for a run file.
A BM25 index holds every document; a collection loaded with ``lazy=True`` refuses it with a DataError
that says to pass a run instead.

BM25 (Robertson & Zaragoza, 2009) uses bm25s' Lucene variant (``k1=1.5``, ``b=0.75``) over lowercased
word tokens (``\\w\\w+``) without stemming, with bm25s' English stopword list removed. The index is
built once per :class:`BM25Index` (tokenize -> index); :meth:`BM25Index.run` searches every query with
one batched ``bm25s.BM25.retrieve`` call. Results are deterministic: best score first, ties broken by
document order.

Example:
    >>> from mechir_nig.data import bm25_candidates, load_collection
    >>> col = load_collection("embedded")
    >>> run = bm25_candidates(col, k=5)
    >>> next(iter(run["q02"]))
    'd05'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mechir_nig._validate import check_int
from mechir_nig.data.collection import Collection, LazyDocs, Run, select_query_ids
from mechir_nig.data.formats.run import read_trec_run, top_k_run
from mechir_nig.errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BM25Index", "bm25_candidates", "read_trec_run", "scoreddocs_candidates", "top_k_run"]


def _check_k(k: int) -> None:
    check_int(k, "k (candidates per query)", minimum=1)


def _check_collection(collection: Any) -> None:
    if not isinstance(collection, Collection):
        raise InputError(
            f"collection must be a Collection (see load_collection), got {type(collection).__name__}"
        )


class BM25Index:
    """A BM25 index over documents, built once and searched many times.

    Building the index reads **every** document once (for a lazily loaded ir_datasets corpus this
    iterates ``docs_iter`` over the whole corpus, and the texts are held while they are tokenized). A
    collection loaded with ``lazy=True`` refuses it (a DataError): pass candidates from a run instead.

    Args:
        docs: ``{doc_id: text}`` or a :class:`~mechir_nig.data.Collection` (its ``docs``).
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        stopwords: ``"en"`` (bm25s' English list), a list of words, or ``None`` to keep every word.

    Raises:
        InputError: for an empty ``docs``, ``k1 < 0`` or ``b`` outside ``[0, 1]``.
        DataError: for documents loaded with ``lazy=True`` (they are not to be held in memory).

    Example:
        >>> index = BM25Index({"d1": "cats purr when content", "d2": "dogs bark at strangers"})
        >>> index.search("why do cats purr", k=1)  # doctest: +ELLIPSIS
        {'d1': ...}
        >>> index.run({"q1": "dogs", "q2": "cats"}, k=1)  # doctest: +ELLIPSIS
        {'q1': {'d2': ...}, 'q2': {'d1': ...}}
    """

    def __init__(
        self,
        docs: Mapping | Collection,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | list[str] | None = "en",
    ) -> None:
        import bm25s
        from bm25s.tokenization import Tokenizer

        texts = docs.docs if isinstance(docs, Collection) else docs
        if isinstance(texts, LazyDocs):
            texts.require_in_memory("a BM25 index")
        if not isinstance(texts, Mapping) or not texts:
            raise InputError("docs must be a non-empty dict {doc_id: text} or a Collection")
        if k1 < 0 or not 0 <= b <= 1:
            raise InputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.doc_ids: list[str] = []
        bodies: list[str] = []
        for doc_id, text in texts.items():  # one pass, also over a lazy corpus
            self.doc_ids.append(doc_id)
            bodies.append(text)
        self._tokenizer = Tokenizer(lower=True, stopwords=stopwords or [], stemmer=None)
        corpus = self._tokenizer.tokenize(bodies, update_vocab=True, return_as="tuple", show_progress=False)
        del bodies
        self._empty_id = self._tokenizer.word_to_id.get("")
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(corpus, show_progress=False)

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Vocabulary ids of each text's known terms (unknown words and stopwords dropped)."""
        tokenized = self._tokenizer.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
        return [[i for i in ids if i != self._empty_id] for ids in tokenized]

    def scores(self, query: str) -> np.ndarray:
        """BM25 scores of every document (in ``doc_ids`` order) for ``query``; all zero without known terms."""
        import numpy as np

        ids = self._token_ids([query])[0]
        if not ids:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return self._bm25.get_scores_from_ids(ids)

    def search(self, query: str, k: int = 100) -> dict[str, float]:
        """The ``k`` best documents with a positive score, best first: ``{doc_id: score}``.

        Scores every document for one query; use :meth:`run` for many queries. Ties are broken by
        document order, so results are deterministic. Documents sharing no term with the query are never
        returned, so a query may get fewer than ``k`` (or no) documents.
        """
        import numpy as np

        _check_k(k)
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return {self.doc_ids[i]: float(scores[i]) for i in order if scores[i] > 0}

    def run(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """Search every query of ``{query_id: text}`` at once: a run ``{query_id: {doc_id: score}}``.

        All queries are tokenized together and retrieved with one batched ``bm25s`` ``retrieve(query
        tokens, k + 1)`` call. The results equal :meth:`search` for each query: best first, ties broken
        by document order, zero scores left out. When documents tie across the cut-off (the ``k``-th and
        ``(k+1)``-th scores are equal), which of them make the top ``k`` is settled like :meth:`search`
        does (lowest document index), by scoring that query in full.

        Raises:
            InputError: for ``k < 1`` or a ``queries`` that is not a dict of texts.
        """
        import numpy as np

        _check_k(k)
        if not isinstance(queries, Mapping):
            raise InputError("queries must be a dict {query_id: text}")
        qids = list(queries)
        token_ids = self._token_ids([queries[q] for q in qids])
        run: Run = {qid: {} for qid in qids}
        live = [j for j, ids in enumerate(token_ids) if ids]  # no known term: no document scores > 0
        if not live:
            return run
        depth = min(k + 1, len(self.doc_ids))
        found, scores = self._bm25.retrieve(
            [token_ids[j] for j in live], k=depth, sorted=True, show_progress=False, backend_selection="numpy"
        )
        order = np.lexsort((found, -scores), axis=-1)  # score descending, then document index
        found = np.take_along_axis(found, order, axis=-1)
        scores = np.take_along_axis(scores, order, axis=-1)
        if depth > k:
            tied = (scores[:, k - 1] > 0) & (scores[:, k - 1] == scores[:, k])
        else:
            tied = np.zeros(len(live), dtype=bool)
        doc_ids = self.doc_ids
        for row, j in enumerate(live):
            if tied[row]:
                run[qids[j]] = self.search(queries[qids[j]], k)
                continue
            top = scores[row, :k]
            keep = top > 0
            run[qids[j]] = dict(
                zip([doc_ids[i] for i in found[row, :k][keep]], top[keep].astype(float).tolist(), strict=True)
            )
        return run


def bm25_candidates(
    collection: Collection,
    k: int = 100,
    *,
    query_ids: Iterable[str] | None = None,
    k1: float = 1.5,
    b: float = 0.75,
) -> Run:
    """Top-``k`` BM25 candidates of a collection's queries.

    The index covers every document: for a lazily loaded ir_datasets corpus this reads the whole corpus
    once through ``docs_iter`` (see :class:`BM25Index`); a collection loaded with ``lazy=True`` refuses
    it (use :func:`scoreddocs_candidates` with a run, or ``read_trec_run(path, k=...)``).

    Args:
        collection: the collection to index and search.
        k: candidates per query (fewer when fewer documents share a term with the query).
        query_ids: the queries to search (default: all, in collection order).
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.

    Returns:
        A run ``{query_id: {doc_id: score}}``, best first within each query; every requested query is a
        key (with an empty dict when no document matches).

    Raises:
        InputError: for ``k < 1`` or query ids not in the collection.
        DataError: for a collection loaded with ``lazy=True``.

    Example:
        >>> from mechir_nig.data import load_collection
        >>> run = bm25_candidates(load_collection("embedded"), k=10)
        >>> len(run["q01"]) <= 10
        True
    """
    _check_collection(collection)
    _check_k(k)
    ids = select_query_ids(collection.queries, query_ids, f"collection {collection.name!r}")
    index = BM25Index(collection, k1=k1, b=b)
    return index.run({qid: collection.queries[qid] for qid in ids}, k)


def scoreddocs_candidates(
    collection: Collection, k: int = 100, *, query_ids: Iterable[str] | None = None
) -> Run:
    """Top-``k`` of the first-stage results a collection ships (ir_datasets ``scoreddocs``, a run file).

    The scoreddocs are read in one pass keeping a heap of the ``k`` best results per requested query
    (:func:`~mechir_nig.data.formats.run.top_k_run`), so with streamed scoreddocs
    (``load_collection(..., lazy=True)``) memory holds ``k`` results per query, never the run.

    Args:
        collection: a collection whose ``scoreddocs`` is not ``None``.
        k: candidates per query (the highest scores; ties keep the order of the source).
        query_ids: the queries to keep (default: all, in collection order).

    Returns:
        A run ``{query_id: {doc_id: score}}``, best first; every requested query is a key. Results naming
        documents absent from the collection are left out (``Collection.report`` counts them); with lazy
        documents only the top results are looked up (one lookup for all queries), and a query that
        lost some to absent documents is read again to a depth that replaces them.

    Raises:
        InputError: when the collection has no scoreddocs, for ``k < 1`` or unknown query ids.

    Example:
        >>> run = scoreddocs_candidates(load_collection("irds:msmarco-passage/dev/small", lazy=True), k=100)  # doctest: +SKIP
        >>> import tempfile  # offline: a local collection with a TREC run of its own
        >>> from pathlib import Path
        >>> from mechir_nig.data import load_collection
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "docs.tsv").write_text("d1\\tA neuron is a cell.\\nd2\\tTea.\\nd3\\tStars.\\n")
        >>> _ = (folder / "queries.tsv").write_text("q1\\twhat is a neuron\\n")
        >>> _ = (folder / "run").write_text("q1 Q0 d2 1 9.0 bm25\\nq1 Q0 d1 2 8.0 bm25\\nq1 Q0 d3 3 1.0 bm25\\n")
        >>> scoreddocs_candidates(load_collection(folder, lazy=True), k=2)
        {'q1': {'d2': 9.0, 'd1': 8.0}}
    """
    _check_collection(collection)
    _check_k(k)
    if collection.scoreddocs is None:
        raise InputError(
            f"collection {collection.name!r} has no scoreddocs: use bm25_candidates(collection), or load a "
            "run with read_trec_run(path) / load_collection(..., run=path)"
        )
    ids = select_query_ids(collection.queries, query_ids, f"collection {collection.name!r}")
    run: Run = {qid: {} for qid in ids}
    docs = collection.docs
    if not isinstance(docs, LazyDocs):  # presence is a dict lookup: absent documents never enter a heap
        present_only = (s for s in collection.scoreddocs if s.doc_id in docs)
        run.update(top_k_run(present_only, k, query_ids=set(ids)))
        return run
    depth = dict.fromkeys(ids, k)
    pending = list(ids)
    while pending:  # usually one pass: more only for queries whose top results name absent documents
        ranked = top_k_run(collection.scoreddocs, {qid: depth[qid] for qid in pending})
        present = collection.get_docs(did for qid in pending for did in ranked.get(qid, {}))
        short = []
        for qid in pending:
            results = ranked.get(qid, {})
            kept = [(did, score) for did, score in results.items() if did in present]
            run[qid] = dict(kept[:k])
            if len(kept) < k and len(results) == depth[qid]:  # deeper results may replace absent ones
                depth[qid] += k - len(kept)
                short.append(qid)
        pending = short
    return run
