"""Collections, parsers, judged pairs and first-stage candidates (mechir_nig.data)."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import pytest
from conftest import FakeIrdsBase
from ir_measures import Qrel, ScoredDoc

from mechir_nig.data import (
    BM25Index,
    Collection,
    DataWarning,
    JudgedPair,
    bm25_candidates,
    judged_pairs,
    load_collection,
    read_jsonl,
    read_trec_docs,
    read_trec_qrels,
    read_trec_run,
    read_trec_topics,
    read_tsv,
    scoreddocs_candidates,
)
from mechir_nig.errors import DataError, InputError

VASWANI = Path(__file__).resolve().parents[2] / "shared" / "data" / "vaswani"
needs_vaswani = pytest.mark.skipif(
    not (VASWANI / "doc-text.trec").is_file(),
    reason=f"the Vaswani collection is not at {VASWANI} (shared data folder absent)",
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def raises_at(fn, path: Path, line: int, *fragments: str) -> None:
    """``fn()`` raises a DataError naming ``path``'s file name, ``line`` and every fragment."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert path.name in msg and f"line {line}:" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------

TREC_DOCS = """<DOC>
<DOCNO>1</DOCNO>
compact memories have flexible capacities  a digital data
storage system
</DOC>
<DOC><DOCNO> d-2 </DOCNO><TEXT>inner <B>tags</B> are removed</TEXT></DOC>

<DOC>
<DOCNO>3</DOCNO> a < b > c stays
</DOC>
"""


def test_read_trec_docs(tmp_path):
    docs = list(read_trec_docs(write(tmp_path, "docs.trec", TREC_DOCS)))
    assert docs == [
        ("1", "compact memories have flexible capacities a digital data storage system"),
        ("d-2", "inner tags are removed"),
        ("3", "a < b > c stays"),
    ]


def test_read_trec_docs_gzip(tmp_path):
    path = tmp_path / "docs.trec.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(TREC_DOCS)
    assert [d for d, _ in read_trec_docs(path)] == ["1", "d-2", "3"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("<DOC>\n<DOCNO>1</DOCNO>\nok\n</DOC>\n<DOC>\nno id here\n</DOC>\n", 5, "without <DOCNO>"),
        ("<DOC>\n<DOCNO>1</DOCNO>\nok\n</DOC>\n<DOC>\n<DOCNO>2</DOCNO>\ncut off\n", 5, "never closed"),
        (
            "<DOC>\n<DOCNO>1</DOCNO>\nok\n<DOC>\n<DOCNO>2</DOCNO>x</DOC>\n",
            4,
            "opened at line 1 is not closed",
        ),
        ("<DOC>\n<DOCNO>1</DOCNO>\nok\n</DOC>\nstray words\n", 5, "text outside"),
        (
            "<DOC>\n<DOCNO>7</DOCNO>\nok\n</DOC>\n<DOC>\n<DOCNO>7</DOCNO>\nagain\n</DOC>\n",
            5,
            "first at line 1",
        ),
        ("<DOC>\n<DOCNO>1</DOCNO>\n   \n</DOC>\n", 1, "has no text"),
        ("<DOC>\n<DOCNO> </DOCNO>\ntext\n</DOC>\n", 1, "empty <DOCNO>"),
    ],
    ids=["no-docno", "unterminated", "nested", "outside", "duplicate", "empty-text", "empty-id"],
)
def test_read_trec_docs_malformed(tmp_path, text, line, fragment):
    path = write(tmp_path, "bad.trec", text)
    raises_at(lambda: list(read_trec_docs(path)), path, line, fragment)


def test_read_trec_docs_bad_utf8(tmp_path):
    path = tmp_path / "latin1.trec"
    path.write_bytes(b"<DOC>\n<DOCNO>1</DOCNO>\ncaf\xe9\n</DOC>\n")
    raises_at(lambda: list(read_trec_docs(path)), path, 3, "UTF-8")


