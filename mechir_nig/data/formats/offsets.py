"""Byte-offset index of a local documents file, so a lookup by id seeks instead of re-reading the file.

A lazily loaded local corpus (``load_collection(..., lazy=True)``) answers ``docs.get_many(ids)``
through :class:`OffsetIndex`. The first lookup reads the file once and records, for every record, one
64-bit key: the hash of its id in the high bits, the byte offset of its line in the low bits (8 bytes
per document, ~16 MB for 2M documents, never the texts), sorted in place. Every lookup then hashes the
ids asked for, finds their lines by binary search, seeks to them in file order and parses just those
lines with the format's own parser, so texts, ids and the ``empty=`` policy are exactly those of a full
scan (a hash collision only reads one more line, which the parser's id filter drops). A lookup that
meets a malformed, duplicate or empty requested record is redone as a scan, so its error or its
``skipped`` entries name the right line.

As ir_datasets does per format, the index covers the line-per-record formats: uncompressed TSV and JSON
lines of at least ``min_bytes`` (16 MiB; a smaller file is scanned in well under a second). TREC SGML
(records span and share lines), ``.gz`` files (no seeking) and files whose lines end in a bare ``\\r``
are looked up by one streaming pass per call, as before. The index is rebuilt when the file's size,
modification time or inode change, so a corpus rewritten in place is never read through stale offsets.
It lives in memory only (ids are hashed with Python's per-process ``hash``).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "docs.tsv"
    >>> _ = path.write_text("id\\ttext\\nd1\\tcats purr\\nd2\\tdogs bark\\n")
    >>> index = OffsetIndex(path, min_bytes=0)
    >>> index.get_many(["d2", "nope"]), index.indexed
    ({'d2': 'dogs bark'}, 2)
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from mechir_nig.data.formats._io import PathLike, _decode, check_file
from mechir_nig.data.formats.jsonl import read_jsonl
from mechir_nig.data.formats.tsv import read_tsv
from mechir_nig.errors import DataError

__all__ = ["MIN_BYTES", "OffsetIndex"]

#: The parser of each indexable format: ``parser(path, empty=, skipped=, only=, source=, header=)``.
_PARSERS: dict[str, Callable[..., Iterator[tuple[str, str]]]] = {"tsv": read_tsv, "jsonl": read_jsonl}
#: Files smaller than this are scanned per lookup (a scan of 16 MiB takes a fraction of a second).
MIN_BYTES = 16 * 2**20


class _Unindexable(Exception):
    """The file's lines cannot be addressed by offset (bare ``\\r`` line breaks)."""


class _Recorder:
    """An ``only=`` container that records each record's key (id hash, line offset) and selects none."""

    def __init__(self, offset_bits: int) -> None:
        self.keys = array("Q")
        self.bits, self.hash_mask = offset_bits, (1 << (64 - offset_bits)) - 1
        self.offset = 0  # of the line the parser is at, set by the line source

    def __contains__(self, key: object) -> bool:
        self.keys.append(((hash(key) & self.hash_mask) << self.bits) | self.offset)
        return False


def _line(path: PathLike, offset: int, lineno: int, raw: bytes) -> str:
    try:  # as mechir_nig.data.formats._io.lines: the file's first line drops a byte-order mark
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError:
        return _decode(path, lineno, raw)  # raises, naming the line


