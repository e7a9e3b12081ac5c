"""The :class:`Collection` record: documents, queries and qrels of an IR test collection.

A collection holds its queries and judgements in memory (ir_measures' ``Qrel`` and ``ScoredDoc``
records) and its documents as a ``Mapping`` from id to text: a ``dict`` for local files, or a
:class:`LazyDocs` for a large corpus (an ir_datasets id, or local files loaded with ``lazy=True``), which
looks documents up by id in a docstore (or a local file's offset index) only when they are needed and caches
what it fetched. Code that needs the texts of some documents asks :meth:`Collection.get_docs` for all of
them at once (one lookup). First-stage results (``scoreddocs``) are a list, or a
:class:`ScoredDocStream` that re-reads its source on each pass (``lazy=True``), so neither the corpus
nor the run has to fit in memory.

Relevance grades: judgements keep the grades of their source unless a ``grade_map`` is given
(``{source grade: grade, or None for unjudged}``); ``relevance_threshold`` is the lowest grade that
counts as relevant for :func:`~mechir_nig.data.judged_pairs` and the binary measures of
:func:`~mechir_nig.evaluation.evaluate` (default 1, i.e. ``grade > 0`` for integer grades). A
collection whose grades are not binary (``{0, 1}``) and that states neither draws a
:class:`~mechir_nig.errors.DataWarning` saying how to map them.

Consistency: qrels (and scoreddocs) naming queries or documents absent from the collection are **kept**
(evaluation must see every judgement) and **reported** in ``Collection.report`` with a DataWarning.
Duplicate ids cannot occur in ``docs``/``queries`` (dicts; the file parsers refuse a repeated id with
a DataError naming both lines). A judgement repeating a (query, document) pair already judged (possible
in qrels given in memory or by ir_datasets; a qrels *file* with one is a DataError) is kept too,
counted in ``report["qrels_duplicates"]`` and announced with a DataWarning: the **last** grade is the
one :meth:`Collection.qrels_dict` and :func:`~mechir_nig.data.judged_pairs` use.

Example:
    >>> from ir_measures import Qrel
    >>> col = Collection(docs={"d1": "cats purr", "d2": "dogs bark"}, queries={"q1": "cats"},
    ...                  qrels=[Qrel("q1", "d1", 1), Qrel("q1", "d2", -1)], grade_map={1: 1, -1: None})
    >>> col.qrels_dict(), col.report["qrels_unjudged_dropped"]
    ({'q1': {'d1': 1}}, 1)
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mechir_nig._validate import check_int
from mechir_nig._warn import caller_stacklevel
from mechir_nig.data.formats._io import check_empty_policy
from mechir_nig.data.formats.run import Run
from mechir_nig.errors import DataError, DataWarning, InputError

if TYPE_CHECKING:
    from ir_measures import Qrel, ScoredDoc

__all__ = [
    "Collection",
    "LazyDocs",
    "Run",
    "ScoredDocStream",
    "check_grade_map",
    "check_relevance_threshold",
    "map_grades",
    "scale_warning",
    "select_query_ids",
]

#: Grades that need no stated scale: 1 is relevant, 0 is not.
BINARY_GRADES = frozenset({0, 1})


# --------------------------------------------------------------------------------------------------
# Relevance grades
# --------------------------------------------------------------------------------------------------


def check_grade_map(grade_map: Any) -> dict[int, int | None] | None:
    """Validate a ``grade_map`` (``{source grade: grade or None}``); ``None`` passes through.

    Raises:
        InputError: when it is not a dict of integer grades to integers or ``None``.

    Example:
        >>> check_grade_map({1: 2, 0: 0, -1: None})
        {1: 2, 0: 0, -1: None}
    """
    if grade_map is None:
        return None
    if not isinstance(grade_map, Mapping) or not grade_map:
        raise InputError(
            "grade_map must be a non-empty dict {source grade: grade or None (unjudged)}, e.g. "
            f"{{1: 1, 0: 0, -1: None}}; got {grade_map!r}"
        )
    for key, value in grade_map.items():
        check_int(key, "each grade_map key", hint="keys are the grades as written in the qrels")
        check_int(
            value, f"grade_map[{key}]", allow_none=True, hint="None: unjudged, the judgement is dropped"
        )
    return dict(grade_map)


def check_relevance_threshold(threshold: Any) -> int | None:
    """Validate a ``relevance_threshold`` (an integer >= 1); ``None`` passes through.

    Raises:
        InputError: for a non-integer or a threshold below 1 (map such scales with ``grade_map``).

    Example:
        >>> check_relevance_threshold(2), check_relevance_threshold(None)
        (2, None)
    """
    if threshold is None:
        return None
    check_int(
        threshold,
        "relevance_threshold",
        minimum=1,
        hint="the lowest relevant grade; for a scale whose relevant grades are <= 0, map it first with "
        "grade_map={...}",
    )
    return threshold


def map_grades(grades: Iterable[int], grade_map: Mapping[int, int | None], where: str) -> list[int | None]:
    """Apply a grade map to a sequence of grades: the mapped grades in order, ``None`` for unjudged.

    Raises:
        DataError: naming the grades found in ``where`` that the map does not cover, and how to add them.

    Example:
        >>> map_grades([1, 0, -1], {1: 1, 0: 0, -1: None}, "qrels")
        [1, 0, None]
    """
    out: list[int | None] = []
    missing: Counter[int] = Counter()
    for grade in grades:
        if grade in grade_map:
            out.append(grade_map[grade])
        else:
            missing[grade] += 1
    if missing:
        found = ", ".join(f"{g} ({n} judgements)" for g, n in sorted(missing.items()))
        raise DataError(
            f"{where}: grades {found} are not in grade_map {dict(grade_map)}; add them, e.g. "
            f"grade_map={{..., {min(missing)}: None}} (None marks unjudged and drops the judgement)"
        )
    return out


def scale_warning(grades: Iterable[int], where: str) -> str | None:
    """The DataWarning message for grades that are not binary and come without a stated scale, or None.

    Example:
        >>> scale_warning([0, 1], "qrels") is None
        True
    """
    found = sorted(set(grades))
    if set(found) <= BINARY_GRADES:
        return None
    suggestion = {g: (g if g >= 0 else None) for g in sorted(found, reverse=True)}
    threshold = " and/or relevance_threshold=2 (the lowest relevant grade)" if max(found) >= 2 else ""
    return (
        f"{where}: qrels grades {found} are not binary and no scale was stated, so grade >= 1 counts as "
        "relevant and negative grades as judged non-relevant. State the scale: "
        f"grade_map={suggestion} (source grade -> grade; None marks unjudged){threshold}; "
        "relevance_threshold=1 keeps the grades as they are"
    )


# --------------------------------------------------------------------------------------------------
# Lazy documents
# --------------------------------------------------------------------------------------------------


class LazyDocs(Mapping):
    """``doc_id -> text`` looked up in a docstore on demand, with a cache of what was fetched.

    Lookups (``docs[doc_id]``, ``doc_id in docs``, :meth:`get_many`) fetch only the ids asked for and
    remember the answer (missing ids too), so a corpus of millions of documents is never loaded to
    build judged pairs or re-rank candidates. Iterating (``for doc_id in docs``, ``docs.items()``,
    ``docs.values()``, ``len(docs)`` when the source gives no count, ``==``) reads the **whole corpus**
    through ``iterate`` without caching it; only corpus-wide work such as a BM25 index should do that,
    and a source loaded with ``lazy=True`` refuses work that holds the corpus in memory
    (:meth:`require_in_memory`, ``whole_corpus="refuse"``).

    Args:
        fetch_many: ``fetch_many(ids) -> {doc_id: text}`` for the ids found (the docstore lookup).
        iterate: ``iterate() -> iterable of (doc_id, text)`` over the whole corpus, or ``None`` when
            the source cannot be iterated (iteration then raises a DataError).
        count: the number of documents when the source knows it without reading (else ``None``).
        name: the collection's name, for messages.
        empty: ``"skip"``: a document with an empty text is treated as absent, counted in ``report``
            (``empty_docs_skipped``) and announced with a DataWarning; ``"error"``: a DataError.
        whole_corpus: ``"iterate"`` (default): work that needs every document in memory (a BM25 index)
            iterates the corpus and holds it; ``"refuse"``: it raises a DataError saying what to pass
            instead (the documents were loaded lazily on purpose).
        lookup_chunk: :meth:`present` asks ``fetch_many`` for at most this many ids at a time
            (``None``: all at once, e.g. for a source that reads a whole file per lookup).

    Example:
        >>> store = {"d1": "cats purr", "d2": "dogs bark"}
        >>> docs = LazyDocs(lambda ids: {i: store[i] for i in ids if i in store}, count=2, name="toy")
        >>> docs.get_many(["d2", "nope"]), "d1" in docs, len(docs)
        ({'d2': 'dogs bark'}, True, 2)
    """

    def __init__(
        self,
        fetch_many: Callable[[list[str]], Mapping[str, str]],
        *,
        iterate: Callable[[], Iterable[tuple[str, str]]] | None = None,
        count: int | None = None,
        name: str = "collection",
        empty: str = "skip",
        whole_corpus: str = "iterate",
        lookup_chunk: int | None = 10_000,
    ) -> None:
        check_empty_policy(empty)
        if not callable(fetch_many):
            raise InputError("fetch_many must be a function ids -> {doc_id: text}")
        if whole_corpus not in ("iterate", "refuse"):
            raise InputError(f"whole_corpus must be 'iterate' or 'refuse', got {whole_corpus!r}")
        self.whole_corpus = whole_corpus
        self.lookup_chunk = lookup_chunk
        self._fetch_many = fetch_many
        self._iterate = iterate
        self._count = count
        self.name = name
        self.empty = empty
        self._cache: dict[str, str | None] = {}
        self._empty_ids: dict[str, None] = {}
        #: Counts shared with the owning Collection's report (``empty_docs_skipped``).
        self.report: dict[str, Any] = {}

    # -- lookups --------------------------------------------------------------------------------
    def get_many(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Texts of the ids found (missing or skipped ids left out), fetching only uncached ids at once."""
        ids = list(dict.fromkeys(doc_ids))
        todo = [i for i in ids if i not in self._cache]
        if todo:
            found = self._fetch_many(todo)
            empties: list[str] = []
            for i in todo:
                text = found.get(i)
                if text is not None and not text:
                    empties.append(i)
                    text = None
                self._cache[i] = text
            if empties:
                self._skip_empty(empties)
        return {i: t for i in ids if (t := self._cache[i]) is not None}

    def __getitem__(self, doc_id: str) -> str:
        found = self.get_many([doc_id])
        if doc_id not in found:
            raise KeyError(doc_id)
        return found[doc_id]

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and doc_id in self.get_many([doc_id])

    def present(self, doc_ids: Iterable[str]) -> set[str]:
        """The ids of ``doc_ids`` that are documents with a text, **without** caching their texts.

        For consistency checks over many ids (:meth:`Collection.check_docs`): uncached ids are looked
        up ``lookup_chunk`` at a time and their texts dropped, so memory stays that of one chunk; ids
        already cached are answered from the cache. Empty documents count as absent (and are reported
        as by :meth:`get_many`).
        """
        ids = list(dict.fromkeys(doc_ids))
        found = {i for i in ids if self._cache.get(i) is not None}
        todo = [i for i in ids if i not in self._cache]
        step = self.lookup_chunk or max(1, len(todo))
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            texts = self._fetch_many(chunk)
            empties = [i for i in chunk if i in texts and not texts[i]]
            if empties:
                self._skip_empty(empties)
            found.update(i for i in chunk if texts.get(i))
        return found

    def require_in_memory(self, purpose: str) -> None:
        """Raise a DataError when this source refuses work that holds the whole corpus in memory.

        Args:
            purpose: what needs the corpus (e.g. ``"a BM25 index"``), for the message.
        """
        if self.whole_corpus == "refuse":
            raise DataError(
                f"collection {self.name!r} was loaded with lazy=True: its documents are not held in memory, "
                f"and {purpose} needs every document in memory. Pass first-stage candidates instead: a run "
                "file (load_collection(..., run=path, lazy=True) then scoreddocs_candidates(collection, k), "
                "or read_trec_run(path, k=...)), or load the collection without lazy=True"
            )

    @property
    def cached(self) -> int:
        """How many ids have been looked up so far (found or not)."""
        return len(self._cache)

    @property
    def count(self) -> int | None:
        """The number of documents when known without reading the corpus, else ``None``."""
        return self._count

    # -- whole-corpus iteration -------------------------------------------------------------------
    def _items(self) -> Iterator[tuple[str, str]]:
        if self._iterate is None:
            raise DataError(
                f"the documents of {self.name!r} cannot be iterated (the source has no document iterator); "
                "look them up by id with docs.get_many(ids)"
            )
        empties: list[str] = []
        for doc_id, text in self._iterate():
            if not text:
                empties.append(doc_id)
                if self.empty == "error":
                    self._skip_empty(empties)
                continue
            yield doc_id, text
        if empties:
            self._skip_empty(empties)

    def __iter__(self) -> Iterator[str]:
        return (doc_id for doc_id, _ in self._items())

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self._items())
        return self._count

    def items(self) -> Iterator[tuple[str, str]]:  # type: ignore[override]
        """``(doc_id, text)`` of the whole corpus in source order, in one pass (nothing is cached)."""
        return self._items()

    def values(self) -> Iterator[str]:  # type: ignore[override]
        """Texts of the whole corpus in source order, in one pass (nothing is cached)."""
        return (text for _, text in self._items())

    def _skip_empty(self, doc_ids: list[str]) -> None:
        if self.empty == "error":
            raise DataError(
                f"collection {self.name!r}: documents {doc_ids[:5]} have no text; load with empty='skip' "
                "to skip such documents (they are counted in Collection.report)"
            )
        new = [i for i in doc_ids if i not in self._empty_ids]
        self._empty_ids.update(dict.fromkeys(new))
        self.report["empty_docs_skipped"] = len(self._empty_ids)
        self.report["empty_docs_skipped_ids"] = list(self._empty_ids)
        if new:
            warnings.warn(
                f"collection {self.name!r}: skipped {len(new)} documents without text (e.g. {new[:5]}); "
                "they count as absent, and Collection.report['empty_docs_skipped'] counts them",
                DataWarning,
                stacklevel=caller_stacklevel(),
            )

    def __repr__(self) -> str:
        count = "?" if self._count is None else self._count
        return f"LazyDocs(name={self.name!r}, count={count}, cached={len(self._cache)})"

    __hash__ = None  # type: ignore[assignment]  # a Mapping: unhashable, like dict