def test_read_trec_topics_vaswani_and_classic_layouts(tmp_path):
    vaswani = write(
        tmp_path,
        "query-text.trec",
        "<top>\n<num>1</num><title>\nMEASUREMENT OF DIELECTRIC\nCONSTANT\n</title>\n</top>\n"
        "<top>\n<num>2</num><title>\nWAVEGUIDES\n</title>\n</top>\n",
    )
    assert list(read_trec_topics(vaswani)) == [
        ("1", "MEASUREMENT OF DIELECTRIC CONSTANT"),
        ("2", "WAVEGUIDES"),
    ]
    classic = write(
        tmp_path,
        "topics.301",
        "<top>\n<num> Number: 301\n<title> International Organized Crime\n\n<desc> Description:\n"
        "Identify organizations that participate in\ninternational criminal activity.\n\n<narr> Narrative:\n"
        "A relevant document must name the organization.\n</top>\n",
    )
    assert list(read_trec_topics(classic)) == [("301", "International Organized Crime")]
    assert list(read_trec_topics(classic, field="desc")) == [
        ("301", "Identify organizations that participate in international criminal activity.")
    ]
    with pytest.raises(InputError, match="field must be one of"):
        list(read_trec_topics(classic, field="body"))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("<top>\n<title>no number</title>\n</top>\n", 1, "without a <num>"),
        ("<top>\n<num>1</num><title>a</title>\n</top>\n<top>\n<num>2</num><title>b\n", 4, "never closed"),
        (
            "<top><num>1</num><title>a</title></top>\n<top><num>1</num><title>b</title></top>\n",
            2,
            "duplicate",
        ),
        ("<top>\n<num>5</num><title>\n\n</title>\n</top>\n", 1, "empty <title>"),
        ("<top>\n<num>5</num><desc>only a description</desc>\n</top>\n", 1, "has no <title>"),
    ],
    ids=["no-num", "unterminated", "duplicate", "empty-title", "no-title"],
)
def test_read_trec_topics_malformed(tmp_path, text, line, fragment):
    path = write(tmp_path, "topics.trec", text)
    raises_at(lambda: list(read_trec_topics(path)), path, line, fragment)


def test_read_tsv(tmp_path):
    path = write(tmp_path, "docs.tsv", "id\ttext\nd1\t  first   text \n\nd2\ttitle\tbody text\r\n")
    assert list(read_tsv(path)) == [("d1", "first text"), ("d2", "title body text")]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("d1\tok\nd2 no tab here\n", 2, "no tab"),
        ("d1\tok\n\nd1\tagain\n", 3, "first at line 1"),
        ("d1\tok\nd2\t   \n", 2, "empty text"),
        ("d1\tok\n\tlonely text\n", 2, "empty id"),
    ],
    ids=["no-tab", "duplicate", "empty-text", "empty-id"],
)
def test_read_tsv_malformed(tmp_path, text, line, fragment):
    path = write(tmp_path, "queries.tsv", text)
    raises_at(lambda: list(read_tsv(path)), path, line, fragment)


def test_read_jsonl(tmp_path):
    path = write(
        tmp_path,
        "corpus.jsonl",
        '{"_id": "d1", "title": "Cats", "text": "Cats purr."}\n'
        '{"doc_id": 7, "text": "  spaced\\n out "}\n'
        "\n"
        '{"id": "d3", "title": "", "contents": "pyserini style"}\n',
    )
    assert list(read_jsonl(path)) == [
        ("d1", "Cats Cats purr."),
        ("7", "spaced out"),
        ("d3", "pyserini style"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n', 2, "invalid JSON"),
        ('{"_id": "d1", "text": "ok"}\n["d2", "text"]\n', 2, "not an object"),
        ('{"_id": "d1", "text": "ok"}\n{"text": "no id"}\n', 2, "no id field"),
        ('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "label": 1}\n', 2, "no text field"),
        ('{"_id": "d1", "text": "ok"}\n{"_id": "d1", "text": "again"}\n', 2, "first at line 1"),
        ('{"_id": "d1", "text": "   "}\n', 1, "empty text"),
        ('{"_id": true, "text": "x"}\n', 1, "ids must be strings or integers"),
    ],
    ids=["bad-json", "not-object", "no-id", "no-text", "duplicate", "empty-text", "bool-id"],
)
def test_read_jsonl_malformed(tmp_path, text, line, fragment):
    path = write(tmp_path, "queries.jsonl", text)
    raises_at(lambda: list(read_jsonl(path)), path, line, fragment)