class OffsetIndex:
    """``get_many(ids)`` over a local documents file, by seeking to the ids' lines.

    Args:
        path: a TSV or JSON-lines documents file (other formats and ``.gz`` are scanned per lookup).
        fmt: its format (``detect_format``'s answer) when already known.
        min_bytes: smaller files are scanned per lookup instead of indexed (default :data:`MIN_BYTES`).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "collection.tsv"
        >>> _ = path.write_text("".join(f"{i}\\tdocument number {i}\\n" for i in range(100)))
        >>> docs = OffsetIndex(path, min_bytes=0).get_many(["7", "42", "missing"])
        >>> docs
        {'7': 'document number 7', '42': 'document number 42'}
    """

    def __init__(self, path: PathLike, fmt: str | None = None, *, min_bytes: int | None = None) -> None:
        from mechir_nig.data.formats import detect_format

        self.path = check_file(path)
        self.fmt = fmt or detect_format(self.path)
        self.min_bytes = MIN_BYTES if min_bytes is None else min_bytes
        #: Whether lookups may seek (``False``: one streaming pass per lookup).
        self.indexable = self.fmt in _PARSERS and self.path.suffix.lower() != ".gz"
        self._stamp: tuple[int, int, int] | None = None
        self._keys: np.ndarray = np.zeros(0, dtype=np.uint64)
        self._bits = 0
        #: How many times the index was built (a changed file rebuilds it).
        self.builds = 0

    @property
    def seeks(self) -> bool:
        """Whether lookups seek through the index (else each lookup is one pass over the file)."""
        return self.indexable and os.path.getsize(self.path) >= self.min_bytes

    @property
    def indexed(self) -> int:
        """Records in the index (0 before the first indexed lookup)."""
        return len(self._keys)

    def get_many(
        self, doc_ids: Iterable[str], *, empty: str = "error", skipped: list[tuple[str, int]] | None = None
    ) -> dict[str, str]:
        """Texts of the ids found, read as the format's parser reads them; unknown ids are left out.

        Args:
            doc_ids: the ids to look up.
            empty: the parser's ``empty=`` policy for the records read.
            skipped: receives ``(id, line)`` of requested records skipped as empty (``empty="skip"``).

        Raises:
            DataError: as a scan of the file for these ids (malformed lines, a duplicate or empty
                requested record with ``empty="error"``).
        """
        ids = frozenset(doc_ids)
        if not ids:
            return {}
        if self.indexable and self._fresh():
            found = self._lookup(ids, empty)
            if found is not None:
                return found
        from mechir_nig.data.formats import read_texts

        return dict(read_texts(self.path, "docs", empty=empty, skipped=skipped, only=ids))

    def _lookup(self, ids: frozenset[str], empty: str) -> dict[str, str] | None:
        """The indexed lookup; ``None`` when a requested record is malformed, repeated or empty."""
        bits, keys = self._bits, self._keys
        mask = np.uint64((1 << (64 - bits)) - 1)
        wanted = np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids)).view(np.uint64) & mask
        low = wanted << np.uint64(bits)
        lo = np.searchsorted(keys, low, "left")
        counts = np.searchsorted(keys, low | np.uint64((1 << bits) - 1), "right") - lo
        rows = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        offsets = np.unique(keys[rows] & np.uint64((1 << bits) - 1))  # sorted: one forward sweep
        skipped: list[tuple[str, int]] = []
        extra = {"header": False} if self.fmt == "tsv" else {}
        source = self._read(offsets.tolist())
        try:
            found = dict(
                _PARSERS[self.fmt](self.path, empty=empty, skipped=skipped, only=ids, source=source, **extra)
            )
        except DataError:
            return None  # the scan raises it again, naming the line
        return None if skipped else found

    # -- the index ----------------------------------------------------------------------------------
    def _fresh(self) -> bool:
        """Build the index unless it matches the file's size, mtime and inode; ``False``: scan instead."""
        st = os.stat(self.path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            if st.st_size < self.min_bytes:
                return False
            try:
                self._build(st.st_size)
            except _Unindexable:
                self.indexable = False
                return False
            self._stamp = stamp
        return True

    def _build(self, size: int) -> None:
        """One pass of the format's parser that selects nothing, recording every record's key.

        The parser checks each line's structure as a lookup scan does (a malformed line is a DataError
        naming it); texts, duplicates and empty texts are checked when a record is looked up, as before.
        """
        rec = _Recorder(max(1, size.bit_length()))

        def numbered() -> Iterator[tuple[int, str]]:
            offset = 0
            with open(self.path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    if lineno == 1 and not raw.endswith(b"\n") and b"\r" in raw.rstrip(b"\r"):
                        raise _Unindexable  # classic Mac OS line breaks: lines() splits them itself
                    rec.offset = offset
                    offset += len(raw)
                    yield lineno, _line(self.path, offset - len(raw), lineno, raw)

        self._keys, self._stamp = np.zeros(0, dtype=np.uint64), None
        for _ in _PARSERS[self.fmt](self.path, empty="skip", skipped=[], only=rec, source=numbered()):
            pass  # pragma: no cover - the recorder selects no record
        keys = np.frombuffer(rec.keys, dtype=np.uint64)
        keys.sort()  # in place: the index costs its 8 bytes per record and no more
        self._keys, self._bits = keys, rec.bits
        self.builds += 1

    def _read(self, offsets: list[int]) -> Iterator[tuple[int, str]]:
        """``(0, line)`` at each offset: line numbers are unknown here (errors are redone as a scan)."""
        with open(self.path, "rb") as f:
            for offset in offsets:
                f.seek(offset)
                yield 0, _line(self.path, offset, 0, f.readline())

    def __repr__(self) -> str:
        state = f"indexed={self.indexed}" if self.indexable else "scanned per lookup"
        return f"OffsetIndex({str(self.path)!r}, fmt={self.fmt!r}, {state})"