class ScoredDocStream:
    """First-stage results read from their source on every pass, never held in memory.

    ``Collection.scoreddocs`` of a collection loaded with ``lazy=True`` (a run file, ir_datasets
    ``scoreddocs_iter``): iterating yields ``ir_measures.ScoredDoc`` records in source order, reading the
    source again each time. :func:`~mechir_nig.data.scoreddocs_candidates` keeps the top ``k`` per
    query with a heap in one pass, so a run of millions of results costs memory for ``k`` per query.

    Args:
        iterate: ``iterate() -> iterable of ScoredDoc``, a fresh pass over the source on each call.
        count: the number of results when the source knows it without reading (else ``None``:
            ``len()`` reads the source once and remembers the count).
        name: the collection's name, for ``repr``.

    Example:
        >>> from ir_measures import ScoredDoc
        >>> results = [ScoredDoc("q1", "d1", 2.0), ScoredDoc("q1", "d2", 1.0)]
        >>> stream = ScoredDocStream(lambda: iter(results), name="toy")
        >>> [s.doc_id for s in stream], len(stream)
        (['d1', 'd2'], 2)
    """

    def __init__(
        self,
        iterate: Callable[[], Iterable[ScoredDoc]],
        *,
        count: int | None = None,
        name: str = "collection",
    ) -> None:
        if not callable(iterate):
            raise InputError("iterate must be a function returning an iterable of ScoredDoc")
        self._iterate = iterate
        self._count = count
        self.name = name

    def __iter__(self) -> Iterator[ScoredDoc]:
        return iter(self._iterate())

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self._iterate())
        return self._count

    @property
    def count(self) -> int | None:
        """The number of results when known without reading the source, else ``None``."""
        return self._count

    def __repr__(self) -> str:
        return f"ScoredDocStream(name={self.name!r}, count={'?' if self._count is None else self._count})"


