"""TREC formats: SGML documents (``<DOC>``), topics (``<top>``) and qrels, streamed line by line.

Each parser is a generator: records are yielded as they are parsed, so a large file never sits in
memory, and anything malformed raises :class:`~mechir_nig.errors.DataError` naming the file and the
line (an unterminated element, a record without an id, a duplicate id, a qrels line without four
fields). Texts are whitespace-normalised and inner SGML tags removed. The records follow ir_datasets'
``TrecDoc``/``TrecQuery``/``TrecQrel`` fields; judgements are ir_measures ``Qrel`` records.

Encoding, BOM, line endings and whitespace follow :mod:`mechir_nig.data.formats`. SGML has no
escaping: anything shaped like a tag (``<b>``, ``<a href=x>``) is removed from a text, entities such as
``&amp;`` are kept as written, and a text holding ``<DOC>``/``</DOC>`` (``<top>``, ``<num>``, ...)
changes the structure (usually a DataError). Use TSV or JSONL for texts with markup.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "docs.trec"
    >>> _ = path.write_text("<DOC><DOCNO>d1</DOCNO><TEXT>cats purr</TEXT></DOC>\\n")
    >>> list(read_trec_docs(path))
    [('d1', 'cats purr')]
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterator
from typing import TYPE_CHECKING

from mechir_nig.data.formats._io import (
    TAG,
    EmptyRecords,
    PathLike,
    claim,
    fail,
    lines,
    norm,
    rows,
)
from mechir_nig.errors import InputError

if TYPE_CHECKING:
    from ir_measures import Qrel

__all__ = ["TOPIC_FIELDS", "read_trec_docs", "read_trec_qrels", "read_trec_topics"]

_DOC_OPEN = re.compile(r"<DOC>", re.IGNORECASE)
_DOC_CLOSE = re.compile(r"</DOC>", re.IGNORECASE)
_DOCNO = re.compile(r"<DOCNO>(.*?)</DOCNO>", re.IGNORECASE | re.DOTALL)
_TOP_OPEN = re.compile(r"<top>", re.IGNORECASE)
_TOP_CLOSE = re.compile(r"</top>", re.IGNORECASE)
_TOPIC_TAG = re.compile(r"<(/?)(num|title|desc|narr)>", re.IGNORECASE)
_TOPIC_PREFIX = {"num": "number:", "desc": "description:", "narr": "narrative:", "title": "topic:"}
#: The fields of a TREC topic that can serve as the query text.
TOPIC_FIELDS = ("title", "desc", "narr")


def _sgml_blocks(
    path: PathLike, open_re: re.Pattern, close_re: re.Pattern, tag: str
) -> Iterator[tuple[int, str]]:
    """Yield ``(start_line, inner_text)`` of each ``<tag>...</tag>`` element, streaming lines."""
    start = 0  # line of the open element, 0 when outside one
    buf: list[str] = []
    for lineno, line in lines(path):
        pos = 0
        while True:
            if not start:
                m = open_re.search(line, pos)
                outside = line[pos : m.start() if m else len(line)]
                if norm(outside):
                    raise fail(
                        path,
                        lineno,
                        f"text outside a <{tag}> element ({norm(outside)[:40]!r})",
                        f"wrap every record in <{tag}> ... </{tag}>",
                    )
                if m is None:
                    break
                start, buf, pos = lineno, [], m.end()
            else:
                close = close_re.search(line, pos)
                reopen = open_re.search(line, pos)
                if reopen is not None and (close is None or reopen.start() < close.start()):
                    raise fail(
                        path,
                        lineno,
                        f"<{tag}> opened at line {start} is not closed before this <{tag}>",
                        f"add the missing </{tag}>",
                    )
                if close is None:
                    buf.append(line[pos:])
                    break
                buf.append(line[pos : close.start()])
                yield start, "".join(buf)
                start, pos = 0, close.end()
    if start:
        raise fail(
            path,
            start,
            f"<{tag}> is never closed (end of file reached)",
            f"add </{tag}> or re-download the file",
        )


def read_trec_docs(
    path: PathLike,
    *,
    empty: str = "error",
    skipped: list[tuple[str, int]] | None = None,
    only: Container[str] | None = None,
) -> Iterator[tuple[str, str]]:
    """Stream ``(doc_id, text)`` from a TREC SGML document file.

    Each record is ``<DOC><DOCNO>id</DOCNO> text </DOC>`` (tags may share lines or not). The text is
    everything in the element except the ``DOCNO``, with inner SGML tags (``<TEXT>``, ``<HEADLINE>``)
    removed and whitespace normalised.

    Args:
        path: the file (``.gz`` is decompressed).
        empty: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        skipped: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        only: shared by the text parsers (see :mod:`mechir_nig.data.formats`).

    Raises:
        DataError: naming the file and line of text outside ``<DOC>``, a ``<DOC>`` without
            ``<DOCNO>`` or never closed, a duplicate id, an empty text (with ``empty="error"``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "doc-text.trec").write_text(
        ...     "<DOC>\\n<DOCNO>1</DOCNO>\\nA neuron is a cell.\\n</DOC>\\n<DOC>\\n<DOCNO>2</DOCNO>\\nTea.\\n</DOC>\\n")
        >>> docs = dict(read_trec_docs(folder / "doc-text.trec"))
        >>> docs
        {'1': 'A neuron is a cell.', '2': 'Tea.'}
    """
    empties = EmptyRecords(path, empty, skipped)
    seen: dict[str, int] = {}
    for start, body in _sgml_blocks(path, _DOC_OPEN, _DOC_CLOSE, "DOC"):
        m = _DOCNO.search(body)
        if m is None:
            raise fail(path, start, "<DOC> without <DOCNO>id</DOCNO>", "give every document an id")
        doc_id = norm(m.group(1))
        if not doc_id:
            raise fail(path, start, "empty <DOCNO></DOCNO>", "give every document a non-empty id")
        if _DOCNO.search(body, m.end()):
            raise fail(path, start, f"document {doc_id!r} has two <DOCNO>", "keep one <DOCNO> per <DOC>")
        if only is not None and doc_id not in only:
            continue
        claim(path, start, "document id", doc_id, seen)
        text = norm(TAG.sub(" ", body[: m.start()] + " " + body[m.end() :]))
        if not text:
            empties.handle(start, f"document {doc_id!r} has no text", doc_id)
            continue
        yield doc_id, text
    empties.finish()


def _topic_fields(body: str) -> dict[str, str]:
    """Split a ``<top>`` body into its ``num``/``title``/``desc``/``narr`` fields.

    A field's text runs from its opening tag to the next topic tag (closing tags are optional, as in the
    classic TREC topic files), so a title may span lines.
    """
    out: dict[str, str] = {}
    tags = list(_TOPIC_TAG.finditer(body))
    for i, m in enumerate(tags):
        if m.group(1):
            continue
        name = m.group(2).lower()
        end = tags[i + 1].start() if i + 1 < len(tags) else len(body)
        value = norm(TAG.sub(" ", body[m.end() : end]))
        prefix = _TOPIC_PREFIX[name]
        if value.lower().startswith(prefix):
            value = value[len(prefix) :].strip()
        out.setdefault(name, value)
    return out


def read_trec_topics(
    path: PathLike,
    *,
    field: str = "title",
    empty: str = "error",
    skipped: list[tuple[str, int]] | None = None,
) -> Iterator[tuple[str, str]]:
    """Stream ``(query_id, text)`` from a TREC topic file.

    Each record is ``<top><num>id</num><title>text</title></top>``; closing tags of the fields are
    optional and the classic ``<num> Number: 301`` / ``<desc> Description:`` prefixes are removed.

    Args:
        path: the file (``.gz`` is decompressed).
        field: which field is the query text: ``"title"`` (default), ``"desc"`` or ``"narr"``.
        empty: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        skipped: shared by the text parsers (see :mod:`mechir_nig.data.formats`).

    Raises:
        InputError: for an unknown ``field``.
        DataError: naming the file and line of text outside ``<top>``, a topic without ``<num>`` or
            without the field, an unterminated ``<top>``, a duplicate id, an empty text.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "query-text.trec").write_text(
        ...     "<top>\\n<num> Number: 401\\n<title> what is a neuron\\n<desc> Description:\\nNeurons.\\n</top>\\n")
        >>> queries = dict(read_trec_topics(folder / "query-text.trec"))
        >>> queries  # the title field
        {'401': 'what is a neuron'}
    """
    if field not in TOPIC_FIELDS:
        raise InputError(f"field must be one of {TOPIC_FIELDS}, got {field!r}")
    empties = EmptyRecords(path, empty, skipped)
    seen: dict[str, int] = {}
    for start, body in _sgml_blocks(path, _TOP_OPEN, _TOP_CLOSE, "top"):
        fields = _topic_fields(body)
        query_id = fields.get("num", "")
        if not query_id:
            raise fail(path, start, "<top> without a <num>id</num>", "give every topic an id")
        claim(path, start, "query id", query_id, seen)
        if field not in fields:
            raise fail(path, start, f"topic {query_id!r} has no <{field}>", "add it or pick another field=")
        if not fields[field]:
            empties.handle(start, f"topic {query_id!r} has an empty <{field}>", query_id)
            continue
        yield query_id, fields[field]
    empties.finish()


def read_trec_qrels(path: PathLike) -> Iterator[Qrel]:
    """Stream judgements from a TREC qrels file with lines ``query_id iteration doc_id relevance``.

    Fields are separated by any whitespace; blank lines are skipped. Grades are kept as written
    (negative ones too): map them with ``load_collection(..., grade_map=...)``.

    Args:
        path: the file (``.gz`` is decompressed).

    Yields:
        ``ir_measures.Qrel(query_id, doc_id, relevance, iteration)`` records in file order.

    Raises:
        DataError: naming the file and line of a line without exactly four fields, a relevance that is
            not an integer, a judgement repeated for the same query and document.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "qrels").write_text("401 0 1 1\\n401 0 2 0\\n")
        >>> qrels = list(read_trec_qrels(folder / "qrels"))
        >>> [(q.query_id, q.doc_id, q.relevance) for q in qrels]
        [('401', '1', 1), ('401', '2', 0)]
    """
    from ir_measures import Qrel

    seen: dict[str, int] = {}
    layout = "qrels lines as 'query_id iteration doc_id relevance' (e.g. '1 0 d7 1')"
    for lineno, fields in rows(path, 4, layout):
        query_id, iteration, doc_id, rel = fields
        try:
            relevance = int(rel)
        except ValueError:
            raise fail(path, lineno, f"relevance {rel!r} is not an integer", "use 0, 1, 2, ...") from None
        claim(path, lineno, "judgement for query/doc", f"{query_id} {doc_id}", seen)
        yield Qrel(query_id, doc_id, relevance, iteration)
