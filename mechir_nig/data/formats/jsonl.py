"""JSON-lines records (BEIR ``corpus.jsonl``/``queries.jsonl``, Pyserini and ir_datasets exports).

:func:`read_jsonl` streams ``(id, text)`` pairs, one JSON object per line; a non-empty ``title`` is
prepended to the text. Malformed lines raise :class:`~mechir_nig.errors.DataError` naming the file and
line.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
    >>> _ = path.write_text('{"_id": "d1", "title": "Cats", "text": "Cats purr."}\\n')
    >>> list(read_jsonl(path))
    [('d1', 'Cats Cats purr.')]
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from mechir_nig.data.formats._io import EmptyRecords, PathLike, claim, fail, lines, norm

__all__ = ["JSON_ID_KEYS", "JSON_TEXT_KEYS", "read_jsonl"]

#: Keys holding a record's id, the first present wins.
JSON_ID_KEYS = ("doc_id", "query_id", "_id", "id", "docid", "qid")
#: Keys holding a record's text, the first present wins (a ``title`` is prepended).
JSON_TEXT_KEYS = ("text", "contents", "body", "query")


def read_jsonl(
    path: PathLike, *, empty: str = "error", skipped: list[tuple[str, int]] | None = None
) -> Iterator[tuple[str, str]]:
    """Stream ``(id, text)`` from a JSON-lines file.

    Each line is an object with an id under ``doc_id``, ``query_id``, ``_id``, ``id``, ``docid`` or
    ``qid`` (first present wins) and a text under ``text``, ``contents``, ``body`` or ``query``; a
    non-empty ``title`` is prepended to the text. Blank lines are skipped.

    Args:
        path: the file (``.gz`` is decompressed).
        empty: ``"error"`` (default): a record whose title and text are empty is a DataError;
            ``"skip"``: skip it.
        skipped: with ``empty="skip"``, receives ``(id, line)`` of each skipped record; without it, a
            :class:`~mechir_nig.errors.DataWarning` says how many were skipped.

    Yields:
        ``(id, text)`` pairs in file order.

    Raises:
        InputError: for an ``empty`` other than ``"error"`` or ``"skip"``.
        DataError: naming the file and line of invalid JSON, a line that is not an object, a missing id
            or text field, a duplicate id, an empty text (with ``empty="error"``).

    Example:
        >>> docs = dict(read_jsonl("corpus.jsonl"))  # doctest: +SKIP
    """
    empties = EmptyRecords(path, empty, skipped)
    seen: dict[str, int] = {}
    for lineno, line in lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise fail(path, lineno, f"invalid JSON ({e.msg})", "write one JSON object per line") from e
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
        key = str(raw).strip()
        if not key:
            raise fail(path, lineno, f"empty {id_key}", "give every record a non-empty id")
        text_key = next((k for k in JSON_TEXT_KEYS if k in obj), None)
        if text_key is None and "title" not in obj:
            raise fail(path, lineno, f"{key!r} has no text field", f"add one of {', '.join(JSON_TEXT_KEYS)}")
        pieces = [obj.get("title"), obj.get(text_key) if text_key else None]
        if any(p is not None and not isinstance(p, str) for p in pieces):
            raise fail(path, lineno, f"{key!r} has a non-string title or text", "store texts as strings")
        claim(path, lineno, "id", key, seen)
        text = norm(" ".join(p for p in pieces if p))
        if not text:
            empties.handle(lineno, f"{key!r} has an empty text", key)
            continue
        yield key, text
    empties.finish()