def test_read_trec_qrels(tmp_path):
    path = write(tmp_path, "qrels", "1 0 d1 1\n\n1\t0\td2\t0\nq2 Q0 d1 -1\n")
    qrels = list(read_trec_qrels(path))
    assert qrels == [Qrel("1", "d1", 1, "0"), Qrel("1", "d2", 0, "0"), Qrel("q2", "d1", -1, "Q0")]
    assert isinstance(qrels[0], Qrel)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("1 0 d1 1\n1 0 d2\n", 2, "3 fields, expected 4"),
        ("1 0 d1 1\n1 0 d2 1 extra\n", 2, "5 fields, expected 4"),
        ("1 0 d1 1\n1 0 d2 yes\n", 2, "not an integer"),
        ("1 0 d1 1\n1 0 d2 0.5\n", 2, "not an integer"),
        ("1 0 d1 1\n1 0 d1 0\n", 2, "first at line 1"),
    ],
    ids=["3-fields", "5-fields", "word-rel", "float-rel", "duplicate"],
)
def test_read_trec_qrels_malformed(tmp_path, text, line, fragment):
    path = write(tmp_path, "qrels.txt", text)
    raises_at(lambda: list(read_trec_qrels(path)), path, line, fragment)


def test_read_trec_run(tmp_path):
    path = write(tmp_path, "bm25.run", "1 Q0 d1 1 12.5 bm25\n1 Q0 d2 2 3 bm25\n2 Q0 d1 1 -0.25 bm25\n")
    assert read_trec_run(path) == {"1": {"d1": 12.5, "d2": 3.0}, "2": {"d1": -0.25}}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("1 Q0 d1 1 2.0 t\n1 Q0 d2 2 1.0\n", 2, "5 fields, expected 6"),
        ("1 Q0 d1 1 2.0 t\n1 Q0 d2 2 high t\n", 2, "not a number"),
        ("1 Q0 d1 1 2.0 t\n1 Q0 d2 2 nan t\n", 2, "not finite"),
        ("1 Q0 d1 1 2.0 t\n1 Q0 d2 second 1.0 t\n", 2, "rank"),
        ("1 Q0 d1 1 2.0 t\n1 Q0 d1 2 1.0 t\n", 2, "first at line 1"),
    ],
    ids=["5-fields", "bad-score", "nan", "bad-rank", "duplicate"],
)
def test_read_trec_run_malformed(tmp_path, text, line, fragment):
    path = write(tmp_path, "x.run", text)
    raises_at(lambda: read_trec_run(path), path, line, fragment)


def test_read_trec_run_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match="no results"):
        read_trec_run(write(tmp_path, "empty.run", "\n"))
    with pytest.raises(InputError, match="is not a file"):
        read_trec_run(tmp_path / "nope.run")


# --------------------------------------------------------------------------------------------------
# load_collection
# --------------------------------------------------------------------------------------------------


def tiny_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "docs": write(
            tmp_path, "docs.jsonl", '{"_id": "d1", "text": "cats purr"}\n{"_id": "d2", "text": "dogs bark"}\n'
        ),
        "queries": write(tmp_path, "queries.tsv", "q1\twhy do cats purr\nq2\twhy do dogs bark\n"),
        "qrels": write(tmp_path, "qrels.txt", "q1 0 d1 1\nq1 0 d2 0\nq2 0 d2 2\n"),
    }


def test_load_collection_explicit_files_and_dict(tmp_path):
    files = tiny_files(tmp_path)
    col = load_collection(**files, name="tiny")
    assert col.docs == {"d1": "cats purr", "d2": "dogs bark"}
    assert col.queries == {"q1": "why do cats purr", "q2": "why do dogs bark"}
    assert col.qrels_dict() == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    assert repr(col) == "Collection(name='tiny', docs=2, queries=2, qrels=3, scoreddocs=None)"
    assert col.report["qrels_unknown_docs"] == 0 and col.report["queries_without_relevant"] == 0
    same = load_collection({k: str(v) for k, v in files.items()})
    assert same.docs == col.docs and same.qrels == col.qrels


