"""TREC run files: lines ``query_id Q0 doc_id rank score tag`` (trec_eval's input format).

:func:`iter_trec_run` streams ir_measures ``ScoredDoc`` records; :func:`read_trec_run` collects them into
the run dict ``{query_id: {doc_id: score}}`` that ir_measures, :func:`~mechir_nig.evaluation.evaluate`
and :func:`~mechir_nig.evaluation.rerank` take; with ``k=`` it streams the file and keeps only each
query's ``k`` best results (a heap per query, :func:`top_k_run`), so a run of millions of lines (MS
MARCO's top-1000 files) costs memory for the kept results only. Malformed lines raise
:class:`~mechir_nig.errors.DataError` naming the file and line. Encoding, BOM, line endings and the
whitespace that separates fields follow :mod:`mechir_nig.data.formats`.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "bm25.run"
    >>> _ = path.write_text("1 Q0 d7 1 12.5 bm25\\n1 Q0 d2 2 3.0 bm25\\n")
    >>> read_trec_run(path)
    {'1': {'d7': 12.5, 'd2': 3.0}}
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Literal

from mechir_nig._validate import check_int
from mechir_nig.data.formats._io import PathLike, claim, fail, rows
from mechir_nig.errors import DataError, InputError

if TYPE_CHECKING:
    from ir_measures import ScoredDoc

__all__ = ["Run", "iter_trec_run", "read_trec_run", "top_k_run"]

#: Run format shared with ir_measures: ``{query_id: {doc_id: score}}``.
Run = dict[str, dict[str, float]]


def iter_trec_run(path: PathLike, *, duplicates: Literal["all", "block"] = "all") -> Iterator[ScoredDoc]:
    """Stream the results of a TREC run file as ``ir_measures.ScoredDoc(query_id, doc_id, score)``.

    Args:
        path: the file (``.gz`` is decompressed).
        duplicates: how a document repeated for a query is found: ``"all"`` (default) remembers every
            (query, document) of the file (memory grows with the file); ``"block"`` remembers those of
            the current run of lines of one query only (memory of one query's results), which finds
            every repeat in a run grouped by query, as trec_eval writes them, but not a repeat in two
            separate blocks of the same query.

    Yields:
        One ``ScoredDoc`` per result line, in file order (the rank column is checked, not kept: ranking
        follows the scores, as in trec_eval).

    Raises:
        DataError: naming the file and line of a line without exactly six fields, a rank that is not an
            integer, a score that is not a finite number, a document repeated for a query.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "bm25.run").write_text("q1 Q0 d1 1 12.5 bm25\\nq1 Q0 d2 2 11.0 bm25\\nq2 Q0 d3 1 9.0 bm25\\n")
        >>> best = max(iter_trec_run(folder / "bm25.run"), key=lambda s: s.score)
        >>> best.query_id, best.doc_id, best.score
        ('q1', 'd1', 12.5)
    """
    from ir_measures import ScoredDoc

    if duplicates not in ("all", "block"):
        raise InputError(f"duplicates must be 'all' or 'block', got {duplicates!r}")
    seen: dict[str, int] = {}
    block = None
    for lineno, fields in rows(path, 6, "run lines as 'query_id Q0 doc_id rank score tag'"):
        query_id, _, doc_id, rank, score, _ = fields
        try:
            int(rank)
        except ValueError:
            raise fail(path, lineno, f"rank {rank!r} is not an integer", "write ranks as 1, 2, ...") from None
        try:
            value = float(score)
        except ValueError:
            raise fail(path, lineno, f"score {score!r} is not a number", "write scores as decimals") from None
        if not math.isfinite(value):
            raise fail(path, lineno, f"score {score!r} is not finite", "write finite scores")
        if duplicates == "block" and query_id != block:
            seen.clear()
            block = query_id
        claim(path, lineno, "document for query", f"{query_id} {doc_id}", seen)
        yield ScoredDoc(query_id, doc_id, value)


def read_trec_run(path: PathLike, *, k: int | None = None, query_ids: Iterable[str] | None = None) -> Run:
    """Read a TREC run file into ``{query_id: {doc_id: score}}``.

    Args:
        path: the file (``.gz`` is decompressed).
        k: keep only each query's ``k`` best results (highest scores, ties in file order), streaming the
            file with a heap per query (:func:`top_k_run`): memory holds ``k`` results per query, not
            the file. Repeated documents are then found within each query's block of lines
            (``iter_trec_run(..., duplicates="block")``). ``None`` (default): every result.
        query_ids: keep only these queries (default: all).

    Returns:
        The run in ir_measures' dict format: queries in file order, documents in file order (without
        ``k``) or best first (with ``k``).

    Raises:
        InputError: for ``k < 1`` or a single string as ``query_ids``.
        DataError: for a malformed line (see :func:`iter_trec_run`) or a file without results.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "bm25.run").write_text("q1 Q0 d1 1 12.5 bm25\\nq1 Q0 d2 2 11.0 bm25\\nq2 Q0 d3 1 9.0 bm25\\n")
        >>> run = read_trec_run(folder / "bm25.run")
        >>> run
        {'q1': {'d1': 12.5, 'd2': 11.0}, 'q2': {'d3': 9.0}}
        >>> top1 = read_trec_run(folder / "bm25.run", k=1)  # each query's best result
        >>> top1
        {'q1': {'d1': 12.5}, 'q2': {'d3': 9.0}}
    """
    if isinstance(query_ids, str):
        raise InputError("query_ids must be a list of ids, not a single string: wrap it in a list")
    wanted = None if query_ids is None else set(query_ids)
    if k is not None:
        run = top_k_run(iter_trec_run(path, duplicates="block"), k, query_ids=wanted)
    else:
        run = {}
        for s in iter_trec_run(path):
            if wanted is None or s.query_id in wanted:
                run.setdefault(s.query_id, {})[s.doc_id] = s.score
    if not run:
        raise DataError(
            f"{path}: the run file has no results{'' if wanted is None else ' for the queries asked for'}; "
            "write 'query_id Q0 doc_id rank score tag' lines"
        )
    return run


def top_k_run(
    results: Iterable[ScoredDoc],
    k: int | Mapping[str, int],
    *,
    query_ids: Collection[str] | None = None,
) -> Run:
    """The ``k`` best results of each query from a stream of ``ScoredDoc``, in one pass.

    A bounded heap per query keeps the highest scores, ties broken by the order of the stream (the
    first result wins), so the answer equals sorting each query's results by descending score (stably)
    and cutting at ``k``, while memory holds ``k`` results per query whatever the stream's length.

    Args:
        results: ``ScoredDoc(query_id, doc_id, score)`` records (a run file, ir_datasets
            ``scoreddocs_iter()``, a ``Collection.scoreddocs``).
        k: results kept per query (an integer >= 1), or ``{query_id: depth}`` (queries not in it are
            skipped).
        query_ids: keep only these queries (default: every query met, or the keys of a ``k`` dict).

    Returns:
        ``{query_id: {doc_id: score}}`` best first, queries in the order first met.

    Raises:
        InputError: for a ``k`` that is not an integer >= 1 (or a dict of them).

    Example:
        >>> from ir_measures import ScoredDoc
        >>> top_k_run([ScoredDoc("q", "a", 1.0), ScoredDoc("q", "b", 3.0), ScoredDoc("q", "c", 3.0)], 2)
        {'q': {'b': 3.0, 'c': 3.0}}
    """
    depths = dict(k) if isinstance(k, Mapping) else None
    for depth in depths.values() if depths is not None else (k,):
        check_int(depth, "k (results kept per query)", minimum=1)
    if depths is not None and query_ids is not None:
        depths = {q: d for q, d in depths.items() if q in query_ids}
    heaps: dict[str, list[tuple[float, int, str]]] = {}
    for seq, r in enumerate(results):
        qid = r.query_id
        heap = heaps.get(qid)
        if heap is None:
            if depths is not None:
                if qid not in depths:
                    continue
            elif query_ids is not None and qid not in query_ids:
                continue
            heap = heaps[qid] = []
        depth = depths[qid] if depths is not None else k
        item = (float(r.score), -seq, r.doc_id)  # larger is better: higher score, then earlier
        if len(heap) < depth:  # type: ignore[operator]
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)
    return {qid: {did: score for score, _, did in sorted(heap, reverse=True)} for qid, heap in heaps.items()}
