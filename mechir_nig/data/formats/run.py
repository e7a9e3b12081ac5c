"""TREC run files: lines ``query_id Q0 doc_id rank score tag`` (trec_eval's input format).

:func:`iter_trec_run` streams ir_measures ``ScoredDoc`` records; :func:`read_trec_run` collects them into
the run dict ``{query_id: {doc_id: score}}`` that ir_measures, :func:`~mechir_nig.evaluation.evaluate`
and :func:`~mechir_nig.evaluation.rerank` take. Malformed lines raise
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

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mechir_nig.data.formats._io import PathLike, claim, fail, lines, split_fields
from mechir_nig.errors import DataError

if TYPE_CHECKING:
    from ir_measures import ScoredDoc

__all__ = ["Run", "iter_trec_run", "read_trec_run"]

#: Run format shared with ir_measures: ``{query_id: {doc_id: score}}``.
Run = dict[str, dict[str, float]]


def iter_trec_run(path: PathLike) -> Iterator[ScoredDoc]:
    """Stream the results of a TREC run file as ``ir_measures.ScoredDoc(query_id, doc_id, score)``.

    Args:
        path: the file (``.gz`` is decompressed).

    Yields:
        One ``ScoredDoc`` per result line, in file order (the rank column is checked, not kept: ranking
        follows the scores, as in trec_eval).

    Raises:
        DataError: naming the file and line of a line without exactly six fields, a rank that is not an
            integer, a score that is not a finite number, a document repeated for a query.

    Example:
        >>> best = max(iter_trec_run("bm25.run"), key=lambda s: s.score)  # doctest: +SKIP
    """
    from ir_measures import ScoredDoc

    seen: dict[str, int] = {}
    for lineno, line in lines(path):
        fields = split_fields(line)
        if not fields:
            continue
        if len(fields) != 6:
            raise fail(
                path,
                lineno,
                f"{len(fields)} fields, expected 6",
                "write run lines as 'query_id Q0 doc_id rank score tag'",
            )
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
        claim(path, lineno, "document for query", f"{query_id} {doc_id}", seen)
        yield ScoredDoc(query_id, doc_id, value)


def read_trec_run(path: PathLike) -> Run:
    """Read a TREC run file into ``{query_id: {doc_id: score}}``.

    Args:
        path: the file (``.gz`` is decompressed).

    Returns:
        The run in ir_measures' dict format, queries and documents in file order.

    Raises:
        DataError: for a malformed line (see :func:`iter_trec_run`) or a file without results.

    Example:
        >>> run = read_trec_run("bm25.run")  # doctest: +SKIP
    """
    run: Run = {}
    for s in iter_trec_run(path):
        run.setdefault(s.query_id, {})[s.doc_id] = s.score
    if not run:
        raise DataError(
            f"{path}: the run file has no results; write 'query_id Q0 doc_id rank score tag' lines"
        )
    return run
