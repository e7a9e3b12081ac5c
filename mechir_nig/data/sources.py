"""Where collections come from: local folders and files, the embedded set, and ir_datasets ids.

:func:`load_collection` builds a :class:`~mechir_nig.data.collection.Collection` from

* ``"embedded"`` (or no argument): a small hand-written collection shipped in the package
  (``mechir_nig/data/embedded``), for demos and tests that must run offline;
* ``"irds:<id>"``: any ir_datasets id (``"irds:vaswani"``, ``"irds:beir/scifact/test"``). Queries,
  qrels and scoreddocs are read when loading; documents are **not**: they stay in ir_datasets' docstore
  and are looked up by id (``docs_store().get_many(ids)``) when judged pairs, re-ranking or evaluation
  need them (a :class:`~mechir_nig.data.collection.LazyDocs`), so a corpus of millions of passages is
  never held in memory. ir_datasets downloads data on first use (network or a filled cache needed);
* a local folder in the Vaswani layout (``doc-text.trec``, ``query-text.trec``, ``qrels``) or with files
  named ``docs.tsv``/``queries.tsv``/``qrels.txt`` and similar;
* explicit files, ``load_collection(docs=..., queries=..., qrels=...)``, whose formats (TREC SGML, TSV,
  JSONL, optionally gzipped) are detected from the extension or the first line.

Streaming (``lazy=True``), for corpora and runs that should not sit in memory (MS MARCO: 8.8M passages,
a top-1000 run of 7M lines): queries and qrels are read as usual, but documents are a
:class:`~mechir_nig.data.collection.LazyDocs` and first-stage results a
:class:`~mechir_nig.data.collection.ScoredDocStream`. For local files a lookup of some ids keeps only
those ids (texts in memory ``O(ids asked for)``): TSV and JSONL files of 16 MiB or more are indexed by
the first lookup (:class:`~mechir_nig.data.formats.offsets.OffsetIndex`: one pass, 8 bytes per
document) and later lookups seek to the ids' lines; TREC, ``.gz`` and smaller files are read once per
lookup (:func:`~mechir_nig.data.judged_pairs`, :func:`~mechir_nig.data.scoreddocs_candidates` and
:func:`~mechir_nig.evaluation.rerank` make one lookup each); for ``irds:`` ids the docstore is asked
for those ids. The run is re-read on each pass, keeping the top ``k`` per query with a heap. Work that
needs every document in memory (a BM25 index) raises a DataError naming what to pass instead (a run).
Without ``lazy`` local files are read into memory (the default, right for collections up to some
hundred thousand documents) and ``irds:`` ids keep their documents in the docstore and their
scoreddocs in a list; ``lazy=False`` reads an ``irds:`` corpus into memory too.

Empty texts: a document or query without text is an error in local files (``empty="error"``, the
message names file and line) and skipped in ir_datasets corpora, which cannot be fixed by hand
(``empty="skip"``); either can be chosen, and what is skipped is counted in ``Collection.report`` and
announced with a :class:`~mechir_nig.errors.DataWarning`. Relevance grades can be mapped with
``grade_map=`` and the lowest relevant grade set with ``relevance_threshold=``.

Example:
    >>> col = load_collection("embedded")
    >>> col.report["qrels_unknown_docs"], col.relevance_threshold
    (0, 1)
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mechir_nig._validate import check_bool
from mechir_nig._warn import caller_stacklevel
from mechir_nig.data.collection import (
    Collection,
    LazyDocs,
    ScoredDocStream,
    check_grade_map,
    check_relevance_threshold,
)
from mechir_nig.data.formats import (
    TOPIC_FIELDS,
    detect_format,
    iter_trec_run,
    read_texts,
    read_trec_qrels,
    read_trec_run,
)
from mechir_nig.data.formats._io import PathLike, check_empty_policy, check_file, norm
from mechir_nig.data.formats.offsets import OffsetIndex
from mechir_nig.errors import DataError, DataWarning, InputError

__all__ = ["EMBEDDED", "FOLDER_NAMES", "load_collection"]

#: The name of the collection shipped in the package.
EMBEDDED = "embedded"
_ROLES = ("docs", "queries", "qrels", "run")
#: The file names a folder is searched for, by role (each may also end in ``.gz``).
FOLDER_NAMES = {
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


# --------------------------------------------------------------------------------------------------
# Local files, folders and the embedded collection
# --------------------------------------------------------------------------------------------------


def _read_role(
    path: PathLike, role: str, topic_field: str, empty: str, report: dict[str, Any]
) -> dict[str, str]:
    """All ``(id, text)`` of a documents/queries file; skipped empty records counted in ``report``."""
    skipped: list[tuple[str, int]] = []
    texts = dict(read_texts(path, role, topic_field=topic_field, empty=empty, skipped=skipped))
    if empty == "skip":
        report[f"empty_{role}_skipped"] = len(skipped)
        report[f"empty_{role}_skipped_ids"] = [key for key, _ in skipped]
    if skipped:
        what = "documents" if role == "docs" else "queries"
        warnings.warn(
            f"{path}: skipped {len(skipped)} {what} with an empty text (e.g. "
            f"{', '.join(f'{key!r} at line {line}' for key, line in skipped[:3])}); they are counted in "
            f"Collection.report['empty_{role}_skipped']",
            DataWarning,
            stacklevel=caller_stacklevel(),
        )
    return texts


def _from_files(
    docs: PathLike,
    queries: PathLike,
    qrels: PathLike | None,
    run: PathLike | None,
    *,
    name: str,
    topic_field: str,
    empty: str,
    grade_map: Mapping[int, int | None] | None,
    relevance_threshold: int | None,
    lazy: bool = False,
) -> Collection:
    from ir_measures import ScoredDoc

    report: dict[str, Any] = {}
    doc_texts: Mapping[str, str]
    if lazy:
        doc_texts = _file_docs(docs, name, empty, report)
    else:
        doc_texts = _read_role(docs, "docs", topic_field, empty, report)
    query_texts = _read_role(queries, "queries", topic_field, empty, report)
    scoreddocs: list[ScoredDoc] | ScoredDocStream | None = None
    if run is not None and lazy:
        check_file(run)
        run_path = run
        scoreddocs = ScoredDocStream(lambda: iter_trec_run(run_path, duplicates="block"), name=name)
    elif run is not None:
        scoreddocs = [
            ScoredDoc(qid, did, score)
            for qid, ranked in read_trec_run(run).items()
            for did, score in ranked.items()
        ]
    return Collection(
        docs=doc_texts,
        queries=query_texts,
        qrels=list(read_trec_qrels(qrels)) if qrels is not None else [],
        name=name,
        scoreddocs=scoreddocs,
        report=report,
        grade_map=grade_map,
        relevance_threshold=relevance_threshold,
    )


def _file_docs(path: PathLike, name: str, empty: str, report: dict[str, Any]) -> LazyDocs:
    """The documents of a local file, looked up by id through an :class:`OffsetIndex`.

    The first lookup reads the file once to index the byte offset of every record's line (TSV and JSON
    lines; TREC SGML and ``.gz`` files are read with one streaming pass per lookup); later lookups seek
    to the lines asked for. Only the requested records are parsed and kept, so texts in memory are
    ``O(ids asked for)`` whatever the file's size. Nothing is read when loading (a malformed line is
    reported at the first lookup). A file changed on disk (size or modification time) is re-indexed.
    """
    index = OffsetIndex(path, detect_format(path))  # an undetectable file fails at loading
    report.update(empty_docs_skipped=0, empty_docs_skipped_ids=[])

    def fetch_many(doc_ids: list[str]) -> dict[str, str]:
        skipped: list[tuple[str, int]] = []
        found = index.get_many(doc_ids, empty=empty, skipped=skipped)
        found.update((key, "") for key, _ in skipped)  # empty: LazyDocs counts and announces them
        return found

    def iterate() -> Iterator[tuple[str, str]]:
        skipped: list[tuple[str, int]] = []
        yield from read_texts(path, "docs", empty=empty, skipped=skipped)
        yield from ((key, "") for key, _ in skipped)

    chunk = 10_000 if index.seeks else None  # a scan per lookup: look every id up at once
    return LazyDocs(
        fetch_many, iterate=iterate, name=name, empty=empty, whole_corpus="refuse", lookup_chunk=chunk
    )


def _find_in_folder(folder: Path) -> dict[str, Path | None]:
    found: dict[str, Path | None] = {}
    for role, names in FOLDER_NAMES.items():
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
                f"{folder}: no {role} file; expected one of {', '.join(FOLDER_NAMES[role])} (found: "
                f"{', '.join(present) or 'nothing'}); rename it or pass {role}=path explicitly"
            )
    return found


def _embedded(**kwargs: Any) -> Collection:
    from importlib.resources import as_file, files

    root = files("mechir_nig.data").joinpath("embedded")
    with (
        as_file(root.joinpath("docs.tsv")) as docs,
        as_file(root.joinpath("queries.tsv")) as queries,
        as_file(root.joinpath("qrels.txt")) as qrels,
    ):
        return _from_files(docs, queries, qrels, None, **kwargs)


# --------------------------------------------------------------------------------------------------
# ir_datasets
# --------------------------------------------------------------------------------------------------

_IRDS_DOC_FIELDS = ("text", "body", "abstract", "contents", "passage")


def _irds_load(dataset_id: str) -> Any:
    """``ir_datasets.load(dataset_id)``: the one place ir_datasets is imported (tests replace it)."""
    try:
        import ir_datasets
    except ImportError as e:  # pragma: no cover - ir_datasets is a dependency
        raise DataError("ir_datasets is not installed: `pip install ir-datasets`, or load local files") from e
    return ir_datasets.load(dataset_id)


def _irds_doc_text(record: Any) -> str:
    """Title and text of an ir_datasets document joined (``default_text()`` when it has neither)."""
    title = getattr(record, "title", None)
    body = next(
        (getattr(record, f) for f in _IRDS_DOC_FIELDS if isinstance(getattr(record, f, None), str)), None
    )
    if body is None and not isinstance(title, str) and hasattr(record, "default_text"):
        body = record.default_text()
    return norm(" ".join(p for p in (title, body) if isinstance(p, str) and p))


def _irds_query_text(record: Any) -> str:
    """The ``text`` of an ir_datasets query, else its ``title``, else ``default_text()``."""
    for f in ("text", "title", "query"):
        value = getattr(record, f, None)
        if isinstance(value, str):
            return norm(value)
    return norm(record.default_text()) if hasattr(record, "default_text") else ""


def _fetch_error(dataset_id: str, e: Exception) -> DataError:
    detail = norm(str(e))[:200]
    return DataError(
        f"ir_datasets could not fetch {dataset_id!r} ({type(e).__name__}: {detail}). It downloads data on "
        "first use: check the network connection or the ir_datasets cache (IR_DATASETS_HOME), or use local "
        "files with load_collection(folder) / load_collection(docs=..., queries=..., qrels=...)"
    )


@contextlib.contextmanager
def _fetching(dataset_id: str) -> Iterator[None]:
    """An ir_datasets failure inside the block as :func:`_fetch_error` explains it (a DataError as it is)."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise _fetch_error(dataset_id, e) from e


