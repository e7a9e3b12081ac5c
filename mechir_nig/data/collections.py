"""Test collections: documents, queries and qrels from ir_datasets, local files or the embedded set.

A :class:`Collection` holds the three parts of an IR test collection in memory, keyed by id, with
ir_measures' record types (``Qrel``, ``ScoredDoc``) for judgements and first-stage results.
:func:`load_collection` builds one from

* ``"embedded"`` (or no argument): a small hand-written collection shipped in the package
  (``mechir_nig/data/embedded``), for demos and tests that must run offline;
* ``"irds:<id>"``: any ir_datasets id (``"irds:vaswani"``, ``"irds:beir/scifact/test"``); ir_datasets
  downloads the data on first use, so this needs the network or a filled ir_datasets cache;
* a local folder in the Vaswani layout (``doc-text.trec``, ``query-text.trec``, ``qrels``) or with
  files named ``docs.tsv``/``queries.tsv``/``qrels.txt`` and similar (see :func:`load_collection`);
* explicit files, ``load_collection(docs=..., queries=..., qrels=...)``, whose formats (TREC SGML,
  TSV, JSONL, optionally gzipped) are detected from the extension or the first line.

The parsers (:func:`read_trec_docs`, :func:`read_trec_topics`, :func:`read_tsv`, :func:`read_jsonl`,
:func:`read_trec_qrels`, :func:`read_trec_run`) stream their file line by line and raise
:class:`~mechir_nig.errors.DataError` naming the file and line of anything malformed: a ``<DOC>``
without ``<DOCNO>``, an unterminated element, a qrels line without four fields, a duplicate id, an
empty text. Texts are whitespace-normalised (every run of spaces, tabs and newlines becomes one space)
so that the same text reads the same from every format.

Consistency: qrels (and scoreddocs) that name queries or documents absent from the collection are
**kept** (evaluation with ir_measures must see the complete judgements) and **reported**: counted in
``Collection.report`` and announced with a :class:`DataWarning`; :func:`~mechir_nig.data.judged_pairs`
skips them and counts what it skipped. A collection without documents or queries is a ``DataError``.

Example:
    >>> from mechir_nig.data import load_collection
    >>> col = load_collection("embedded")
    >>> col.report["qrels_unknown_docs"]
    0
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechir_nig.errors import DataError, InputError

if TYPE_CHECKING:
    from ir_measures import Qrel, ScoredDoc

__all__ = [
    "Collection",
    "DataWarning",
    "load_collection",
    "read_jsonl",
    "read_trec_docs",
    "read_trec_qrels",
    "read_trec_run",
    "read_trec_topics",
    "read_tsv",
]

PathLike = str | os.PathLike

#: Run format shared with ir_measures: ``{query_id: {doc_id: score}}``.
Run = dict[str, dict[str, float]]


class DataWarning(UserWarning):
    """A data set is usable but inconsistent (e.g. qrels naming unknown documents); see the report."""


# --------------------------------------------------------------------------------------------------
# The collection record
# --------------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Collection:
    """An IR test collection held in memory.

    Attributes:
        docs: ``doc_id -> text`` (title and body joined with a space where a source has both).
        queries: ``query_id -> text``.
        qrels: relevance judgements as ``ir_measures.Qrel(query_id, doc_id, relevance, iteration)``;
            ``relevance > 0`` is relevant. Judgements naming unknown ids are kept and reported.
        name: a label for reports (the ir_datasets id, the folder name, ``"embedded"``).
        scoreddocs: first-stage results as ``ir_measures.ScoredDoc(query_id, doc_id, score)`` when the
            source ships them (ir_datasets ``scoreddocs``, a local run file), else ``None``.
        report: counts filled on construction: ``docs``, ``queries``, ``qrels``,
            ``qrels_unknown_queries`` / ``qrels_unknown_docs`` (distinct ids named by qrels but absent
            from ``queries`` / ``docs``), ``qrels_unknown_entries`` (qrels records naming either),
            ``queries_without_qrels``, ``queries_without_relevant``, the same ``scoreddocs_unknown_*``
            counts when there are scoreddocs, plus anything the loader dropped (e.g.
            ``empty_docs_dropped`` for ir_datasets documents without text).

    Raises:
        DataError: on construction, when there are no documents or no queries.

    Example:
        >>> from ir_measures import Qrel
        >>> col = Collection(docs={"d1": "cats purr"}, queries={"q1": "why do cats purr"},
        ...                  qrels=[Qrel("q1", "d1", 1)], name="toy")
        >>> col
        Collection(name='toy', docs=1, queries=1, qrels=1, scoreddocs=None)
        >>> col.qrels_dict()
        {'q1': {'d1': 1}}
    """

    docs: dict[str, str]
    queries: dict[str, str]
    qrels: list[Qrel] = field(default_factory=list)
    name: str = "collection"
    scoreddocs: list[ScoredDoc] | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.docs, Mapping) or not isinstance(self.queries, Mapping):
            raise InputError("docs and queries must be dicts mapping ids to texts")
        if not self.docs:
            raise DataError(f"collection {self.name!r} has no documents: check the documents file or id")
        if not self.queries:
            raise DataError(f"collection {self.name!r} has no queries: check the queries file or id")
        self.docs = dict(self.docs)
        self.queries = dict(self.queries)
        self.qrels = list(self.qrels)
        if self.scoreddocs is not None:
            self.scoreddocs = list(self.scoreddocs)
        self.report = {**self.report, **self._consistency()}
        self._warn_unknown()

    def __repr__(self) -> str:
        sd = "None" if self.scoreddocs is None else str(len(self.scoreddocs))
        return (
            f"Collection(name={self.name!r}, docs={len(self.docs)}, queries={len(self.queries)}, "
            f"qrels={len(self.qrels)}, scoreddocs={sd})"
        )

    def qrels_dict(self) -> dict[str, dict[str, int]]:
        """Judgements as ``{query_id: {doc_id: relevance}}`` (the dict form ir_measures accepts)."""
        out: dict[str, dict[str, int]] = {}
        for q in self.qrels:
            out.setdefault(q.query_id, {})[q.doc_id] = q.relevance
        return out

    def _consistency(self) -> dict[str, int]:
        docs, queries = self.docs, self.queries
        unknown_q = {q.query_id for q in self.qrels if q.query_id not in queries}
        unknown_d = {q.doc_id for q in self.qrels if q.doc_id not in docs}
        judged = {q.query_id for q in self.qrels}
        with_relevant = {q.query_id for q in self.qrels if q.relevance > 0}
        report = {
            "docs": len(docs),
            "queries": len(queries),
            "qrels": len(self.qrels),
            "qrels_unknown_queries": len(unknown_q),
            "qrels_unknown_docs": len(unknown_d),
            "qrels_unknown_entries": sum(
                1 for q in self.qrels if q.query_id not in queries or q.doc_id not in docs
            ),
            "queries_without_qrels": sum(1 for qid in queries if qid not in judged),
            "queries_without_relevant": sum(1 for qid in queries if qid not in with_relevant),
        }
        if self.scoreddocs is not None:
            report["scoreddocs"] = len(self.scoreddocs)
            report["scoreddocs_unknown_queries"] = len(
                {s.query_id for s in self.scoreddocs if s.query_id not in queries}
            )
            report["scoreddocs_unknown_docs"] = len(
                {s.doc_id for s in self.scoreddocs if s.doc_id not in docs}
            )
        return report

    def _warn_unknown(self) -> None:
        r = self.report
        parts = [
            f"{r[key]} {what}"
            for key, what in (
                ("qrels_unknown_queries", "queries named by qrels"),
                ("qrels_unknown_docs", "documents named by qrels"),
                ("scoreddocs_unknown_queries", "queries named by scoreddocs"),
                ("scoreddocs_unknown_docs", "documents named by scoreddocs"),
            )
            if r.get(key)
        ]
        if parts:
            warnings.warn(
                f"collection {self.name!r}: {', '.join(parts)} are not in the collection; they are kept "
                "(evaluation sees every judgement) but judged_pairs and rerank cannot use them. Check that "
                "the files belong together; counts are in Collection.report.",
                DataWarning,
                stacklevel=4,
            )


# --------------------------------------------------------------------------------------------------
# Line streaming and helpers
# --------------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_.:-]*(?:\s[^<>]*)?/?>")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _fail(path: PathLike, line: int, problem: str, fix: str) -> DataError:
    return DataError(f"{path}, line {line}: {problem}; {fix}")


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115


def _check_file(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path} is not a file: pass the path of an existing data file")
    return p


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, newline kept), decoding UTF-8 line by line so that a bad
    byte is reported on its own line; a byte-order mark on the first line is dropped."""
    p = _check_file(path)
    lineno = 0
    with _open_binary(p) as f:
        try:
            for raw in f:
                lineno += 1
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise _fail(
                        path,
                        lineno,
                        f"not valid UTF-8 ({e.reason} at byte {e.start})",
                        "re-encode the file as UTF-8",
                    ) from e
                yield lineno, line
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise _fail(path, lineno + 1, f"cannot be read ({e})", "check or re-download the file") from e


