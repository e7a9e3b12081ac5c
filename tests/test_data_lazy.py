"""ir_datasets collections keep their documents in the docstore: looked up by id, only when needed.

The real ``irds:`` code path runs with ``mechir_nig.data.sources._irds_load`` replaced by a fake data set
whose docstore records every id it is asked for and whose ``docs_iter`` fails the test when called.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FakeIrdsBase
from ir_measures import Qrel

from mechir_nig.data import (
    Collection,
    DataWarning,
    LazyDocs,
    bm25_candidates,
    judged_pairs,
    load_collection,
    scoreddocs_candidates,
    sources,
)
from mechir_nig.errors import DataError
from mechir_nig.evaluation import evaluate, rerank


class LazyFakeDataset(FakeIrdsBase):
    """20 documents d00..d19 (d13 empty), 4 queries, qrels naming one unknown document (d99)."""

    def __init__(self, *, iterable: bool = False):
        from ir_datasets.formats import GenericDoc

        super().__init__(
            GenericDoc(f"d{i:02d}", "" if i == 13 else f"text of document {i}") for i in range(20)
        )
        self.iterable = iterable

    def docs_iter(self):
        self.docs_iter_calls += 1
        if not self.iterable:
            raise AssertionError("docs_iter must not be called: documents are looked up by id")
        return iter(self.records)

    def queries_iter(self):
        from ir_datasets.formats import GenericQuery

        return iter([GenericQuery(f"q{i}", f"query {i} document") for i in range(1, 5)])

    def qrels_iter(self):
        from ir_datasets.formats import TrecQrel

        judged = {
            "q1": {"d01": 1, "d02": 0, "d03": 1},
            "q2": {"d04": 1, "d05": 0},
            "q3": {"d06": 1, "d99": 1, "d13": 0},
            "q4": {"d07": 0},
        }
        return iter([TrecQrel(q, d, r, "0") for q, docs in judged.items() for d, r in docs.items()])

    def scoreddocs_iter(self):
        from ir_datasets.formats import GenericScoredDoc

        return iter(
            [GenericScoredDoc("q1", f"d{i:02d}", 20.0 - i) for i in range(20)]
            + [GenericScoredDoc("q2", "d99", 9.0), GenericScoredDoc("q2", "d10", 1.0)]
        )


@pytest.fixture
def fake(monkeypatch):
    dataset = LazyFakeDataset()
    monkeypatch.setattr(sources, "_irds_load", lambda dataset_id: dataset)
    return dataset


def load(**kwargs) -> Collection:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # binary grades, nothing looked up: loading warns about nothing
        return load_collection("irds:fake/lazy", **kwargs)


def test_loading_reads_no_document(fake):
    col = load()
    assert isinstance(col.docs, LazyDocs)
    assert fake.store.calls == [] and fake.docs_iter_calls == 0
    assert col.report["docs"] == 20 and len(col.docs) == 20  # docs_count(), not the corpus
    assert col.report["qrels_unknown_docs"] is None  # not checked: that would fetch every judged doc
    assert len(col.qrels) == 9 and len(col.queries) == 4 and len(col.scoreddocs) == 22


def test_judged_pairs_touch_only_the_needed_documents(fake):
    col = load()
    with pytest.warns(DataWarning) as caught:  # d13 has no text; q3 is left without a non-relevant pair
        pairs = judged_pairs(col, query_ids=["q1", "q3"])
    assert len(caught) == 2
    # One docstore call for exactly the judged documents of q1 and q3; docs_iter never called.
    assert len(fake.store.calls) == 1
    assert sorted(fake.store.requested) == ["d01", "d02", "d03", "d06", "d13", "d99"]
    assert fake.docs_iter_calls == 0
    assert [(p.query_id, p.doc_id, p.label) for p in pairs] == [
        ("q1", "d01", "relevant"),
        ("q1", "d03", "relevant"),
        ("q1", "d02", "nonrelevant"),
        ("q3", "d06", "relevant"),
    ]
    assert pairs[0].doc == "text of document 1"
    assert pairs.report["qrels_unknown_skipped"] == 2  # d99 (absent) and d13 (no text, skipped)
    assert col.report["empty_docs_skipped_ids"] == ["d13"]
    # Cached: asking again fetches nothing new; another query fetches only its own documents.
    with pytest.warns(DataWarning, match="no nonrelevant pair"):
        assert judged_pairs(col, query_ids=["q1", "q3"]) == pairs
    with pytest.warns(DataWarning, match=r"1 of 3 queries have no relevant pair \(e.g. \['q4'\]\)"):
        judged_pairs(col, query_ids=["q1", "q4", "q3"], max_nonrelevant_per_query=0)
    assert fake.store.calls[1:] == [["d07"]]


def test_judged_pairs_with_sampled_candidates_fetch_the_candidates(fake):
    col = load()
    candidates = {"q2": {"d10": 3.0, "d04": 2.0, "d11": 1.0}, "q1": {"d19": 1.0}}
    pairs = judged_pairs(
        col, query_ids=["q2"], candidates=candidates, sample_nonrelevant_from_candidates=True
    )
    assert fake.store.calls == [["d04", "d05", "d10", "d11"]]  # judged, then candidates of q2 only
    assert [(p.doc_id, p.relevance) for p in pairs] == [("d04", 1), ("d10", None), ("d11", None)]


def test_rerank_and_scoreddocs_touch_only_candidates(fake):
    col = load()
    run = scoreddocs_candidates(col, k=3)
    assert run == {"q1": {"d00": 20.0, "d01": 19.0, "d02": 18.0}, "q2": {"d10": 1.0}, "q3": {}, "q4": {}}
    # Top 3 of q1 and of q2; q2's absent d99 is replaced by the next result in a second round.
    assert fake.store.calls == [["d00", "d01", "d02", "d99", "d10"]]

    class HasOne:  # scores 1 for documents whose text holds a "1"
        def score(self, queries, docs, *, batch_size=32):
            return torch.tensor([float("1" in d) for d in docs])

    reranked = rerank(HasOne(), col, run)
    assert set(reranked["q1"]) == {"d00", "d01", "d02"}
    assert len(fake.store.calls) == 1  # everything was cached
    result = evaluate(reranked, col, ["RR@10"], query_ids=["q1", "q2"])
    assert result["RR@10"] == pytest.approx((1 / 1 + 0) / 2)  # q1: d01 (relevant) first; q2: none relevant
    assert fake.docs_iter_calls == 0


def test_check_docs_fills_the_document_counts(fake):
    col = load()
    with pytest.warns(DataWarning) as caught:
        report = col.check_docs()
    messages = [str(w.message) for w in caught]
    assert any("2 documents named by qrels, 2 documents named by scoreddocs" in m for m in messages), messages
    assert any("skipped 1 documents without text (e.g. ['d13'])" in m for m in messages), messages
    # d99 (absent) and d13 (no text) in both the qrels and the scoreddocs
    assert report["qrels_unknown_docs"] == 2 and report["qrels_unknown_entries"] == 2
    assert report["scoreddocs_unknown_docs"] == 2
    assert len(fake.store.calls) == 1 and fake.docs_iter_calls == 0


def test_empty_error_policy_for_irds(fake):
    col = load(empty="error")
    assert col.get_docs(["d01"]) == {"d01": "text of document 1"}
    with pytest.raises(DataError, match=r"documents \['d13'\] have no text; load with empty='skip'"):
        col.get_docs(["d13"])


def test_bm25_over_a_lazy_corpus_iterates_it_once(monkeypatch):
    dataset = LazyFakeDataset(iterable=True)
    monkeypatch.setattr(sources, "_irds_load", lambda dataset_id: dataset)
    col = load()
    with pytest.warns(DataWarning, match=r"skipped 1 documents without text \(e\.g\. \['d13'\]\)"):
        run = bm25_candidates(col, k=5)
    assert dataset.docs_iter_calls == 1 and dataset.store.calls == []
    assert set(run) == {"q1", "q2", "q3", "q4"} and all(len(r) == 5 for r in run.values())
    assert "d13" not in {d for r in run.values() for d in r}


def test_lazy_docs_mapping_interface():
    store = {"a": "alpha", "b": "", "c": "gamma"}
    calls: list[list[str]] = []

    def fetch(ids):
        calls.append(list(ids))
        return {i: store[i] for i in ids if i in store}

    docs = LazyDocs(fetch, iterate=lambda: iter(store.items()), count=3, name="toy")
    assert docs["a"] == "alpha" and "c" in docs and "zz" not in docs and docs.get("zz") is None
    with pytest.raises(KeyError):
        docs["zz"]
    with pytest.warns(DataWarning, match="skipped 1 documents without text"):
        assert "b" not in docs
    assert calls == [["a"], ["c"], ["zz"], ["b"]] and docs.cached == 4
    assert docs.get_many(["c", "a", "zz"]) == {"c": "gamma", "a": "alpha"} and len(calls) == 4
    assert dict(docs.items()) == {"a": "alpha", "c": "gamma"} and list(docs) == ["a", "c"]
    assert repr(docs) == "LazyDocs(name='toy', count=3, cached=4)"
    no_iter = LazyDocs(fetch, name="toy")
    with pytest.raises(DataError, match="cannot be iterated"):
        list(no_iter)


def test_collection_with_lazy_docs_directly():
    docs = LazyDocs(lambda ids: {i: "text" for i in ids if i.startswith("d")}, count=None, name="direct")
    col = Collection(
        docs=docs, queries={"q": "query"}, qrels=[Qrel("q", "d1", 1), Qrel("q", "x", 0)], name="direct"
    )
    assert repr(col) == "Collection(name='direct', docs=lazy(?), queries=1, qrels=2, scoreddocs=None)"
    with pytest.raises(DataError, match="has no documents"):
        Collection(docs=LazyDocs(lambda ids: {}, count=0), queries={"q": "query"})


# -- local files: the offset index -------------------------------------------------------------------------
TSV_BODY = (
    "\ufeffpid\tpassage\r\n"  # a BOM and a header, CRLF line ends
    "d1\tcats   purr\r\n"
    "\r\n"  # a blank line
    "d2\ttitle\twith a tab\r\n"
    "d3\tünïcode ☃ text\r\n"
    " d4 \t  spaced  id \r\n"
    "d5\tlast line without a newline"
)
JSONL_BODY = (
    '{"doc_id": "j1", "text": "first"}\n'
    "\n"
    '{"_id": 7, "title": "Title", "text": "and body"}\n'
    '{"id": "j3", "contents": "ünïcode ☃"}\n'
)


@pytest.mark.parametrize("name,body", [("docs.tsv", TSV_BODY), ("docs.jsonl", JSONL_BODY)])
def test_offset_index_gives_what_a_full_scan_gives(tmp_path, name, body):
    from mechir_nig.data.formats import read_texts
    from mechir_nig.data.formats.offsets import OffsetIndex

    path = tmp_path / name
    path.write_bytes(body.encode())
    full = dict(read_texts(path, "docs"))
    index = OffsetIndex(path, min_bytes=0)
    assert index.seeks and index.indexed == 0  # nothing read before the first lookup
    assert index.get_many([*full, "unknown"]) == full
    assert index.indexed == len(full) and index.builds == 1
    for doc_id, text in full.items():  # one id at a time, from the index built once
        assert index.get_many([doc_id]) == {doc_id: text}
    assert index.get_many(list(full)[::-1][:2]) == dict(list(full.items())[::-1][:2])
    assert index.get_many(["unknown", "d"]) == {} and index.builds == 1


def test_offset_index_is_rebuilt_when_the_file_changes(tmp_path):
    import os

    from mechir_nig.data.formats.offsets import OffsetIndex

    path = tmp_path / "docs.tsv"
    path.write_text("a\talpha\nb\tbeta\n")
    index = OffsetIndex(path, min_bytes=0)
    assert index.get_many(["a", "b"]) == {"a": "alpha", "b": "beta"} and index.builds == 1
    path.write_text("b\tbeta, longer now\nc\tgamma\na\talpha\n")  # new size: new offsets
    assert index.get_many(["a", "b", "c"]) == {"a": "alpha", "b": "beta, longer now", "c": "gamma"}
    assert index.builds == 2
    st = os.stat(path)
    path.write_text("c\tGAMMA\na\tALPHA\nb\tBETA, longer now\n")  # the same size ...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # ... a later modification time
    assert index.get_many(["a", "c"]) == {"a": "ALPHA", "c": "GAMMA"} and index.builds == 3
    assert index.get_many(["b"]) == {"b": "BETA, longer now"} and index.builds == 3  # unchanged: reused


def test_lazy_local_collection_looks_up_through_the_index(tmp_path, monkeypatch):
    from mechir_nig.data.formats import offsets, read_texts

    monkeypatch.setattr(offsets, "MIN_BYTES", 0)  # index even this small file

    (tmp_path / "docs.tsv").write_text("".join(f"d{i}\ttext {i}\n" for i in range(50)) + "d50\t\n")
    (tmp_path / "queries.tsv").write_text("q1\tquery\n")
    (tmp_path / "qrels.txt").write_text("q1 0 d3 1\nq1 0 d7 0\n")
    col = load_collection(tmp_path, lazy=True, empty="skip")
    assert col.docs.lookup_chunk == 10_000  # the index seeks: present() may look ids up in chunks
    assert col.docs.get_many(["d3", "d49", "nope"]) == {"d3": "text 3", "d49": "text 49"}
    with pytest.raises(KeyError):  # unknown ids raise as before
        col.docs["nope"]
    assert "nope" not in col.docs
    with pytest.warns(DataWarning, match="skipped 1 documents without text"):
        assert "d50" not in col.docs  # an empty text is absent, counted and announced as before
    strict = load_collection(tmp_path, lazy=True)  # empty="error": the lookup names file and line
    assert strict.docs["d10"] == "text 10"  # an empty record elsewhere does not matter ...
    with pytest.raises(DataError, match="line 51"):
        strict.docs.get_many(["d50"])  # ... until it is looked up
    full = dict(read_texts(tmp_path / "docs.tsv", "docs", empty="skip", skipped=[]))
    assert strict.docs.get_many(list(full)) == full


def test_duplicates_and_unindexable_files_behave_as_a_scan(tmp_path):
    import gzip

    from mechir_nig.data.formats.offsets import OffsetIndex

    dup = tmp_path / "dup.tsv"
    dup.write_text("a\tone\nb\ttwo\na\tagain\n")
    index = OffsetIndex(dup, min_bytes=0)
    assert index.get_many(["b"]) == {"b": "two"}  # a duplicate not asked for is not read
    with pytest.raises(DataError, match=r"line 3: duplicate id 'a' \(first at line 1\)"):
        index.get_many(["a"])
    gz = tmp_path / "docs.tsv.gz"
    gz.write_bytes(gzip.compress(b"a\talpha\nb\tbeta\n"))
    mac = tmp_path / "mac.tsv"
    mac.write_bytes(b"a\talpha\rb\tbeta\r")  # bare \r line breaks
    for path in (gz, mac):
        index = OffsetIndex(path, min_bytes=0)
        assert index.get_many(["b", "zz"]) == {"b": "beta"} and index.indexed == 0
        assert not index.indexable and not index.seeks and "scanned per lookup" in repr(index)
    small = OffsetIndex(dup)  # below MIN_BYTES (16 MiB): scanned per lookup, nothing held
    assert (
        small.indexable and not small.seeks and small.get_many(["b"]) == {"b": "two"} and small.indexed == 0
    )