def _irds_docs(ds: Any, dataset_id: str, name: str, empty: str, whole_corpus: str = "iterate") -> LazyDocs:
    """The documents of an ir_datasets data set, looked up by id in its docstore on demand."""
    store: list[Any] = []  # the docstore, opened on the first lookup

    def fetch_many(doc_ids: list[str]) -> dict[str, str]:
        with _fetching(dataset_id):
            if not store:
                store.append(ds.docs_store())
            found = store[0].get_many(doc_ids)
        return {doc_id: _irds_doc_text(record) for doc_id, record in found.items()}

    def iterate():
        with _fetching(dataset_id):
            for record in ds.docs_iter():
                yield record.doc_id, _irds_doc_text(record)

    return LazyDocs(
        fetch_many,
        iterate=iterate,
        count=_irds_count(ds, "docs_count"),
        name=name,
        empty=empty,
        whole_corpus=whole_corpus,
    )


def _irds_count(ds: Any, method: str) -> int | None:
    """``ds.<method>()`` when the data set knows it without a download, else ``None``."""
    try:
        count = getattr(ds, method)() if hasattr(ds, method) else None
    except Exception:  # a count needing a download is not worth one
        return None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _irds_scoreddocs(ds: Any, dataset_id: str) -> Iterator[Any]:
    """One pass over ``scoreddocs_iter()`` as ir_measures ``ScoredDoc`` records (fetch errors explained)."""
    from ir_measures import ScoredDoc

    with _fetching(dataset_id):
        for s in ds.scoreddocs_iter():
            yield ScoredDoc(s.query_id, s.doc_id, float(s.score))