# --------------------------------------------------------------------------------------------------
# The collection record
# --------------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Collection:
    """An IR test collection: documents, queries, qrels and optional first-stage results.

    Attributes:
        docs: ``doc_id -> text`` (title and body joined with a space where a source has both): a
            ``dict``, or a :class:`LazyDocs` that looks documents up by id (ir_datasets corpora). Use
            :meth:`get_docs` to fetch the texts of many ids at once.
        queries: ``query_id -> text``.
        qrels: relevance judgements as ``ir_measures.Qrel(query_id, doc_id, relevance, iteration)``, with
            ``grade_map`` applied. Judgements naming unknown ids are kept and reported.
        name: a label for reports (the ir_datasets id, the folder name, ``"embedded"``).
        scoreddocs: first-stage results as ``ir_measures.ScoredDoc(query_id, doc_id, score)`` when the
            source ships them (ir_datasets ``scoreddocs``, a local run file), else ``None``: a list, or a
            :class:`ScoredDocStream` read afresh on each pass (``load_collection(..., lazy=True)``).
        report: counts filled on construction: ``docs`` (``None`` when a lazy source does not know),
            ``queries``, ``qrels``, ``grades`` (distinct grades after mapping), ``qrels_unknown_queries``
            / ``qrels_unknown_docs`` (distinct ids named by qrels but absent from ``queries`` /
            ``docs``), ``qrels_unknown_entries`` (qrels records naming either),
            ``queries_without_qrels``, ``queries_without_relevant``, ``qrels_duplicates`` (judgements
            repeating a (query, document) pair judged before them), the same ``scoreddocs_unknown_*``
            counts when there are scoreddocs, ``qrels_unjudged_dropped`` with a ``grade_map``, plus what
            the loader skipped (``empty_docs_skipped``, ``empty_queries_skipped`` and their ``_ids``).
            With lazy documents the document counts are ``None`` until :meth:`check_docs` is called,
            and so are the ``scoreddocs_*`` counts of a :class:`ScoredDocStream` (``scoreddocs`` is its
            count when the source knows it).
        grade_map: ``{source grade: grade or None}`` applied to ``qrels`` on construction (``None``:
            unjudged, the judgement is dropped); a grade missing from the map is a DataError.
        relevance_threshold: the lowest relevant grade (an integer >= 1; ``None``: 1). After
            construction it is always an integer.

    Raises:
        DataError: on construction, when there are no documents or no queries, or qrels grades are
            missing from ``grade_map``.
        InputError: for a bad ``grade_map`` or ``relevance_threshold``.

    Example:
        >>> from ir_measures import Qrel
        >>> col = Collection(docs={"d1": "cats purr"}, queries={"q1": "why do cats purr"},
        ...                  qrels=[Qrel("q1", "d1", 1)], name="toy")
        >>> col
        Collection(name='toy', docs=1, queries=1, qrels=1, scoreddocs=None)
        >>> col.qrels_dict()
        {'q1': {'d1': 1}}
    """

    # ``docs`` is annotated without item types on purpose: a runtime type checker (beartype) samples an
    # item of a ``Mapping[str, str]``, which for LazyDocs would read the corpus.
    docs: Mapping
    queries: Mapping[str, str]
    qrels: list[Qrel] = field(default_factory=list)
    name: str = "collection"
    scoreddocs: list[ScoredDoc] | ScoredDocStream | None = None
    report: dict[str, Any] = field(default_factory=dict)
    grade_map: Mapping[int, int | None] | None = None
    relevance_threshold: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.docs, Mapping) or not isinstance(self.queries, Mapping):
            raise InputError("docs and queries must be dicts mapping ids to texts")
        lazy = isinstance(self.docs, LazyDocs)
        if (self.docs.count == 0) if isinstance(self.docs, LazyDocs) else not self.docs:
            raise DataError(f"collection {self.name!r} has no documents: check the documents file or id")
        if not self.queries:
            raise DataError(f"collection {self.name!r} has no queries: check the queries file or id")
        self.grade_map = check_grade_map(self.grade_map)
        stated = self.grade_map is not None or self.relevance_threshold is not None
        self.relevance_threshold = check_relevance_threshold(self.relevance_threshold) or 1
        if not lazy:
            self.docs = dict(self.docs)
        self.queries = dict(self.queries)
        self.qrels = list(self.qrels)
        report = dict(self.report)
        if self.grade_map is not None:
            grades = map_grades(
                [q.relevance for q in self.qrels], self.grade_map, f"qrels of collection {self.name!r}"
            )
            self.qrels = [q._replace(relevance=g) for q, g in zip(self.qrels, grades) if g is not None]
            report["qrels_unjudged_dropped"] = grades.count(None)
        if self.scoreddocs is not None and not isinstance(self.scoreddocs, ScoredDocStream):
            self.scoreddocs = list(self.scoreddocs)
        self.report = {**report, **self._consistency()}
        if isinstance(self.docs, LazyDocs):
            self.docs.report = self.report
        self._warn_duplicates()
        self._warn_unknown()
        if not stated:
            message = scale_warning(self.report["grades"], f"collection {self.name!r}")
            if message:
                warnings.warn(message, DataWarning, stacklevel=caller_stacklevel())

    def __repr__(self) -> str:
        if isinstance(self.scoreddocs, ScoredDocStream):
            sd = f"stream({'?' if self.scoreddocs.count is None else self.scoreddocs.count})"
        else:
            sd = "None" if self.scoreddocs is None else str(len(self.scoreddocs))
        if isinstance(self.docs, LazyDocs):
            docs = f"lazy({'?' if self.docs.count is None else self.docs.count})"
        else:
            docs = str(len(self.docs))
        return (
            f"Collection(name={self.name!r}, docs={docs}, queries={len(self.queries)}, "
            f"qrels={len(self.qrels)}, scoreddocs={sd})"
        )

    def qrels_dict(self) -> dict[str, dict[str, int]]:
        """Judgements as ``{query_id: {doc_id: relevance}}`` (the dict form ir_measures accepts)."""
        out: dict[str, dict[str, int]] = {}
        for q in self.qrels:
            out.setdefault(q.query_id, {})[q.doc_id] = q.relevance
        return out

    def is_relevant(self, grade: int | None) -> bool:
        """Whether a grade counts as relevant (``grade >= relevance_threshold``; ``None`` never does).

        Example:
            >>> col = Collection(docs={"d": "t"}, queries={"q": "x"}, relevance_threshold=2)
            >>> col.is_relevant(1), col.is_relevant(2)
            (False, True)
        """
        return grade is not None and grade >= self.relevance_threshold  # type: ignore[operator]

    def get_docs(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Texts of the ids present in the collection (others left out), in first-seen order.

        With lazy documents this is one docstore lookup for the uncached ids; prefer it to many
        ``docs[doc_id]`` calls.

        Example:
            >>> col = Collection(docs={"d1": "cats purr"}, queries={"q1": "cats"})
            >>> col.get_docs(["d1", "d9"])
            {'d1': 'cats purr'}
        """
        if isinstance(self.docs, LazyDocs):
            return self.docs.get_many(doc_ids)
        docs = self.docs
        return {i: docs[i] for i in dict.fromkeys(doc_ids) if i in docs}

    def check_docs(self) -> dict[str, Any]:
        """Look up every document named by qrels and scoreddocs and fill the document counts of ``report``.

        Needed only for lazy documents (their counts are ``None`` after construction, since checking
        means looking up every judged document) and streamed scoreddocs (read in one more pass); warns
        like construction does about unknown ids. Lazy documents are checked with
        :meth:`LazyDocs.present`, which does not keep their texts.

        Returns:
            The updated ``report``.
        """
        named = dict.fromkeys(q.doc_id for q in self.qrels)
        if self.scoreddocs is not None:
            named.update(dict.fromkeys(s.doc_id for s in self.scoreddocs))
        if isinstance(self.docs, LazyDocs):
            present: Container[str] = self.docs.present(named)
        else:
            present = self.docs
        self.report.update(self._consistency(present, scoreddocs=True))
        self._warn_unknown()
        return self.report

    def _consistency(
        self, present: Container[str] | None = None, *, scoreddocs: bool = False
    ) -> dict[str, Any]:
        """Counts for ``report``; document-side counts need ``present`` (the judged documents found) or
        in-memory documents, else they are ``None``. A :class:`ScoredDocStream` is read (one pass) only
        with ``scoreddocs=True``."""
        queries = self.queries
        lazy = isinstance(self.docs, LazyDocs)
        docs = present if present is not None else (None if lazy else self.docs)
        judged = {q.query_id for q in self.qrels}
        pairs = {(q.query_id, q.doc_id) for q in self.qrels}
        with_relevant = {q.query_id for q in self.qrels if self.is_relevant(q.relevance)}
        report: dict[str, Any] = {
            "docs": self.docs.count if isinstance(self.docs, LazyDocs) else len(self.docs),
            "queries": len(queries),
            "qrels": len(self.qrels),
            "grades": sorted({q.relevance for q in self.qrels}),
            "qrels_unknown_queries": len({q.query_id for q in self.qrels if q.query_id not in queries}),
            "qrels_unknown_docs": None,
            "qrels_unknown_entries": None,
            "queries_without_qrels": sum(1 for qid in queries if qid not in judged),
            "queries_without_relevant": sum(1 for qid in queries if qid not in with_relevant),
            "qrels_duplicates": len(self.qrels) - len(pairs),
        }
        if docs is not None:
            report["qrels_unknown_docs"] = len({q.doc_id for q in self.qrels if q.doc_id not in docs})
            report["qrels_unknown_entries"] = sum(
                1 for q in self.qrels if q.query_id not in queries or q.doc_id not in docs
            )
        if isinstance(self.scoreddocs, ScoredDocStream) and not scoreddocs:
            report["scoreddocs"] = self.scoreddocs.count
            report["scoreddocs_unknown_queries"] = report["scoreddocs_unknown_docs"] = None
        elif self.scoreddocs is not None:
            n = 0
            unknown_queries: set[str] = set()
            unknown_docs: set[str] = set()
            for s in self.scoreddocs:  # one pass (a stream is read once here)
                n += 1
                if s.query_id not in queries:
                    unknown_queries.add(s.query_id)
                if docs is not None and s.doc_id not in docs:
                    unknown_docs.add(s.doc_id)
            report["scoreddocs"] = n
            report["scoreddocs_unknown_queries"] = len(unknown_queries)
            report["scoreddocs_unknown_docs"] = None if docs is None else len(unknown_docs)
        return report

    def _warn_duplicates(self) -> None:
        r = self.report
        if r.get("qrels_duplicates"):
            seen: set[tuple[str, str]] = set()
            repeated = []
            for q in self.qrels:
                key = (q.query_id, q.doc_id)
                if key in seen:
                    repeated.append(key)
                seen.add(key)
            warnings.warn(
                f"collection {self.name!r}: {r['qrels_duplicates']} judgements repeat a (query, document) "
                f"pair judged before (e.g. {repeated[:3]}); all are kept, and the last grade of each pair is "
                "the one qrels_dict() and judged_pairs use. Remove the duplicates to silence this; the count "
                "is in Collection.report['qrels_duplicates'].",
                DataWarning,
                stacklevel=caller_stacklevel(),
            )

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
                stacklevel=caller_stacklevel(),
            )


def select_query_ids(
    available: Mapping[str, Any] | Iterable[str], query_ids: Iterable[str] | None, what: str
) -> list[str]:
    """``query_ids`` (checked against ``available``) or all of ``available``, in a stable order.

    Raises:
        InputError: for a single string instead of a list, or ids not in ``available``.

    Example:
        >>> select_query_ids({"q1": "a", "q2": "b"}, ["q2"], "the collection")
        ['q2']
    """
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


_select_query_ids = select_query_ids  # the name used before the split