def _claim(path: PathLike, line: int, kind: str, key: str, seen: dict[str, int]) -> None:
    if key in seen:
        raise _fail(path, line, f"duplicate {kind} {key!r} (first at line {seen[key]})", "ids must be unique")
    seen[key] = line


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------

_DOC_OPEN = re.compile(r"<DOC>", re.IGNORECASE)
_DOC_CLOSE = re.compile(r"</DOC>", re.IGNORECASE)
_DOCNO = re.compile(r"<DOCNO>(.*?)</DOCNO>", re.IGNORECASE | re.DOTALL)


def _sgml_blocks(path: PathLike, open_re: re.Pattern, close_re: re.Pattern, tag: str):
    """Yield ``(start_line, inner_text)`` of each ``<tag>...</tag>`` element, streaming lines."""
    start = 0  # line of the open element, 0 when outside one
    buf: list[str] = []
    for lineno, line in _lines(path):
        pos = 0
        while True:
            if not start:
                m = open_re.search(line, pos)
                outside = line[pos : m.start() if m else len(line)]
                if outside.strip():
                    raise _fail(
                        path,
                        lineno,
                        f"text outside a <{tag}> element ({_norm(outside)[:40]!r})",
                        f"wrap every record in <{tag}> ... </{tag}>",
                    )
                if m is None:
                    break
                start, buf, pos = lineno, [], m.end()
            else:
                close = close_re.search(line, pos)
                reopen = open_re.search(line, pos)
                if reopen is not None and (close is None or reopen.start() < close.start()):
                    raise _fail(
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
        raise _fail(
            path,
            start,
            f"<{tag}> is never closed (end of file reached)",
            f"add </{tag}> or re-download the file",
        )


def read_trec_docs(path: PathLike) -> Iterator[tuple[str, str]]:
    """Stream ``(doc_id, text)`` from a TREC SGML document file.

    Each record is ``<DOC><DOCNO>id</DOCNO> text </DOC>`` (tags may share lines or not). The text is
    everything in the element except the ``DOCNO``, with inner SGML tags (``<TEXT>``, ``<HEADLINE>``)
    removed and whitespace normalised.

    Args:
        path: the file (``.gz`` is decompressed).

    Yields:
        ``(doc_id, text)`` pairs in file order.

    Raises:
        DataError: naming the file and line of text outside ``<DOC>``, a ``<DOC>`` without
            ``<DOCNO>`` or never closed, a duplicate id, an empty text.

    Example:
        >>> docs = dict(read_trec_docs("doc-text.trec"))  # doctest: +SKIP
    """
    seen: dict[str, int] = {}
    for start, body in _sgml_blocks(path, _DOC_OPEN, _DOC_CLOSE, "DOC"):
        m = _DOCNO.search(body)
        if m is None:
            raise _fail(path, start, "<DOC> without <DOCNO>id</DOCNO>", "give every document an id")
        doc_id = _norm(m.group(1))
        if not doc_id:
            raise _fail(path, start, "empty <DOCNO></DOCNO>", "give every document a non-empty id")
        if _DOCNO.search(body, m.end()):
            raise _fail(path, start, f"document {doc_id!r} has two <DOCNO>", "keep one <DOCNO> per <DOC>")
        _claim(path, start, "document id", doc_id, seen)
        text = _norm(_TAG.sub(" ", body[: m.start()] + " " + body[m.end() :]))
        if not text:
            raise _fail(path, start, f"document {doc_id!r} has no text", "remove it or add its text")
        yield doc_id, text


_TOP_OPEN = re.compile(r"<top>", re.IGNORECASE)
_TOP_CLOSE = re.compile(r"</top>", re.IGNORECASE)
_TOPIC_TAG = re.compile(r"<(/?)(num|title|desc|narr)>", re.IGNORECASE)
_TOPIC_PREFIX = {"num": "number:", "desc": "description:", "narr": "narrative:", "title": "topic:"}
_TOPIC_FIELDS = ("title", "desc", "narr")


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
        value = _norm(_TAG.sub(" ", body[m.end() : end]))
        prefix = _TOPIC_PREFIX[name]
        if value.lower().startswith(prefix):
            value = value[len(prefix) :].strip()
        out.setdefault(name, value)
    return out


def read_trec_topics(path: PathLike, *, field: str = "title") -> Iterator[tuple[str, str]]:
    """Stream ``(query_id, text)`` from a TREC topic file.

    Each record is ``<top><num>id</num><title>text</title></top>``; closing tags of the fields are
    optional and the classic ``<num> Number: 301`` / ``<desc> Description:`` prefixes are removed.

    Args:
        path: the file (``.gz`` is decompressed).
        field: which field is the query text: ``"title"`` (default), ``"desc"`` or ``"narr"``.

    Yields:
        ``(query_id, text)`` pairs in file order.

    Raises:
        InputError: for an unknown ``field``.
        DataError: naming the file and line of text outside ``<top>``, a topic without ``<num>`` or
            without the field, an unterminated ``<top>``, a duplicate id, an empty text.

    Example:
        >>> queries = dict(read_trec_topics("query-text.trec"))  # doctest: +SKIP
    """
    if field not in _TOPIC_FIELDS:
        raise InputError(f"field must be one of {_TOPIC_FIELDS}, got {field!r}")
    seen: dict[str, int] = {}
    for start, body in _sgml_blocks(path, _TOP_OPEN, _TOP_CLOSE, "top"):
        fields = _topic_fields(body)
        query_id = fields.get("num", "")
        if not query_id:
            raise _fail(path, start, "<top> without a <num>id</num>", "give every topic an id")
        _claim(path, start, "query id", query_id, seen)
        if field not in fields:
            raise _fail(path, start, f"topic {query_id!r} has no <{field}>", "add it or pick another field=")
        if not fields[field]:
            raise _fail(path, start, f"topic {query_id!r} has an empty <{field}>", "add the query text")
        yield query_id, fields[field]


_TSV_HEADER_IDS = {"id", "_id", "doc_id", "docid", "query_id", "qid", "docno"}
_TSV_HEADER_TEXTS = {"text", "title", "query", "contents", "body", "passage"}


def read_tsv(path: PathLike) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a tab-separated file with lines ``id<TAB>text``.

    Further columns (e.g. ``id<TAB>title<TAB>body``) are joined to the text with spaces; blank lines are
    skipped, and a first line that is a header such as ``id<TAB>text`` or ``query_id<TAB>text`` too.

    Args:
        path: the file (``.gz`` is decompressed).

    Yields:
        ``(id, text)`` pairs in file order.

    Raises:
        DataError: naming the file and line of a line without a tab, an empty id or text, a duplicate id.

    Example:
        >>> docs = dict(read_tsv("docs.tsv"))  # doctest: +SKIP
    """
    seen: dict[str, int] = {}
    first = True
    for lineno, line in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if first:
            first = False
            if (
                len(parts) >= 2
                and parts[0].strip().lower() in _TSV_HEADER_IDS
                and parts[1].strip().lower() in _TSV_HEADER_TEXTS
            ):
                continue
        if len(parts) < 2:
            raise _fail(path, lineno, "no tab between id and text", "write each record as id<TAB>text")
        key = parts[0].strip()
        if not key:
            raise _fail(path, lineno, "empty id before the tab", "write each record as id<TAB>text")
        text = _norm(" ".join(parts[1:]))
        if not text:
            raise _fail(path, lineno, f"{key!r} has an empty text", "remove the line or add its text")
        _claim(path, lineno, "id", key, seen)
        yield key, text


_JSON_ID_KEYS = ("doc_id", "query_id", "_id", "id", "docid", "qid")
_JSON_TEXT_KEYS = ("text", "contents", "body", "query")


def read_jsonl(path: PathLike) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a JSON-lines file (BEIR, Pyserini and ir_datasets exports).

    Each line is an object with an id under ``doc_id``, ``query_id``, ``_id``, ``id``, ``docid`` or
    ``qid`` (first present wins) and a text under ``text``, ``contents``, ``body`` or ``query``; a
    non-empty ``title`` is prepended to the text. Blank lines are skipped.

    Args:
        path: the file (``.gz`` is decompressed).

    Yields:
        ``(id, text)`` pairs in file order.

    Raises:
        DataError: naming the file and line of invalid JSON, a line that is not an object, a missing id
            or text, a duplicate id, an empty text.

    Example:
        >>> docs = dict(read_jsonl("corpus.jsonl"))  # doctest: +SKIP
    """
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _fail(path, lineno, f"invalid JSON ({e.msg})", "write one JSON object per line") from e
        if not isinstance(obj, dict):
            raise _fail(
                path, lineno, f"a JSON {type(obj).__name__}, not an object", "write one object per line"
            )
        id_key = next((k for k in _JSON_ID_KEYS if k in obj), None)
        if id_key is None:
            raise _fail(path, lineno, "no id field", f"add one of {', '.join(_JSON_ID_KEYS)}")
        raw = obj[id_key]
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise _fail(path, lineno, f"{id_key} is {raw!r}", "ids must be strings or integers")
        key = str(raw).strip()
        if not key:
            raise _fail(path, lineno, f"empty {id_key}", "give every record a non-empty id")
        text_key = next((k for k in _JSON_TEXT_KEYS if k in obj), None)
        if text_key is None and "title" not in obj:
            raise _fail(
                path, lineno, f"{key!r} has no text field", f"add one of {', '.join(_JSON_TEXT_KEYS)}"
            )
        pieces = [obj.get("title"), obj.get(text_key) if text_key else None]
        if any(p is not None and not isinstance(p, str) for p in pieces):
            raise _fail(path, lineno, f"{key!r} has a non-string title or text", "store texts as strings")
        text = _norm(" ".join(p for p in pieces if p))
        if not text:
            raise _fail(path, lineno, f"{key!r} has an empty text", "remove the line or add its text")
        _claim(path, lineno, "id", key, seen)
        yield key, text


def read_trec_qrels(path: PathLike) -> Iterator[Qrel]:
    """Stream judgements from a TREC qrels file with lines ``query_id iteration doc_id relevance``.

    Fields are separated by any whitespace; blank lines are skipped.

    Args:
        path: the file (``.gz`` is decompressed).

    Yields:
        ``ir_measures.Qrel(query_id, doc_id, relevance, iteration)`` records in file order.

    Raises:
        DataError: naming the file and line of a line without exactly four fields, a relevance that is
            not an integer, a judgement repeated for the same query and document.

    Example:
        >>> qrels = list(read_trec_qrels("qrels"))  # doctest: +SKIP
    """
    from ir_measures import Qrel

    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise _fail(
                path,
                lineno,
                f"{len(fields)} fields, expected 4",
                "write qrels lines as 'query_id iteration doc_id relevance' (e.g. '1 0 d7 1')",
            )
        query_id, iteration, doc_id, rel = fields
        try:
            relevance = int(rel)
        except ValueError:
            raise _fail(path, lineno, f"relevance {rel!r} is not an integer", "use 0, 1, 2, ...") from None
        _claim(path, lineno, "judgement for query/doc", f"{query_id} {doc_id}", seen)
        yield Qrel(query_id, doc_id, relevance, iteration)


def read_trec_run(path: PathLike) -> Run:
    """Read a TREC run file with lines ``query_id Q0 doc_id rank score tag``.

    Args:
        path: the file (``.gz`` is decompressed).

    Returns:
        The run as ``{query_id: {doc_id: score}}`` (ir_measures' dict format; the rank column is checked
        but ranking follows the scores, as in trec_eval).

    Raises:
        DataError: naming the file and line of a line without exactly six fields, a rank that is not an
            integer, a score that is not a finite number, a document repeated for a query; or an empty file.

    Example:
        >>> run = read_trec_run("bm25.run")  # doctest: +SKIP
    """
    run: Run = {}
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise _fail(
                path,
                lineno,
                f"{len(fields)} fields, expected 6",
                "write run lines as 'query_id Q0 doc_id rank score tag'",
            )
        query_id, _, doc_id, rank, score, _ = fields
        try:
            int(rank)
        except ValueError:
            raise _fail(
                path, lineno, f"rank {rank!r} is not an integer", "write ranks as 1, 2, ..."
            ) from None
        try:
            value = float(score)
        except ValueError:
            raise _fail(
                path, lineno, f"score {score!r} is not a number", "write scores as decimals"
            ) from None
        if not math.isfinite(value):
            raise _fail(path, lineno, f"score {score!r} is not finite", "write finite scores")
        _claim(path, lineno, "document for query", f"{query_id} {doc_id}", seen)
        run.setdefault(query_id, {})[doc_id] = value
    if not run:
        raise DataError(
            f"{path}: the run file has no results; write 'query_id Q0 doc_id rank score tag' lines"
        )
    return run


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_EMBEDDED = "embedded"
_ROLES = ("docs", "queries", "qrels", "run")
_FOLDER_NAMES = {
    "docs": ("doc-text.trec", "docs.trec", "docs.tsv", "docs.jsonl", "corpus.jsonl", "collection.tsv"),
    "queries": (
        "query-text.trec",
        "queries.trec",
        "topics.trec",
        "queries.tsv",
        "queries.jsonl",
        "topics.tsv",
    ),
    "qrels": ("qrels", "qrels.txt", "qrels.trec", "qrels.tsv"),
    "run": ("run", "run.txt", "run.trec"),
}


def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".tsv", ".tab"):
        return "tsv"
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext in (".trec", ".sgml", ".xml", ".trectext", ".topics"):
        return "trec"
    for _, line in _lines(path):
        head = line.strip()
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