def test_load_collection_detects_format_from_content(tmp_path):
    docs = write(tmp_path, "documents", "<DOC><DOCNO>d1</DOCNO>cats purr</DOC>\n")
    queries = write(tmp_path, "questions", '{"query_id": "q1", "text": "cats"}\n')
    qrels = write(tmp_path, "judgements", "q1 0 d1 1\n")
    col = load_collection(docs=docs, queries=queries, qrels=qrels)
    assert col.docs == {"d1": "cats purr"} and col.queries == {"q1": "cats"}
    weird = write(tmp_path, "weird", "cats purr\n")
    with pytest.raises(DataError, match=r"cannot tell the format.*\.tsv"):
        load_collection(docs=weird, queries=queries)


def test_load_collection_folder_layouts(tmp_path):
    vas = tmp_path / "mini-vaswani"
    vas.mkdir()
    write(vas, "doc-text.trec", "<DOC>\n<DOCNO>1</DOCNO>\nmicrowave dielectric\n</DOC>\n")
    write(vas, "query-text.trec", "<top>\n<num>1</num><title>\nDIELECTRIC\n</title>\n</top>\n")
    write(vas, "qrels", "1 0 1 1\n")
    col = load_collection(vas)
    assert (col.name, col.docs, col.queries, len(col.qrels)) == (
        "mini-vaswani",
        {"1": "microwave dielectric"},
        {"1": "DIELECTRIC"},
        1,
    )
    write(vas, "run", "1 Q0 1 1 4.5 bm25\n")
    with_run = load_collection(str(vas))
    assert with_run.scoreddocs == [ScoredDoc("1", "1", 4.5)]
    write(vas, "docs.tsv", "1\tdup\n")
    with pytest.raises(DataError, match="several docs files"):
        load_collection(vas)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no docs file; expected one of doc-text.trec"):
        load_collection(empty)


def test_load_collection_bad_arguments(tmp_path):
    files = tiny_files(tmp_path)
    with pytest.raises(InputError, match="either spec or docs"):
        load_collection("embedded", docs=files["docs"])
    with pytest.raises(InputError, match="neither 'embedded'"):
        load_collection(tmp_path / "missing")
    with pytest.raises(InputError, match="is a file"):
        load_collection(files["docs"])
    with pytest.raises(InputError, match="both docs= and queries="):
        load_collection(docs=files["docs"])
    with pytest.raises(InputError, match="unknown keys"):
        load_collection({"documents": files["docs"]})
    with pytest.raises(InputError, match="is not a file"):
        load_collection(docs=tmp_path / "nope.tsv", queries=files["queries"])
    with pytest.raises(InputError, match="topic_field must be one of"):
        load_collection(topic_field="body")
    with pytest.raises(InputError, match="topic_field applies to TREC topic files only"):
        load_collection("irds:vaswani", topic_field="desc")


def test_empty_collections_are_errors(tmp_path):
    files = tiny_files(tmp_path)
    empty = write(tmp_path, "empty.tsv", "\n")
    with pytest.raises(DataError, match="has no documents"):
        load_collection(docs=empty, queries=files["queries"])
    with pytest.raises(DataError, match="has no queries"):
        load_collection(docs=files["docs"], queries=empty)


def test_unknown_qrels_ids_are_kept_and_reported(tmp_path):
    files = tiny_files(tmp_path)
    qrels = write(tmp_path, "qrels-extra", "q1 0 d1 1\nq1 0 d9 1\nq1 0 d8 0\nq7 0 d1 1\nq7 0 d9 2\n")
    with pytest.warns(DataWarning, match=r"1 queries named by qrels, 2 documents named by qrels"):
        col = load_collection(docs=files["docs"], queries=files["queries"], qrels=qrels)
    assert len(col.qrels) == 5  # kept: evaluation must see every judgement
    assert col.report["qrels_unknown_queries"] == 1
    assert col.report["qrels_unknown_docs"] == 2
    assert col.report["qrels_unknown_entries"] == 4
    assert col.report["queries_without_qrels"] == 1  # q2
    assert col.report["queries_without_relevant"] == 1
    with pytest.warns(DataWarning, match="no nonrelevant pair"):
        pairs = judged_pairs(col, query_ids=["q1"])
    assert [(p.doc_id, p.label) for p in pairs] == [("d1", "relevant")]
    assert pairs.report["qrels_unknown_skipped"] == 2


