"""File formats of IR test collections, one parser family per module, each streaming its file.

* :mod:`~mechir_nig.data.formats.trec`: TREC SGML documents, topics and qrels;
* :mod:`~mechir_nig.data.formats.tsv`: ``id<TAB>text`` files (MS MARCO headers recognised);
* :mod:`~mechir_nig.data.formats.jsonl`: JSON lines (BEIR, Pyserini, ir_datasets exports);
* :mod:`~mechir_nig.data.formats.run`: TREC run files (whole, or the top ``k`` per query, streamed);
* :mod:`~mechir_nig.data.formats.offsets`: the byte-offset index that lets a lazy lookup by id seek.

Every parser yields records as it reads (a file never has to fit in memory twice) and raises
:class:`~mechir_nig.errors.DataError` naming the file and line of anything malformed. Texts are
whitespace-normalised so that the same text reads the same from every format. :func:`detect_format`
tells a documents/queries file's format from its extension or first line, and :func:`read_texts`
dispatches to the right parser.

Accepted input, the same for every parser (hostile files are tested property-based in
``tests/test_hostile_inputs.py``):

* **Encoding**: UTF-8 only (``.gz`` decompressed first). A line that is not valid UTF-8 (Latin-1,
  cp1252, UTF-16) is a DataError naming the file and line; nothing is guessed or replaced.
* **Byte-order mark**: a UTF-8 BOM opening the file is dropped; a ``U+FEFF`` elsewhere (files joined
  with ``cat``) is whitespace, so it never sticks to an id.
* **Line endings**: ``\\n`` or ``\\r\\n``; a file whose only line breaks are bare ``\\r`` (classic Mac
  OS) is split on them.
* **Whitespace and control characters**: Unicode whitespace and control characters (NUL, ESC, DEL,
  C1; category ``Cc``) are all whitespace. Every text and id is normalised the same way: each run of
  them becomes one space and the ends are trimmed (a text reads back as ``" ".join(text.split())``
  with control characters counted as spaces); qrels and run lines are split on them, so qrels and run
  ids never contain whitespace.
* **Empty**: a record whose text is empty after normalisation is a DataError naming file and line
  (``empty="error"``) or is skipped and counted (``empty="skip"``); an empty id is always a DataError.
  Blank lines are skipped.
* **Duplicates**: an id repeated in one documents/queries file, a (query, document) pair judged twice
  in a qrels file, a document repeated for a query in a run file, and a key repeated in one JSON
  object are DataErrors naming the line (and the first line for ids).
* **Mismatched ids** across files (qrels naming unknown queries or documents) are not a parse error:
  :class:`~mechir_nig.data.Collection` keeps and reports them (``Collection.report``, DataWarning).

Keyword arguments the text parsers share (:func:`read_tsv`, :func:`read_jsonl`, :func:`read_trec_docs`,
:func:`read_trec_topics`, :func:`read_texts`; each yields ``(id, text)`` in file order):

* ``empty``: ``"error"`` (default): a record whose text is empty is a DataError; ``"skip"``: skip it.
  Any other value is an InputError.
* ``skipped``: with ``empty="skip"``, receives ``(id, line)`` of each skipped record; without it, a
  :class:`~mechir_nig.errors.DataWarning` says how many were skipped.
* ``only``: yield only the records whose id is in this set (a lazy lookup of a few ids in a large
  file): every record's structure and id are still checked, but texts are parsed, and duplicate and
  empty checks made, for the requested ids only, so memory stays ``O(len(only))``.
* ``source`` (tsv, jsonl): the numbered lines ``(line, text)`` to parse instead of reading ``path``
  (an :class:`~mechir_nig.data.formats.offsets.OffsetIndex` passes the lines it seeked to).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "queries"
    >>> _ = path.write_text("qid\\tquery\\nq1\\twhy do cats purr\\n")
    >>> detect_format(path), dict(read_texts(path, "queries"))
    ('tsv', {'q1': 'why do cats purr'})
"""