def _read_texts(path: PathLike, role: str, topic_field: str) -> dict[str, str]:
    p = _check_file(path)
    fmt = _format_of(p)
    if fmt == "tsv":
        return dict(read_tsv(p))
    if fmt == "jsonl":
        return dict(read_jsonl(p))
    return dict(read_trec_docs(p) if role == "docs" else read_trec_topics(p, field=topic_field))


def _scoreddocs(run: Run) -> list[ScoredDoc]:
    from ir_measures import ScoredDoc

    return [ScoredDoc(qid, did, score) for qid, docs in run.items() for did, score in docs.items()]


def _from_files(
    docs: PathLike,
    queries: PathLike,
    qrels: PathLike | None,
    run: PathLike | None,
    name: str,
    topic_field: str,
) -> Collection:
    return Collection(
        docs=_read_texts(docs, "docs", topic_field),
        queries=_read_texts(queries, "queries", topic_field),
        qrels=list(read_trec_qrels(qrels)) if qrels is not None else [],
        name=name,
        scoreddocs=_scoreddocs(read_trec_run(run)) if run is not None else None,
    )


def _find_in_folder(folder: Path) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for role, names in _FOLDER_NAMES.items():
        hits = [folder / n for n in names if (folder / n).is_file()]
        hits += [folder / (n + ".gz") for n in names if (folder / (n + ".gz")).is_file()]
        if len(hits) > 1:
            raise DataError(
                f"{folder}: several {role} files ({', '.join(h.name for h in hits)}); pass the one to use "
                f"explicitly, e.g. load_collection({role}=...)"
            )
        found[role] = hits[0] if hits else None
    for role in ("docs", "queries"):
        if found[role] is None:
            present = sorted(p.name for p in folder.iterdir())[:10]
            raise DataError(
                f"{folder}: no {role} file; expected one of {', '.join(_FOLDER_NAMES[role])} (found: "
                f"{', '.join(present) or 'nothing'}); rename it or pass {role}=path explicitly"
            )
    return found


