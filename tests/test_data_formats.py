"""The split data layer: one parser family per module, MS MARCO headers, empty records, compatibility."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from ir_measures import ScoredDoc

from mechir_nig.data import (
    DataWarning,
    iter_trec_run,
    load_collection,
    read_jsonl,
    read_trec_docs,
    read_trec_topics,
    read_tsv,
)
from mechir_nig.data.formats import detect_format, read_texts
from mechir_nig.errors import DataError, InputError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Layout and compatibility
# --------------------------------------------------------------------------------------------------


def test_data_names_import_from_their_modules():
    """The data names import from mechir_nig.data and are the objects of their defining modules (the
    compatibility module mechir_nig.data.collections of earlier releases is deleted)."""
    import importlib

    import mechir_nig.data as data
    from mechir_nig import errors
    from mechir_nig.data.collection import Collection
    from mechir_nig.data.formats import jsonl, run, trec, tsv
    from mechir_nig.data.sources import load_collection as load

    assert data.Collection is Collection and data.load_collection is load
    assert data.DataWarning is errors.DataWarning and issubclass(errors.DataWarning, UserWarning)
    assert data.read_trec_docs is trec.read_trec_docs and data.read_tsv is tsv.read_tsv
    assert data.read_jsonl is jsonl.read_jsonl and data.read_trec_run is run.read_trec_run
    assert data.read_trec_qrels is trec.read_trec_qrels and data.read_trec_topics is trec.read_trec_topics
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mechir_nig.data.collections")


def test_detect_format(tmp_path):
    assert detect_format(write(tmp_path, "a.tsv.gz", "")) == "tsv"  # the extension decides (.gz ignored)
    assert detect_format(write(tmp_path, "b", "\n<DOC>")) == "trec"
    assert detect_format(write(tmp_path, "c", '{"id": 1}')) == "jsonl"
    assert detect_format(write(tmp_path, "d", "1\ttext")) == "tsv"
    with pytest.raises(DataError, match=r"cannot tell the format.*name the file \.trec"):
        detect_format(write(tmp_path, "e", "just words"))
    with pytest.raises(InputError, match="role must be 'docs' or 'queries'"):
        read_texts(tmp_path / "a.tsv.gz", "qrels")


def test_iter_trec_run_streams_scored_docs(tmp_path):
    path = tmp_path / "r.run.gz"
    with gzip.open(path, "wt") as f:
        f.write("1 Q0 d1 1 2.5 t\n\n1 Q0 d2 2 1 t\n")
    records = iter_trec_run(path)
    assert next(records) == ScoredDoc("1", "d1", 2.5)  # a generator
    assert list(records) == [ScoredDoc("1", "d2", 1.0)]


# --------------------------------------------------------------------------------------------------
# MS MARCO style TSV headers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "pid\tpassage",
        "qid\tquery",
        "id\ttext",
        "doc_id\ttext",
        "query_id\ttext",
        "PID\tPassage",
        "docid\ttitle",
    ],
)
def test_tsv_header_is_not_a_record(tmp_path, header):
    path = write(tmp_path, "x.tsv", f"{header}\n7\tfirst record\n8\tsecond\n")
    assert list(read_tsv(path)) == [("7", "first record"), ("8", "second")]


def test_tsv_header_only_on_the_first_line(tmp_path):
    # A first line that is a record stays a record; a header-like line later is a record too.
    first = write(tmp_path, "a.tsv", "1\tpassage\npid\tpassage\n")
    assert list(read_tsv(first)) == [("1", "passage"), ("pid", "passage")]
    blank_first = write(tmp_path, "b.tsv", "\n\nqid\tquery\nq1\twhat\n")
    assert list(read_tsv(blank_first)) == [("q1", "what")]


def test_msmarco_files_with_headers_load(tmp_path):
    docs = write(tmp_path, "collection.tsv", "pid\tpassage\n0\tcats purr when content\n1\tdogs bark\n")
    queries = write(tmp_path, "queries.dev.tsv", "qid\tquery\n100\twhy do cats purr\n")
    qrels = write(tmp_path, "qrels.dev.tsv", "100 0 0 1\n")
    col = load_collection(docs=docs, queries=queries, qrels=qrels)
    assert col.docs == {"0": "cats purr when content", "1": "dogs bark"}
    assert col.queries == {"100": "why do cats purr"}
    assert "pid" not in col.docs and "qid" not in col.queries


# --------------------------------------------------------------------------------------------------
# Empty documents and queries: error by default (file + line + the skip option), or skip and report
# --------------------------------------------------------------------------------------------------

EMPTY_DOC_FILES = {
    "docs.tsv": ("d1\tok\nd2\t  \nd3\tfine\nd4\t\t\n", ["d2", "d4"], 2),
    "docs.jsonl": (
        '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": " "}\n{"_id": "d3", "title": ""}\n',
        ["d2", "d3"],
        2,
    ),
    "docs.trec": (
        "<DOC><DOCNO>d1</DOCNO>ok</DOC>\n<DOC><DOCNO>d2</DOCNO>\n<TEXT> </TEXT></DOC>\n",
        ["d2"],
        2,
    ),
}


@pytest.mark.parametrize("name", sorted(EMPTY_DOC_FILES))
def test_empty_document_is_an_error_by_default(tmp_path, name):
    text, _, line = EMPTY_DOC_FILES[name]
    docs = write(tmp_path, name, text)
    queries = write(tmp_path, "queries.tsv", "q1\tcats\n")
    with pytest.raises(DataError) as info:
        load_collection(docs=docs, queries=queries)
    msg = str(info.value)
    assert f"{name}, line {line}:" in msg and "empty='skip'" in msg, msg


@pytest.mark.parametrize("name", sorted(EMPTY_DOC_FILES))
def test_empty_documents_skipped_and_reported(tmp_path, name):
    text, skipped, _ = EMPTY_DOC_FILES[name]
    docs = write(tmp_path, name, text)
    queries = write(tmp_path, "queries.tsv", "q1\tcats\n")
    with pytest.warns(DataWarning, match=rf"{name}: skipped {len(skipped)} documents with an empty text"):
        col = load_collection(docs=docs, queries=queries, empty="skip")
    assert col.report["empty_docs_skipped"] == len(skipped)
    assert col.report["empty_docs_skipped_ids"] == skipped
    assert col.report["empty_queries_skipped"] == 0
    assert set(col.docs).isdisjoint(skipped) and "d1" in col.docs


def test_empty_queries_skipped_and_reported(tmp_path):
    docs = write(tmp_path, "docs.tsv", "d1\tcats\n")
    topics = write(
        tmp_path,
        "topics.trec",
        "<top><num>1</num><title>cats</title></top>\n<top><num>2</num><title> </title></top>\n",
    )
    with pytest.raises(DataError, match=r"topics.trec, line 2: topic '2' has an empty <title>.*empty='skip'"):
        load_collection(docs=docs, queries=topics)
    with pytest.warns(DataWarning, match=r"skipped 1 queries with an empty text \(e.g. '2' at line 2\)"):
        col = load_collection(docs=docs, queries=topics, empty="skip")
    assert col.queries == {"1": "cats"}
    assert col.report["empty_queries_skipped"] == 1 and col.report["empty_queries_skipped_ids"] == ["2"]


def test_parsers_skip_with_a_list_or_a_warning(tmp_path):
    path = write(tmp_path, "d.tsv", "d1\tok\nd2\t \n")
    skipped: list[tuple[str, int]] = []
    assert list(read_tsv(path, empty="skip", skipped=skipped)) == [("d1", "ok")]
    assert skipped == [("d2", 2)]
    with pytest.warns(DataWarning, match=r"skipped 1 records with an empty text \(e.g. \['d2'\]\)"):
        assert list(read_tsv(path, empty="skip")) == [("d1", "ok")]
    jl = write(tmp_path, "d.jsonl", '{"id": "x", "text": ""}\n')
    assert list(read_jsonl(jl, empty="skip", skipped=skipped)) == []
    sg = write(tmp_path, "d.trec", "<DOC><DOCNO>z</DOCNO></DOC>\n")
    assert list(read_trec_docs(sg, empty="skip", skipped=skipped)) == []
    assert skipped == [("d2", 2), ("x", 1), ("z", 1)]
    # A duplicate id is still an error when the first record was skipped.
    dup = write(tmp_path, "dup.tsv", "d1\t \nd1\tagain\n")
    with pytest.raises(DataError, match="first at line 1"):
        list(read_tsv(dup, empty="skip", skipped=[]))


def test_bad_empty_option(tmp_path):
    path = write(tmp_path, "d.tsv", "d1\tok\n")
    with pytest.raises(InputError, match="empty must be 'error' .* or 'skip'"):
        list(read_tsv(path, empty="drop"))
    with pytest.raises(InputError, match="empty must be 'error'"):
        load_collection("embedded", empty="ignore")
    with pytest.raises(InputError, match="empty must be 'error'"):
        list(read_trec_topics(path, empty="nope"))