from __future__ import annotations

from collections.abc import Container, Iterator

from mechir_nig.data.formats._io import EmptyPolicy, PathLike, check_file, lines, trim
from mechir_nig.data.formats.jsonl import read_jsonl
from mechir_nig.data.formats.run import Run, iter_trec_run, read_trec_run, top_k_run
from mechir_nig.data.formats.trec import TOPIC_FIELDS, read_trec_docs, read_trec_qrels, read_trec_topics
from mechir_nig.data.formats.tsv import is_tsv_header, read_tsv
from mechir_nig.errors import DataError, InputError

__all__ = [
    "TOPIC_FIELDS",
    "EmptyPolicy",
    "PathLike",
    "Run",
    "detect_format",
    "is_tsv_header",
    "iter_trec_run",
    "read_jsonl",
    "read_texts",
    "read_trec_docs",
    "read_trec_qrels",
    "read_trec_run",
    "read_trec_topics",
    "read_tsv",
    "top_k_run",
]

_EXTENSIONS = {
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".trec": "trec",
    ".sgml": "trec",
    ".xml": "trec",
    ".trectext": "trec",
    ".topics": "trec",
}


def detect_format(path: PathLike) -> str:
    """``"trec"``, ``"tsv"`` or ``"jsonl"``: from the extension (``.gz`` ignored), else the first line.

    Raises:
        InputError: when ``path`` is not a file.
        DataError: when neither the name nor the first non-blank line tells (the message lists the
            extensions to use).

    Example:
        >>> import gzip, tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "corpus.jsonl.gz"
        >>> with gzip.open(path, "wt") as f:
        ...     _ = f.write('{"_id": "d1", "text": "A neuron is a cell."}\\n')
        >>> detect_format(path)
        'jsonl'
    """
    p = check_file(path)
    suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
    if suffixes and suffixes[-1] in _EXTENSIONS:
        return _EXTENSIONS[suffixes[-1]]
    for _, line in lines(p):
        head = trim(line)
        if not head:
            continue
        if head.startswith("<"):
            return "trec"
        if head.startswith("{"):
            return "jsonl"
        if "\t" in head:
            return "tsv"
        break
    raise DataError(
        f"{path}: cannot tell the format from the name or the first line; name the file .trec (TREC SGML), "
        ".tsv (id<TAB>text) or .jsonl (JSON lines)"
    )


def read_texts(
    path: PathLike,
    role: str,
    *,
    topic_field: str = "title",
    empty: str = "error",
    skipped: list[tuple[str, int]] | None = None,
    only: Container[str] | None = None,
) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a documents (``role="docs"``) or queries (``role="queries"``) file.

    The format comes from :func:`detect_format`; a TREC file is read with :func:`read_trec_docs` for
    documents and :func:`read_trec_topics` (``field=topic_field``) for queries. ``empty``, ``skipped``
    and ``only`` (documents only) are the parsers' (module docstring).

    Raises:
        InputError: for a ``role`` other than ``"docs"``/``"queries"`` or a missing file.
        DataError: as the parser of the detected format.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "A neuron is a cell."}\\n')
        >>> docs = dict(read_texts(folder / "corpus.jsonl", "docs"))
        >>> docs
        {'d1': 'A neuron is a cell.'}
    """
    if role not in ("docs", "queries"):
        raise InputError(f"role must be 'docs' or 'queries', got {role!r}")
    if only is not None and role != "docs":
        raise InputError("only= selects documents by id: use it with role='docs'")
    fmt = detect_format(path)
    if fmt == "tsv":
        return read_tsv(path, empty=empty, skipped=skipped, only=only)
    if fmt == "jsonl":
        return read_jsonl(path, empty=empty, skipped=skipped, only=only)
    if role == "docs":
        return read_trec_docs(path, empty=empty, skipped=skipped, only=only)
    return read_trec_topics(path, field=topic_field, empty=empty, skipped=skipped)