def _embedded() -> Collection:
    from importlib.resources import as_file, files

    root = files("mechir_nig.data").joinpath("embedded")
    with (
        as_file(root.joinpath("docs.tsv")) as docs,
        as_file(root.joinpath("queries.tsv")) as queries,
        as_file(root.joinpath("qrels.txt")) as qrels,
    ):
        return _from_files(docs, queries, qrels, None, _EMBEDDED, "title")


_IRDS_DOC_FIELDS = ("text", "body", "abstract", "contents", "passage")


def _irds_doc_text(record: Any) -> str:
    """Title and text of an ir_datasets document joined (``default_text()`` when it has neither)."""
    title = getattr(record, "title", None)
    body = next(
        (getattr(record, f) for f in _IRDS_DOC_FIELDS if isinstance(getattr(record, f, None), str)), None
    )
    if body is None and not isinstance(title, str) and hasattr(record, "default_text"):
        body = record.default_text()
    return _norm(" ".join(p for p in (title, body) if isinstance(p, str) and p))


def _irds_query_text(record: Any) -> str:
    """The ``text`` of an ir_datasets query, else its ``title``, else ``default_text()``."""
    for f in ("text", "title", "query"):
        value = getattr(record, f, None)
        if isinstance(value, str):
            return _norm(value)
    return _norm(record.default_text()) if hasattr(record, "default_text") else ""


