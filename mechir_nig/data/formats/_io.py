"""Line streaming and error helpers shared by the parsers of :mod:`mechir_nig.data.formats`.

Every parser reads its file through :func:`lines` (UTF-8 decoded line by line, ``.gz`` decompressed,
a byte-order mark dropped) and reports a malformed record with :func:`fail`, whose message names the
file and the line and says what to fix. Records with an empty text go through :class:`EmptyRecords`,
which raises (``empty="error"``, the default) or skips and counts them (``empty="skip"``).

Accepted input, the same for every format:

* **Encoding**: UTF-8 only. A line that is not valid UTF-8 (Latin-1, UTF-16, binary) raises a
  :class:`~mechir_nig.errors.DataError` naming the file and line; nothing is guessed or replaced.
* **Byte-order mark**: a UTF-8 BOM at the start of the file is dropped; a ``U+FEFF`` anywhere else
  (files concatenated with ``cat``) counts as whitespace, so it never ends up in an id.
* **Line endings**: ``\\n`` and ``\\r\\n`` (a trailing ``\\r`` is whitespace); a file whose only line
  breaks are bare ``\\r`` (classic Mac OS) is split on them.
* **Whitespace**: Unicode whitespace *and* control characters (NUL, ESC, DEL, C1 controls, category
  ``Cc``) are whitespace: :func:`norm` turns every run of them into one space and trims the ends of
  texts and ids, and qrels and run lines are split on them (:func:`split_fields`). A text that is
  empty after this is an empty record (see above).

Example:
    >>> from mechir_nig.data.formats._io import norm
    >>> norm("  two\\n  words ")
    'two words'
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from mechir_nig._warn import caller_stacklevel
from mechir_nig.errors import DataError, DataWarning, InputError

PathLike = str | os.PathLike
#: What a parser does with a record whose text is empty: raise a DataError, or skip and count it.
EmptyPolicy = Literal["error", "skip"]
EMPTY_POLICIES = ("error", "skip")

#: Whitespace for texts, ids and fields: Unicode whitespace, control characters (``Cc``) and U+FEFF.
_WS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\ufeff]+")
_WS_ENDS = re.compile(r"^[\s\x00-\x1f\x7f-\x9f\ufeff]+|[\s\x00-\x1f\x7f-\x9f\ufeff]+$")
#: An SGML/XML tag (``<TEXT>``, ``</B>``, ``<br/>``), removed from TREC texts.
TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_.:-]*(?:\s[^<>]*)?/?>")


def norm(text: str) -> str:
    """Whitespace-normalise: every run of whitespace or control characters (spaces, tabs, newlines,
    NUL, ...) becomes one space, ends trimmed."""
    return _WS.sub(" ", text).strip(" ")


def trim(text: str) -> str:
    """``text`` without leading and trailing whitespace (whitespace as in :func:`norm`), inside untouched."""
    return _WS_ENDS.sub("", text)


def split_fields(line: str) -> list[str]:
    """The whitespace-separated fields of a qrels or run line (whitespace as in :func:`norm`).

    Example:
        >>> split_fields("q1 0\\td1\\x001\\r\\n")
        ['q1', '0', 'd1', '1']
    """
    return [f for f in _WS.split(line) if f]


def fail(path: PathLike, line: int, problem: str, fix: str) -> DataError:
    """A :class:`DataError` reading ``"<path>, line <line>: <problem>; <fix>"``."""
    return DataError(f"{path}, line {line}: {problem}; {fix}")


def rows(path: PathLike, n: int, layout: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of each non-blank line of the whitespace-separated file ``path``;
    a line without exactly ``n`` fields is a DataError asking for ``layout``."""
    for lineno, line in lines(path):
        fields = split_fields(line)
        if not fields:
            continue
        if len(fields) != n:
            raise fail(path, lineno, f"{len(fields)} fields, expected {n}", f"write {layout}")
        yield lineno, fields


