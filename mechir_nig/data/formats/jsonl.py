"""JSON-lines records (BEIR ``corpus.jsonl``/``queries.jsonl``, Pyserini and ir_datasets exports).

:func:`read_jsonl` streams ``(id, text)`` pairs, one JSON object per line; a non-empty ``title`` is
prepended to the text. Malformed lines raise :class:`~mechir_nig.errors.DataError` naming the file and
line. Encoding, BOM, line endings and whitespace follow :mod:`mechir_nig.data.formats`; in addition a
key repeated inside one object (``json`` would keep the last silently) and a lone surrogate escape
(``"\\ud800"``, not Unicode text) are DataErrors.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
    >>> _ = path.write_text('{"_id": "d1", "title": "Cats", "text": "Cats purr."}\\n')
    >>> list(read_jsonl(path))
    [('d1', 'Cats Cats purr.')]
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator

from mechir_nig.data.formats._io import EmptyRecords, PathLike, claim, fail, lines, norm, trim

__all__ = ["JSON_ID_KEYS", "JSON_TEXT_KEYS", "read_jsonl"]

#: Keys holding a record's id, the first present wins.
JSON_ID_KEYS = ("doc_id", "query_id", "_id", "id", "docid", "qid")
#: Keys holding a record's text, the first present wins (a ``title`` is prepended).
JSON_TEXT_KEYS = ("text", "contents", "body", "query")


class _DuplicateKey(Exception):
    """A key repeated inside one JSON object (``json`` would silently keep the last value)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate from a ``\\udXXX`` escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_jsonl(
    path: PathLike,
    *,
    empty: str = "error",
    skipped: list[tuple[str, int]] | None = None,
    only: Container[str] | None = None,
    source: Iterable[tuple[int, str]] | None = None,
) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a JSON-lines file.

    Each line is an object with an id under ``doc_id``, ``query_id``, ``_id``, ``id``, ``docid`` or
    ``qid`` (first present wins) and a text under ``text``, ``contents``, ``body`` or ``query``; a
    non-empty ``title`` is prepended to the text. Blank lines are skipped.

    Args:
        path: the file (``.gz`` is decompressed).
        empty: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        skipped: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        only: shared by the text parsers (see :mod:`mechir_nig.data.formats`).
        source: shared by the text parsers (see :mod:`mechir_nig.data.formats`).

    Raises:
        DataError: naming the file and line of invalid JSON, a line that is not an object, a key repeated
            in an object, a missing id or text field, a lone surrogate escape, a duplicate id, an empty
            text (with ``empty="error"``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "corpus.jsonl").write_text(
        ...     '{"_id": "d1", "title": "Neurons", "text": "A neuron is a cell."}\\n{"id": 2, "contents": "Tea."}\\n')
        >>> docs = dict(read_jsonl(folder / "corpus.jsonl"))
        >>> docs  # a title is prepended to the text
        {'d1': 'Neurons A neuron is a cell.', '2': 'Tea.'}
    """
    empties = EmptyRecords(path, empty, skipped)
    seen: dict[str, int] = {}
    for lineno, line in lines(path) if source is None else source:
        line = trim(line)
        if not line:
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise fail(path, lineno, f"invalid JSON ({e.msg})", "write one JSON object per line") from e
        except _DuplicateKey as e:
            raise fail(path, lineno, f"key {e.args[0]!r} twice in one object", "keep one of them") from None
        if not isinstance(obj, dict):
            raise fail(
                path, lineno, f"a JSON {type(obj).__name__}, not an object", "write one object per line"
            )
        id_key = next((k for k in JSON_ID_KEYS if k in obj), None)
        if id_key is None:
            raise fail(path, lineno, "no id field", f"add one of {', '.join(JSON_ID_KEYS)}")
        raw = obj[id_key]
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise fail(path, lineno, f"{id_key} is {raw!r}", "ids must be strings or integers")
        key = norm(str(raw))
        if not key:
            raise fail(path, lineno, f"empty {id_key}", "give every record a non-empty id")
        if only is not None and key not in only:
            continue
        text_key = next((k for k in JSON_TEXT_KEYS if k in obj), None)
        if text_key is None and "title" not in obj:
            raise fail(path, lineno, f"{key!r} has no text field", f"add one of {', '.join(JSON_TEXT_KEYS)}")
        pieces = [obj.get("title"), obj.get(text_key) if text_key else None]
        if any(p is not None and not isinstance(p, str) for p in pieces):
            raise fail(path, lineno, f"{key!r} has a non-string title or text", "store texts as strings")
        bad = next((s for s in (key, *pieces) if isinstance(s, str) and not _encodable(s)), None)
        if bad is not None:
            raise fail(
                path,
                lineno,
                f"record {key!r} holds a lone surrogate escape (e.g. \\ud800), which is not Unicode text",
                "write characters outside the BMP as surrogate pairs or unescaped UTF-8",
            )
        claim(path, lineno, "id", key, seen)
        text = norm(" ".join(p for p in pieces if p))
        if not text:
            empties.handle(lineno, f"{key!r} has an empty text", key)
            continue
        yield key, text
    empties.finish()