def _from_irds(dataset_id: str, name: str | None) -> Collection:
    try:
        import ir_datasets
    except ImportError as e:  # pragma: no cover - ir_datasets is a dependency
        raise DataError("ir_datasets is not installed: `pip install ir-datasets`, or load local files") from e
    from ir_measures import Qrel, ScoredDoc

    try:
        ds = ir_datasets.load(dataset_id)
    except KeyError:
        raise InputError(
            f"unknown ir_datasets id {dataset_id!r}: use an id listed at https://ir-datasets.com "
            "(e.g. 'irds:vaswani', 'irds:beir/scifact/test')"
        ) from None
    if not (ds.has_docs() and ds.has_queries()):
        raise InputError(
            f"ir_datasets id {dataset_id!r} lacks documents or queries: use an id with both, such as a "
            "test subset (e.g. 'irds:msmarco-passage/dev/small' rather than 'irds:msmarco-passage')"
        )
    report = {"empty_docs_dropped": 0, "empty_queries_dropped": 0}
    try:
        docs: dict[str, str] = {}
        for d in ds.docs_iter():
            text = _irds_doc_text(d)
            if text:
                docs[d.doc_id] = text
            else:
                report["empty_docs_dropped"] += 1
        queries: dict[str, str] = {}
        for q in ds.queries_iter():
            text = _irds_query_text(q)
            if text:
                queries[q.query_id] = text
            else:
                report["empty_queries_dropped"] += 1
        qrels = (
            [
                Qrel(r.query_id, r.doc_id, int(r.relevance), str(getattr(r, "iteration", "0")))
                for r in ds.qrels_iter()
            ]
            if ds.has_qrels()
            else []
        )
        scoreddocs = (
            [ScoredDoc(s.query_id, s.doc_id, float(s.score)) for s in ds.scoreddocs_iter()]
            if ds.has_scoreddocs()
            else None
        )
    except Exception as e:
        detail = _norm(str(e))[:200]
        raise DataError(
            f"ir_datasets could not fetch {dataset_id!r} ({type(e).__name__}: {detail}). It downloads data on "
            "first use: check the network connection or the ir_datasets cache (IR_DATASETS_HOME), or use local "
            "files with load_collection(folder) / load_collection(docs=..., queries=..., qrels=...)"
        ) from e
    dropped = {k: v for k, v in report.items() if v}
    if dropped:
        warnings.warn(
            f"{dataset_id}: dropped records without text ({dropped}); counts are in Collection.report",
            DataWarning,
            stacklevel=3,
        )
    return Collection(
        docs=docs, queries=queries, qrels=qrels, name=name or dataset_id, scoreddocs=scoreddocs, report=report
    )