def check_empty_policy(empty: str) -> None:
    """Reject an ``empty=`` value other than ``"error"`` or ``"skip"``."""
    if empty not in EMPTY_POLICIES:
        raise InputError(
            f"empty must be 'error' (a record with an empty text is an error) or 'skip' (skip and count "
            f"it), got {empty!r}"
        )


def check_file(path: PathLike) -> Path:
    """``path`` as a ``Path``; InputError when it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path} is not a file: pass the path of an existing data file")
    return p


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115


def lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, newline kept) of a text file, streaming.

    UTF-8 is decoded line by line so that a bad byte is reported on its own line; a byte-order mark
    on the first line is dropped; ``.gz`` files are decompressed. Lines end in ``\\n`` (a ``\\r`` before
    it is kept in the line); a file without any ``\\n`` whose lines end in a bare ``\\r`` (classic Mac
    OS) is split on ``\\r``, so its records are never run together.

    Raises:
        InputError: when ``path`` is not a file.
        DataError: naming the line that is not valid UTF-8, or where a gzip stream is truncated.
    """
    p = check_file(path)
    lineno = 0
    with _open_binary(p) as f:
        try:
            for chunk in f:
                # The first chunk is the whole file when it has no \n: then bare \r are the line breaks.
                bare_cr = lineno == 0 and not chunk.endswith(b"\n") and b"\r" in chunk.rstrip(b"\r")
                for raw in chunk.split(b"\r") if bare_cr else (chunk,):
                    lineno += 1
                    try:  # inline: this runs once per line of files with millions of lines
                        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                    except UnicodeDecodeError:
                        text = _decode(path, lineno, raw)  # raises, naming the line
                    yield lineno, text
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise fail(path, lineno + 1, f"cannot be read ({e})", "check or re-download the file") from e


def _decode(path: PathLike, lineno: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        utf16 = lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = "; the file starts with a UTF-16 byte-order mark" if utf16 else ""
        raise fail(
            path,
            lineno,
            f"not valid UTF-8 ({e.reason} at byte {e.start}{hint})",
            "re-encode the file as UTF-8",
        ) from e


def claim(path: PathLike, line: int, kind: str, key: str, seen: dict[str, int]) -> None:
    """Record ``key`` as first seen at ``line``; a DataError naming both lines when it was seen before."""
    if key in seen:
        raise fail(path, line, f"duplicate {kind} {key!r} (first at line {seen[key]})", "ids must be unique")
    seen[key] = line


class EmptyRecords:
    """Applies an ``empty=`` policy while a parser streams one file.

    With ``"error"`` :meth:`handle` raises a DataError naming the file and line and the ``empty='skip'``
    way out; with ``"skip"`` it records ``(id, line)`` in ``skipped`` (the caller's list when given) and,
    at :meth:`finish`, warns how many records were skipped unless the caller collects them itself
    (``load_collection`` does, and warns once per file with the role of the file).
    """

    def __init__(self, path: PathLike, empty: str, skipped: list[tuple[str, int]] | None) -> None:
        check_empty_policy(empty)
        self.path, self.empty = path, empty
        self.collect = skipped is not None
        self.skipped: list[tuple[str, int]] = skipped if skipped is not None else []

    def handle(self, line: int, problem: str, key: str) -> None:
        """Raise for ``empty="error"``; record ``key`` as skipped for ``empty="skip"``."""
        if self.empty == "error":
            raise fail(
                self.path,
                line,
                problem,
                "remove the record or add its text, or load with empty='skip' to skip such records "
                "(they are counted in Collection.report)",
            )
        self.skipped.append((key, line))

    def finish(self) -> None:
        """Warn about the skipped records when nobody collects them."""
        if self.skipped and not self.collect:
            warnings.warn(
                f"{self.path}: skipped {len(self.skipped)} records with an empty text (e.g. "
                f"{[k for k, _ in self.skipped[:5]]})",
                DataWarning,
                stacklevel=caller_stacklevel(),
            )
