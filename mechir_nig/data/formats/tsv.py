"""Tab-separated ``id<TAB>text`` files (MS MARCO ``collection.tsv``/``queries.*.tsv``, BEIR exports).

:func:`read_tsv` streams ``(id, text)`` pairs. Further columns (``id<TAB>title<TAB>body``) are joined to
the text; blank lines are skipped; a first line that is a header (``id<TAB>text``, ``pid<TAB>passage``,
``qid<TAB>query``, ``doc_id<TAB>text``, ``query_id<TAB>text``, ...) is recognised and skipped, never read
as a record. Malformed lines raise :class:`~mechir_nig.errors.DataError` naming the file and line.
Ids and texts are normalised as described in :mod:`mechir_nig.data.formats` (UTF-8, BOM dropped,
``\\r\\n`` accepted, control characters count as whitespace); a text containing a tab reads back with
a space there.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "collection.tsv"
    >>> _ = path.write_text("pid\\tpassage\\n0\\tcats purr\\n1\\tdogs   bark\\n")
    >>> list(read_tsv(path))
    [('0', 'cats purr'), ('1', 'dogs bark')]
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator

from mechir_nig.data.formats._io import _WS, EmptyRecords, PathLike, claim, fail, lines, norm

__all__ = ["TSV_HEADER_IDS", "TSV_HEADER_TEXTS", "is_tsv_header", "read_tsv"]

#: Names of the id column that mark a first line as a header (compared lowercased).
TSV_HEADER_IDS = frozenset(
    {"id", "_id", "doc_id", "docid", "docno", "pid", "passage_id", "query_id", "qid", "topic_id"}
)
#: Names of the text column that mark a first line as a header (compared lowercased).
TSV_HEADER_TEXTS = frozenset({"text", "title", "query", "question", "contents", "body", "passage"})


def is_tsv_header(fields: list[str]) -> bool:
    """Whether the fields of a first line name columns (``pid``, ``passage``) rather than a record.

    Example:
        >>> is_tsv_header(["qid", "query"]), is_tsv_header(["1", "what is a neuron"])
        (True, False)
    """
    return (
        len(fields) >= 2
        and fields[0].strip().lower() in TSV_HEADER_IDS
        and fields[1].strip().lower() in TSV_HEADER_TEXTS
    )


def read_tsv(
    path: PathLike,
    *,
    empty: str = "error",
    skipped: list[tuple[str, int]] | None = None,
    only: Container[str] | None = None,
    source: Iterable[tuple[int, str]] | None = None,
    header: bool = True,
) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a tab-separated file with lines ``id<TAB>text``.

    Further columns (e.g. ``id<TAB>title<TAB>body``) are joined to the text with spaces; blank lines are
    skipped, and so is a first line that is a header (see :func:`is_tsv_header`).

    Args:
        path: the file (``.gz`` is decompressed).
        empty: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        skipped: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        only: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        source: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        header: whether the first line may be a header (``False`` for lines picked from a file).

    Raises:
        DataError: naming the file and line of a line without a tab, an empty id, a duplicate id, an empty
            text (with ``empty="error"``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "collection.tsv").write_text("d1\\tA neuron is a cell.\\nd2\\tTea.\\n")
        >>> docs = dict(read_tsv(folder / "collection.tsv"))
        >>> docs
        {'d1': 'A neuron is a cell.', 'd2': 'Tea.'}
    """
    empties = EmptyRecords(path, empty, skipped)
    seen: dict[str, int] = {}
    first = header
    for lineno, line in lines(path) if source is None else source:
        line = line.rstrip("\r\n")
        head, tab, rest = line.partition("\t")
        key = head if _WS.search(head) is None else norm(head)  # most ids need no normalising
        if not key and not norm(rest):
            continue  # a blank line (tabs are whitespace)
        if first:
            first = False
            if is_tsv_header(line.split("\t")):
                continue
        if not tab:
            raise fail(path, lineno, "no tab between id and text", "write each record as id<TAB>text")
        if not key:
            raise fail(path, lineno, "empty id before the tab", "write each record as id<TAB>text")
        if only is not None and key not in only:
            continue
        claim(path, lineno, "id", key, seen)
        text = norm(rest)  # further columns: their tabs become spaces
        if not text:
            empties.handle(lineno, f"{key!r} has an empty text", key)
            continue
        yield key, text
    empties.finish()