def load_collection(
    spec: PathLike | Mapping[str, PathLike] | None = None,
    *,
    docs: PathLike | None = None,
    queries: PathLike | None = None,
    qrels: PathLike | None = None,
    run: PathLike | None = None,
    name: str | None = None,
    topic_field: str = "title",
) -> Collection:
    """Load a test collection from ir_datasets, local files or the embedded set.

    Args:
        spec: one of

            * ``None`` or ``"embedded"``: the small collection shipped in the package;
            * ``"irds:<id>"``: an ir_datasets id (documents, queries, qrels and, when the data set has
              them, scoreddocs; document text is title and text joined);
            * a folder holding a documents file (``doc-text.trec``, ``docs.trec``, ``docs.tsv``,
              ``docs.jsonl``, ``corpus.jsonl``, ``collection.tsv``), a queries file (``query-text.trec``,
              ``queries.trec``, ``topics.trec``, ``queries.tsv``, ``queries.jsonl``, ``topics.tsv``),
              optionally a TREC qrels file (``qrels``, ``qrels.txt``, ``qrels.trec``, ``qrels.tsv``) and a
              TREC run (``run``, ``run.txt``, ``run.trec``), each possibly gzipped;
            * a dict with keys among ``docs``, ``queries``, ``qrels``, ``run`` naming files.
        docs, queries: files of documents / queries (instead of ``spec``): TREC SGML, TSV or JSONL,
            detected from the extension (``.trec``, ``.tsv``, ``.jsonl``; ``.gz`` allowed) or the first line.
        qrels: a TREC qrels file (optional: without it the collection has no judgements).
        run: a TREC run file whose results become ``scoreddocs`` (optional).
        name: label of the collection (default: the ir_datasets id, the folder or docs file name).
        topic_field: for TREC topic files, the field used as query text (``title``, ``desc``, ``narr``).

    Returns:
        The :class:`Collection`, with consistency counts in ``report``.

    Raises:
        InputError: for a spec that is none of the above, a missing file, an unknown ir_datasets id, or
            ``spec`` combined with ``docs=``/``queries=``/``qrels=``/``run=``.
        DataError: for malformed files (naming file and line), an ir_datasets id that cannot be fetched
            (e.g. offline), or a collection without documents or queries.

    Example:
        >>> col = load_collection("embedded")
        >>> vaswani = load_collection("/data/vaswani")  # doctest: +SKIP
        >>> col2 = load_collection(docs="d.tsv", queries="q.tsv", qrels="qrels.txt")  # doctest: +SKIP
    """
    if topic_field not in _TOPIC_FIELDS:
        raise InputError(f"topic_field must be one of {_TOPIC_FIELDS}, got {topic_field!r}")
    explicit = {"docs": docs, "queries": queries, "qrels": qrels, "run": run}
    given = {k: v for k, v in explicit.items() if v is not None}
    if spec is not None and given:
        raise InputError(f"pass either spec or {'/'.join(given)}=, not both")
    if spec is None and not given:
        spec = _EMBEDDED
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(_ROLES))
        if unknown:
            raise InputError(f"unknown keys {unknown} in the files dict: use {', '.join(_ROLES)}")
        given = {k: v for k, v in spec.items() if v is not None}
        spec = None
    if spec is None:
        if "docs" not in given or "queries" not in given:
            raise InputError("pass both docs= and queries= (and usually qrels=) files")
        label = name or Path(given["docs"]).parent.name or Path(given["docs"]).stem
        return _from_files(
            given["docs"], given["queries"], given.get("qrels"), given.get("run"), label, topic_field
        )
    if isinstance(spec, str) and (spec == _EMBEDDED or spec.startswith("irds:")) and topic_field != "title":
        raise InputError(
            "topic_field applies to TREC topic files only: leave it out for 'embedded' and 'irds:' ids"
        )
    if isinstance(spec, str) and spec == _EMBEDDED:
        collection = _embedded()
        if name:
            collection.name = name
        return collection
    if isinstance(spec, str) and spec.startswith("irds:"):
        dataset_id = spec[len("irds:") :].strip()
        if not dataset_id:
            raise InputError("'irds:' needs an ir_datasets id after the colon, e.g. 'irds:vaswani'")
        return _from_irds(dataset_id, name)
    if not isinstance(spec, str | os.PathLike):
        raise InputError(f"spec must be a string, a path or a dict of files, got {type(spec).__name__}")
    folder = Path(spec)
    if folder.is_dir():
        found = _find_in_folder(folder)
        return _from_files(
            found["docs"],  # type: ignore[arg-type]
            found["queries"],  # type: ignore[arg-type]
            found["qrels"],
            found["run"],
            name or folder.resolve().name,
            topic_field,
        )
    if folder.is_file():
        raise InputError(f"{spec} is a file: pass its folder, or docs=, queries=, qrels= for single files")
    raise InputError(
        f"{spec!r} is neither 'embedded', an 'irds:<ir_datasets id>' nor an existing folder: fix the path or "
        "pass docs=, queries=, qrels= files"
    )


def _select_query_ids(
    available: Mapping[str, Any] | Iterable[str], query_ids: Iterable[str] | None, what: str
) -> list[str]:
    """``query_ids`` (checked against ``available``) or all of ``available``, in a stable order."""
    pool = available if isinstance(available, Mapping) else dict.fromkeys(available)
    if query_ids is None:
        return list(pool)
    if isinstance(query_ids, str):
        raise InputError("query_ids must be a list of ids, not a single string: wrap it in a list")
    ids = list(dict.fromkeys(str(q) for q in query_ids))
    missing = [q for q in ids if q not in pool]
    if missing:
        raise InputError(
            f"{len(missing)} query ids are not in {what} (e.g. {missing[:5]}): pass ids from {what}"
        )
    return ids