def test_collection_validates_itself():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col = Collection(docs={"d": "text"}, queries={"q": "query"}, qrels=[Qrel("q", "d", 1)])
    assert col.qrels_dict() == {"q": {"d": 1}}
    with pytest.raises(DataError, match="no documents"):
        Collection(docs={}, queries={"q": "query"})
    with pytest.warns(DataWarning, match="documents named by scoreddocs"):
        col = Collection(docs={"d": "t"}, queries={"q": "x"}, scoreddocs=[ScoredDoc("q", "zz", 1.0)])
    assert col.report["scoreddocs_unknown_docs"] == 1


def test_embedded_collection():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent: no DataWarning
        col = load_collection()
    assert col.name == "embedded"
    assert (len(col.docs), len(col.queries), len(col.qrels)) == (60, 15, 60)
    assert load_collection("embedded").docs == col.docs
    assert col.report["qrels_unknown_entries"] == 0 and col.report["queries_without_relevant"] == 0
    for qid, judged in col.qrels_dict().items():
        n_rel = sum(rel > 0 for rel in judged.values())
        assert 2 <= n_rel <= 4, qid
        assert sum(rel == 0 for rel in judged.values()) >= 1, qid
        assert set(judged.values()) <= {0, 1, 2}
    assert all(len(text.split()) >= 8 for text in col.docs.values())
    assert col.queries["q02"] == "why does the moon have phases"


# --------------------------------------------------------------------------------------------------
# ir_datasets (the real code path with ir_datasets.load replaced, so that no test needs the network)
# --------------------------------------------------------------------------------------------------


class FakeIrdsDataset(FakeIrdsBase):
    def __init__(self, fail: bool = False):
        from ir_datasets.formats import GenericDoc

        self.fail = fail
        Titled = type("TitledDoc", (), {})  # noqa: N806 - a record with title and text fields
        titled = Titled()
        titled.doc_id, titled.title, titled.text = "d2", "Dogs", "Dogs  bark."
        super().__init__([GenericDoc("d1", "Cats purr."), titled, GenericDoc("d3", "   ")])

    def _check(self):
        if self.fail:
            raise RuntimeError("All download sources failed (offline)")

    def docs_store(self):
        self._check()
        return self.store

    def docs_iter(self):
        self._check()
        self.docs_iter_calls += 1
        return iter(self.records)

    def queries_iter(self):
        from ir_datasets.formats import GenericQuery, TrecQuery

        self._check()
        return iter([GenericQuery("q1", "cats"), TrecQuery("q2", "dog noise", "desc", "narr")])

    def qrels_iter(self):
        from ir_datasets.formats import TrecQrel

        return iter([TrecQrel("q1", "d1", 1, "0"), TrecQrel("q2", "d2", 2, "0")])

    def scoreddocs_iter(self):
        from ir_datasets.formats import GenericScoredDoc

        return iter([GenericScoredDoc("q1", "d1", 3.0), GenericScoredDoc("q1", "d2", 5.0)])


def test_irds_loading(monkeypatch):
    import ir_datasets

    fake = FakeIrdsDataset()
    monkeypatch.setattr(ir_datasets, "load", lambda dataset_id: fake)
    with pytest.warns(DataWarning, match=r"grades \[1, 2\] are not binary"):
        col = load_collection("irds:fake/test")
    assert col.name == "fake/test"
    assert repr(col) == "Collection(name='fake/test', docs=lazy(3), queries=2, qrels=2, scoreddocs=2)"
    assert fake.docs_iter_calls == 0 and fake.store.calls == []  # documents are looked up lazily
    with pytest.warns(DataWarning, match=r"skipped 1 documents without text \(e.g. \['d3'\]\)"):
        assert col.get_docs(["d2", "d3", "d1", "zz"]) == {"d2": "Dogs Dogs bark.", "d1": "Cats purr."}
    assert col.report["empty_docs_skipped"] == 1 and col.report["empty_docs_skipped_ids"] == ["d3"]
    assert col.docs == {"d1": "Cats purr.", "d2": "Dogs Dogs bark."}  # whole-corpus iteration
    assert fake.docs_iter_calls == 1
    assert col.queries == {"q1": "cats", "q2": "dog noise"}
    assert col.qrels == [Qrel("q1", "d1", 1, "0"), Qrel("q2", "d2", 2, "0")]
    assert scoreddocs_candidates(col, k=1) == {"q1": {"d2": 5.0}, "q2": {}}