def _from_irds(
    dataset_id: str,
    *,
    name: str,
    empty: str,
    grade_map: Mapping[int, int | None] | None,
    relevance_threshold: int | None,
    lazy: bool | None = None,
) -> Collection:
    from ir_measures import Qrel, ScoredDoc

    try:
        ds = _irds_load(dataset_id)
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
    report: dict[str, Any] = {"empty_docs_skipped": 0, "empty_docs_skipped_ids": []}
    empty_queries: list[str] = []
    try:
        queries: dict[str, str] = {}
        for q in ds.queries_iter():
            text = _irds_query_text(q)
            if text:
                queries[q.query_id] = text
            else:
                empty_queries.append(q.query_id)
        qrels = (
            [
                Qrel(r.query_id, r.doc_id, int(r.relevance), str(getattr(r, "iteration", "0")))
                for r in ds.qrels_iter()
            ]
            if ds.has_qrels()
            else []
        )
        scoreddocs: list[ScoredDoc] | ScoredDocStream | None = None
        if ds.has_scoreddocs() and lazy:
            scoreddocs = ScoredDocStream(
                lambda: _irds_scoreddocs(ds, dataset_id), count=_irds_count(ds, "scoreddocs_count"), name=name
            )
        elif ds.has_scoreddocs():
            scoreddocs = [ScoredDoc(s.query_id, s.doc_id, float(s.score)) for s in ds.scoreddocs_iter()]
    except Exception as e:
        raise _fetch_error(dataset_id, e) from e
    if empty_queries:
        if empty == "error":
            raise DataError(
                f"ir_datasets {dataset_id!r}: queries {empty_queries[:5]} have no text; load with "
                "empty='skip' to skip them (they are counted in Collection.report)"
            )
        warnings.warn(
            f"ir_datasets {dataset_id!r}: skipped {len(empty_queries)} queries without text (e.g. "
            f"{empty_queries[:5]}); Collection.report['empty_queries_skipped'] counts them",
            DataWarning,
            stacklevel=caller_stacklevel(),
        )
    report["empty_queries_skipped"] = len(empty_queries)
    report["empty_queries_skipped_ids"] = empty_queries
    lazy_docs = _irds_docs(ds, dataset_id, name, empty, "refuse" if lazy else "iterate")
    docs: Mapping[str, str] = lazy_docs
    if lazy is False:  # the whole corpus in memory, read once through docs_iter
        docs = dict(lazy_docs.items())
        report.update(lazy_docs.report)  # the empty documents skipped
    return Collection(
        docs=docs,
        queries=queries,
        qrels=qrels,
        name=name,
        scoreddocs=scoreddocs,
        report=report,
        grade_map=grade_map,
        relevance_threshold=relevance_threshold,
    )