def test_irds_fetch_failure_is_a_data_error(monkeypatch):
    import ir_datasets

    monkeypatch.setattr(ir_datasets, "load", lambda dataset_id: FakeIrdsDataset(fail=True))
    with pytest.raises(DataError, match=r"could not fetch 'vaswani'.*(offline).*local\s+files"):
        load_collection("irds:vaswani")


def test_irds_unknown_id():
    with pytest.raises(InputError, match="unknown ir_datasets id 'no-such-dataset/xyz'"):
        load_collection("irds:no-such-dataset/xyz")
    with pytest.raises(InputError, match="needs an ir_datasets id"):
        load_collection("irds:")


# --------------------------------------------------------------------------------------------------
# Vaswani (the real files)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vaswani() -> Collection:
    if not (VASWANI / "doc-text.trec").is_file():
        pytest.skip(f"the Vaswani collection is not at {VASWANI} (shared data folder absent)")
    return load_collection(VASWANI)


@needs_vaswani
def test_vaswani_streams_documents():
    docs = read_trec_docs(VASWANI / "doc-text.trec")
    assert next(docs)[0] == "1"  # a generator: records stream as they are parsed
    assert 1 + sum(1 for _ in docs) == 11_429


@needs_vaswani
def test_vaswani_counts_and_records(vaswani):
    assert (len(vaswani.docs), len(vaswani.queries), len(vaswani.qrels)) == (11_429, 93, 2_083)
    assert vaswani.name == "vaswani"
    assert vaswani.report["qrels_unknown_entries"] == 0
    assert vaswani.report["queries_without_relevant"] == 0
    doc_ids = list(vaswani.docs)
    assert (doc_ids[0], doc_ids[-1]) == ("1", "11429")
    assert vaswani.docs["1"] == (
        "compact memories have flexible capacities a digital data storage system with capacity up to bits "
        "and random and or sequential access is described"
    )
    assert vaswani.docs["11429"].startswith("pattern detection and recognition both processes have been")
    assert vaswani.docs["11429"].endswith("reading handlettered sansserif alphanumeric characters")
    query_ids = list(vaswani.queries)
    assert (query_ids[0], query_ids[-1]) == ("1", "93")
    assert (
        vaswani.queries["1"]
        == "MEASUREMENT OF DIELECTRIC CONSTANT OF LIQUIDS BY THE USE OF MICROWAVE TECHNIQUES"
    )
    assert vaswani.queries["93"] == (
        "HIGH FREQUENCY OSCILLATORS USING TRANSISTORS THEORETICAL TREATMENT AND PRACTICAL CIRCUIT DETAILS"
    )
    assert vaswani.qrels[0] == Qrel("1", "1239", 1, "0")
    assert vaswani.qrels[-1] == Qrel("93", "11318", 1, "0")
    assert {q.relevance for q in vaswani.qrels} == {1}


@needs_vaswani
@pytest.mark.slow
def test_vaswani_bm25(vaswani):
    from mechir_nig.evaluation import evaluate

    run = bm25_candidates(vaswani, k=100)
    assert len(run) == 93 and all(1 <= len(docs) <= 100 for docs in run.values())
    result = evaluate(run, vaswani, ["nDCG@10", "RR@10"])
    # the figures recorded in docs/results.md (bm25s Lucene BM25, k1=1.5, b=0.75, no stemming)
    assert result["nDCG@10"] == pytest.approx(0.35346, abs=1e-4)
    assert result["RR@10"] == pytest.approx(0.64269, abs=1e-4)
    # Vaswani judges only relevant documents: non-relevant pairs come from the candidates.
    with pytest.warns(DataWarning, match="93 of 93 queries have no nonrelevant pair"):
        judged_pairs(vaswani, max_relevant_per_query=2)
    pairs = judged_pairs(
        vaswani,
        max_relevant_per_query=2,
        max_nonrelevant_per_query=2,
        candidates=run,
        sample_nonrelevant_from_candidates=True,
    )
    # Three queries (8, 50, 59) have a single relevant document: 90 * 2 + 3 = 183 relevant pairs.
    assert pairs.report["relevant"] == 183 and pairs.report["nonrelevant"] == 186
    assert all(p.relevance is None for p in pairs if p.label == "nonrelevant")


# --------------------------------------------------------------------------------------------------
# judged_pairs
# --------------------------------------------------------------------------------------------------


def test_judged_pairs_all_and_caps():
    col = load_collection("embedded")
    every = judged_pairs(col)
    assert len(every) == 60 and every.report["relevant"] == 32 and every.report["nonrelevant"] == 28
    assert every[0] == JudgedPair("q01", "d01", col.queries["q01"], col.docs["d01"], 2, "relevant")
    assert all((p.relevance > 0) == (p.label == "relevant") for p in every)
    capped = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1, seed=3)
    assert len(capped) == 30
    for qid in col.queries:
        labels = [p.label for p in capped if p.query_id == qid]
        assert labels == ["relevant", "nonrelevant"], qid
    assert set(capped) <= set(every)
    assert capped.queries()[0] == col.queries["q01"] and capped.docs()[0] in col.docs.values()
    # 13 queries have two judged non-relevant documents, q03 and q05 one each.
    assert len(judged_pairs(col, max_relevant_per_query=0, max_nonrelevant_per_query=2)) == 28


def test_judged_pairs_deterministic_and_seeded():
    col = load_collection("embedded")
    kwargs = {"max_relevant_per_query": 1, "max_nonrelevant_per_query": 1}
    assert judged_pairs(col, seed=5, **kwargs) == judged_pairs(col, seed=5, **kwargs)
    draws = {tuple(p.doc_id for p in judged_pairs(col, seed=s, **kwargs)) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    # A query's draw does not depend on which other queries are asked for.
    alone = judged_pairs(col, seed=5, query_ids=["q07"], **kwargs)
    assert list(alone) == [p for p in judged_pairs(col, seed=5, **kwargs) if p.query_id == "q07"]


def test_judged_pairs_with_candidates():
    col = load_collection("embedded")
    run = {"q11": {"d32": 3.0, "d41": 2.0, "d57": 1.5, "d43": 1.0, "d59": 1.0}}
    # Restricted to candidates: judged non-relevant d58 (not retrieved) is left out.
    hard = judged_pairs(col, query_ids=["q11"], candidates=run)
    assert [(p.doc_id, p.label) for p in hard] == [
        ("d41", "relevant"),
        ("d42", "relevant"),
        ("d43", "nonrelevant"),
    ]
    sampled = judged_pairs(col, query_ids=["q11"], candidates=run, sample_nonrelevant_from_candidates=True)
    nonrel = [(p.doc_id, p.relevance) for p in sampled if p.label == "nonrelevant"]
    assert nonrel == [("d43", 0), ("d32", None), ("d57", None), ("d59", None)]
    capped = judged_pairs(
        col,
        query_ids=["q11"],
        candidates=run,
        sample_nonrelevant_from_candidates=True,
        max_nonrelevant_per_query=2,
        seed=1,
    )
    chosen = [p.doc_id for p in capped if p.label == "nonrelevant"]
    assert len(chosen) == 2 and set(chosen) <= {"d43", "d32", "d57", "d59"}


def test_judged_pairs_reports_queries_without_relevant():
    col = Collection(
        docs={"a": "alpha", "b": "beta"},
        queries={"q1": "alpha", "q2": "beta"},
        qrels=[Qrel("q1", "a", 1), Qrel("q1", "b", 0), Qrel("q2", "a", 0)],
    )
    with pytest.warns(DataWarning, match=r"1 of 2 queries have no relevant pair \(e.g. \['q2'\]\)"):
        pairs = judged_pairs(col)
    assert [(p.query_id, p.doc_id, p.label) for p in pairs] == [
        ("q1", "a", "relevant"),
        ("q1", "b", "nonrelevant"),
        ("q2", "a", "nonrelevant"),
    ]
    assert pairs.report["queries_without_relevant"] == 1
    assert pairs.report["queries_without_relevant_ids"] == ["q2"]


def test_judged_pairs_bad_arguments():
    col = load_collection("embedded")
    with pytest.raises(InputError, match="max_relevant_per_query"):
        judged_pairs(col, max_relevant_per_query=-1)
    with pytest.raises(InputError, match="needs candidates="):
        judged_pairs(col, sample_nonrelevant_from_candidates=True)
    with pytest.raises(InputError, match=r"not in collection 'embedded' \(e.g. \['q99'\]\)"):
        judged_pairs(col, query_ids=["q01", "q99"])
    with pytest.raises(InputError, match="not a single string"):
        judged_pairs(col, query_ids="q01")
    from jaxtyping import TypeCheckError  # raised instead when the jaxtyping import hook runs

    with pytest.raises((InputError, TypeCheckError), match="Collection"):
        judged_pairs({"docs": {}})


# --------------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------------


def test_bm25_finds_the_obvious_document():
    col = Collection(
        docs={
            "cook": "Simmer the rice in salted water for twenty minutes.",
            "hole": "Black holes form when massive stars collapse.",
            "star": "Stars shine because of nuclear fusion in their cores.",
            "other": "The stock market fell sharply on Monday.",
        },
        queries={"q1": "how do black holes form", "q2": "nuclear fusion in stars", "q3": "the of and"},
    )
    run = bm25_candidates(col, k=2)
    assert list(run["q1"])[0] == "hole"
    assert list(run["q2"]) == ["star", "hole"]  # "stars" also occurs in the black-hole document
    assert all(len(docs) <= 2 for docs in run.values())
    assert list(run["q1"].values()) == sorted(run["q1"].values(), reverse=True)
    assert run["q3"] == {}  # only stopwords: no document shares a term
    assert list(bm25_candidates(col, k=10, query_ids=["q2"])) == ["q2"]
    index = BM25Index(col)
    assert index.scores("black holes").shape == (4,) and index.scores("zzz").max() == 0
    assert list(index.search("stock market", k=5)) == ["other"]


def test_bm25_on_embedded_collection():
    col = load_collection("embedded")
    run = bm25_candidates(col, k=5)
    assert list(run) == list(col.queries)
    assert list(run["q02"])[0] == "d05"
    assert list(run["q05"])[:2] == ["d17", "d18"]
    assert bm25_candidates(col, k=5) == run  # deterministic


def test_candidates_bad_arguments():
    col = load_collection("embedded")
    with pytest.raises(InputError, match="k .* must be an int >= 1, got 0"):
        bm25_candidates(col, k=0)
    with pytest.raises(InputError, match=r"1 query ids are not in collection 'embedded' \(e.g. \['nope'\]\)"):
        bm25_candidates(col, k=3, query_ids=["nope"])
    with pytest.raises(InputError, match="has no scoreddocs: use bm25_candidates"):
        scoreddocs_candidates(col, k=3)
    with pytest.raises(InputError, match="k1 >= 0"):
        BM25Index(col, b=2.0)


def test_scoreddocs_candidates_from_run_file(tmp_path):
    files = tiny_files(tmp_path)
    run_path = write(tmp_path, "first.run", "q1 Q0 d2 1 9.0 r\nq1 Q0 d1 2 7.0 r\nq2 Q0 d2 1 1.0 r\n")
    col = load_collection(**files, run=run_path)
    assert len(col.scoreddocs) == 3
    assert scoreddocs_candidates(col, k=1) == {"q1": {"d2": 9.0}, "q2": {"d2": 1.0}}
    assert scoreddocs_candidates(col, k=5, query_ids=["q1"]) == {"q1": {"d2": 9.0, "d1": 7.0}}


def test_judged_pairs_cap_zero_is_not_reported_missing():

    col = load_collection("embedded")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_non = judged_pairs(col, max_relevant_per_query=0)
        only_rel = judged_pairs(col, max_nonrelevant_per_query=0, candidates={q: {} for q in col.queries})
    assert only_non.report["relevant"] == 0 and only_non.report["queries_without_relevant"] == 0
    assert only_rel.report["nonrelevant"] == 0 and only_rel.report["queries_without_nonrelevant"] == 0
    assert only_rel.report["relevant"] == sum(1 for q in col.qrels if q.relevance > 0)