# --------------------------------------------------------------------------------------------------
# load_collection
# --------------------------------------------------------------------------------------------------


def load_collection(
    spec: PathLike | Mapping[str, PathLike] | None = None,
    *,
    docs: PathLike | None = None,
    queries: PathLike | None = None,
    qrels: PathLike | None = None,
    run: PathLike | None = None,
    name: str | None = None,
    topic_field: str = "title",
    empty: str | None = None,
    grade_map: Mapping[int, int | None] | None = None,
    relevance_threshold: int | None = None,
    lazy: bool | None = None,
) -> Collection:
    """Load a test collection from ir_datasets, local files or the embedded set.

    Args:
        spec: one of

            * ``None`` or ``"embedded"``: the small collection shipped in the package (grades 0, 1, 2;
              relevant from 1);
            * ``"irds:<id>"``: an ir_datasets id (queries, qrels and, when the data set has them,
              scoreddocs are read; documents are looked up lazily in the docstore, title and text joined);
            * a folder holding a documents file (``doc-text.trec``, ``docs.trec``, ``docs.tsv``,
              ``docs.jsonl``, ``corpus.jsonl``, ``collection.tsv``), a queries file (``query-text.trec``,
              ``queries.trec``, ``topics.trec``, ``queries.tsv``, ``queries.jsonl``, ``topics.tsv``),
              optionally a TREC qrels file (``qrels``, ``qrels.txt``, ``qrels.trec``, ``qrels.tsv``) and a
              TREC run (``run``, ``run.txt``, ``run.trec``), each possibly gzipped;
            * a dict with keys among ``docs``, ``queries``, ``qrels``, ``run`` naming files.
        docs: a file of documents (instead of ``spec``): TREC SGML, TSV or JSONL, detected from the
            extension (``.trec``, ``.tsv``, ``.jsonl``; ``.gz`` allowed) or the first line.
        queries: a file of queries (instead of ``spec``), in the same formats as ``docs``.
        qrels: a TREC qrels file (optional: without it the collection has no judgements).
        run: a TREC run file whose results become ``scoreddocs`` (optional).
        name: label of the collection (default: the ir_datasets id, the folder or docs file name).
        topic_field: for TREC topic files, the field used as query text (``title``, ``desc``, ``narr``).
        empty: what a document or query with an empty text does: ``"error"`` (a DataError naming file
            and line) or ``"skip"`` (skipped, counted in ``Collection.report`` as
            ``empty_docs_skipped`` / ``empty_queries_skipped`` with their ``_ids``, and announced with a
            DataWarning). Default ``None``: ``"error"`` for local files, ``"skip"`` for ir_datasets.
        grade_map: ``{source grade: grade or None}`` applied to the qrels (``None`` marks unjudged: the
            judgement is dropped), e.g. ``{1: 1, 0: 0, -1: None}``; every grade in the qrels must be a key.
        relevance_threshold: the lowest relevant grade (integer >= 1, default 1), used by
            ``judged_pairs`` and by ``evaluate`` for binary measures. Without ``grade_map`` or
            ``relevance_threshold``, qrels with grades other than 0 and 1 draw a DataWarning.
        lazy: ``True``: stream what is corpus- or run-sized. Documents stay in their file (or
            ir_datasets' docstore) and each lookup of some ids reads the file once keeping only those
            ids (memory ``O(ids asked for)``, not ``O(corpus)``); a run file (or ir_datasets'
            scoreddocs) is re-read on each pass (``Collection.scoreddocs`` is a ``ScoredDocStream``)
            and :func:`~mechir_nig.data.scoreddocs_candidates` keeps the top ``k`` per query; nothing is
            read at loading beyond queries and qrels, and document counts in ``report`` stay ``None``
            until ``check_docs()``; a malformed documents file fails at the first lookup, and ids
            repeated in it are found among the ids looked up only. Work that needs the whole corpus in memory (BM25) raises a DataError:
            pass a run instead. ``None`` (default): local files are read into memory, ``irds:``
            documents are looked up lazily in the docstore (scoreddocs read into a list). ``False``:
            everything in memory, an ``irds:`` corpus too (read once through ``docs_iter``).

    Returns:
        The :class:`~mechir_nig.data.collection.Collection`, with consistency counts in ``report``.

    Raises:
        InputError: for a spec that is none of the above, a missing file, an unknown ir_datasets id,
            ``spec`` combined with ``docs=``/``queries=``/``qrels=``/``run=``, or a bad ``empty``,
            ``grade_map``, ``relevance_threshold`` or ``lazy``.
        DataError: for malformed files (naming file and line), an ir_datasets id that cannot be fetched
            (e.g. offline), qrels grades missing from ``grade_map``, or a collection without documents
            or queries.

    Example:
        >>> col = load_collection("embedded")
        >>> vaswani = load_collection("/data/vaswani")  # doctest: +SKIP
        >>> dl = load_collection("irds:msmarco-passage/trec-dl-2019/judged", relevance_threshold=2)  # doctest: +SKIP
        >>> import tempfile  # files of your own (written here):
        >>> from pathlib import Path
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "d.tsv").write_text("d1\\tA neuron is a cell.\\nd2\\tTea.\\nd3\\t \\n")
        >>> _ = (folder / "q.tsv").write_text("q1\\twhat is a neuron\\n")
        >>> _ = (folder / "qrels.txt").write_text("q1 0 d1 1\\nq1 0 d2 0\\n")
        >>> import warnings
        >>> with warnings.catch_warnings():  # the empty d3 is skipped with a DataWarning
        ...     warnings.simplefilter("ignore")
        ...     col2 = load_collection(docs=folder / "d.tsv", queries=folder / "q.tsv",
        ...                            qrels=folder / "qrels.txt", empty="skip")
        >>> col2.report["empty_docs_skipped"]
        1
        >>> _ = (folder / "d.tsv").write_text("d1\\tA neuron is a cell.\\nd2\\tTea.\\n")
        >>> _ = (folder / "d.tsv").rename(folder / "docs.tsv"), (folder / "q.tsv").rename(folder / "queries.tsv")
        >>> big = load_collection(folder, lazy=True)  # documents stay in docs.tsv
        >>> pairs = judged_pairs(big, max_nonrelevant_per_query=3)  # reads the corpus file once
        >>> [(p.doc_id, p.label) for p in pairs]
        [('d1', 'relevant'), ('d2', 'nonrelevant')]
    """
    if topic_field not in TOPIC_FIELDS:
        raise InputError(f"topic_field must be one of {TOPIC_FIELDS}, got {topic_field!r}")
    check_bool(lazy, "lazy", allow_none=True)
    if empty is not None:
        check_empty_policy(empty)
    grade_map = check_grade_map(grade_map)
    relevance_threshold = check_relevance_threshold(relevance_threshold)
    grades: dict[str, Any] = {"grade_map": grade_map, "relevance_threshold": relevance_threshold}
    explicit = {"docs": docs, "queries": queries, "qrels": qrels, "run": run}
    given = {k: v for k, v in explicit.items() if v is not None}
    if spec is not None and given:
        raise InputError(f"pass either spec or {'/'.join(given)}=, not both")
    if spec is None and not given:
        spec = EMBEDDED
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(_ROLES))
        if unknown:
            raise InputError(f"unknown keys {unknown} in the files dict: use {', '.join(_ROLES)}")
        given = {k: v for k, v in spec.items() if v is not None}
        spec = None
    files_kwargs: dict[str, Any] = {
        "topic_field": topic_field,
        "empty": empty or "error",
        "lazy": bool(lazy),
        **grades,
    }
    if spec is None:
        if "docs" not in given or "queries" not in given:
            raise InputError("pass both docs= and queries= (and usually qrels=) files")
        for path in given.values():
            check_file(path)
        label = name or Path(given["docs"]).parent.name or Path(given["docs"]).stem
        return _from_files(
            given["docs"], given["queries"], given.get("qrels"), given.get("run"), name=label, **files_kwargs
        )
    if isinstance(spec, str) and (spec == EMBEDDED or spec.startswith("irds:")) and topic_field != "title":
        raise InputError(
            "topic_field applies to TREC topic files only: leave it out for 'embedded' and 'irds:' ids"
        )
    if isinstance(spec, str) and spec == EMBEDDED:
        if grade_map is None and relevance_threshold is None:
            files_kwargs["relevance_threshold"] = 1  # the embedded scale: 0 (not), 1 (partly), 2 (highly)
        return _embedded(name=name or EMBEDDED, **files_kwargs)
    if isinstance(spec, str) and spec.startswith("irds:"):
        dataset_id = spec[len("irds:") :].strip()
        if not dataset_id:
            raise InputError("'irds:' needs an ir_datasets id after the colon, e.g. 'irds:vaswani'")
        return _from_irds(dataset_id, name=name or dataset_id, empty=empty or "skip", lazy=lazy, **grades)
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
            name=name or folder.resolve().name,
            **files_kwargs,
        )
    if folder.is_file():
        raise InputError(f"{spec} is a file: pass its folder, or docs=, queries=, qrels= for single files")
    raise InputError(
        f"{spec!r} is neither 'embedded', an 'irds:<ir_datasets id>' nor an existing folder: fix the path or "
        "pass docs=, queries=, qrels= files"
    )
