"""Hostile input, property-based: every parser, pair building and tokenization on files and texts that
are empty, whitespace-only, very long, arbitrary Unicode, full of control characters and NUL, with CRLF
or bare-CR line endings, a byte-order mark, Latin-1 bytes, duplicate or mismatched ids.

The property everywhere: the input works and gives back what was written (modulo the documented
normalisation: every run of whitespace or control characters is one space, ends trimmed; see
``mechir_nig.data.formats``), or it raises a documented mechir_nig error (``DataError``/``InputError``)
whose message names the file and line or the id/index; what is skipped is counted and announced with a
``DataWarning``. Nothing is dropped silently, nothing crashes with a raw ``UnicodeDecodeError``,
``KeyError`` or ``TypeError``.

Hypothesis runs derandomized (a fixed seed per test) with a bounded number of examples (profile
``mechir-nig-ci``); ``MECHIR_NIG_HYPOTHESIS_EXAMPLES=500`` raises every test's ``max_examples`` to 500,
and ``HYPOTHESIS_PROFILE=mechir-nig-random`` draws fresh random examples (keeping failures in
``.hypothesis/``).
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ir_measures import Qrel

from mechir_nig.data import Collection, bm25_candidates, judged_pairs, load_collection
from mechir_nig.data.formats import (
    is_tsv_header,
    iter_trec_run,
    read_jsonl,
    read_texts,
    read_trec_docs,
    read_trec_qrels,
    read_trec_run,
    read_trec_topics,
    read_tsv,
)
from mechir_nig.errors import DataError, DataWarning, InputError, TruncationWarning
from mechir_nig.models.tokenization import DOC, QUERY, tokenize_texts

# --------------------------------------------------------------------------------------------------
# Hypothesis profiles
# --------------------------------------------------------------------------------------------------

#: ``MECHIR_NIG_HYPOTHESIS_EXAMPLES=N`` raises every test's number of examples to at least N.
MORE_EXAMPLES = int(os.environ.get("MECHIR_NIG_HYPOTHESIS_EXAMPLES", "0") or 0)
_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("mechir-nig-ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("mechir-nig-random", derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mechir-nig-ci"))


def examples(n: int) -> settings:
    """The loaded profile with ``max_examples=n`` (or the environment's larger number)."""
    return settings(max_examples=max(n, MORE_EXAMPLES))


# --------------------------------------------------------------------------------------------------
# The documented normalisation, written independently of the parsers
# --------------------------------------------------------------------------------------------------


def is_blank(c: str) -> bool:
    """Whitespace for the parsers: Unicode whitespace, control characters (Cc) and U+FEFF."""
    return c.isspace() or unicodedata.category(c) == "Cc" or c == "\ufeff"


def documented(text: str) -> str:
    """What a parser gives back for ``text``: runs of blanks -> one space, ends trimmed."""
    return " ".join("".join(" " if is_blank(c) else c for c in text).split())


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

#: Whitespace and control characters, including the ones ``str.splitlines`` breaks on.
BLANKS = " \t\r\n\x00\x01\x0b\x0c\x1b\x1c\x1f\x7f\x85\x9f\xa0\u1680\u2000\u2028\u2029\u3000\ufeff"
blank_text = st.text(alphabet=BLANKS, max_size=12)
#: Characters an id can hold in every format (no blanks, no SGML brackets).
id_char = st.characters(exclude_categories=("Z", "Cc", "Cs"), exclude_characters="<>\ufeff")
core_id = st.text(alphabet=id_char, min_size=1, max_size=12)
#: An id as written: a clean core wrapped in blanks that the parsers trim (no tab or newline: they
#: separate records and fields).
padded_id = st.builds(
    lambda a, core, b: a + core + b,
    st.text(alphabet=BLANKS.replace("\t", "").replace("\n", "").replace("\r", ""), max_size=3),
    core_id,
    st.text(alphabet=" \x00\ufeff", max_size=3),
)
word = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=6)
#: Any text: arbitrary Unicode, whitespace/control only, empty, or very long.
hostile_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(exclude_categories=("Cs",), max_codepoint=0x2FF)),
    blank_text,
    st.lists(st.one_of(word, blank_text), max_size=12).map("".join),
    st.builds(lambda unit, n: unit * n, st.text(min_size=1, max_size=6), st.integers(500, 6000)),
)
line_ending = st.sampled_from(["\n", "\r\n"])
bom = st.sampled_from(["", "\ufeff"])


def one_line(text: str) -> str:
    """``text`` with its ``\\n`` replaced: a record of a line format cannot hold one (no escaping)."""
    return text.replace("\n", " ")


def no_sgml(text: str) -> str:
    """``text`` without ``<``: SGML has no escaping, anything shaped like a tag is markup."""
    return text.replace("<", " ")


_names = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def write(folder: Path, name: str, data: str | bytes) -> Path:
    """A new file (unique name, suffix from ``name``) holding ``data`` (str: UTF-8)."""
    path = folder / f"{next(_names)}-{name}"
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def names_line(err: BaseException, path: Path, line: int | None = None) -> None:
    msg = str(err)
    where = f"{path}, line {line}:" if line is not None else str(path)
    assert where in msg, (where, msg)


def expect_records(read, path: Path, written: list[tuple[str, str, int]]) -> None:
    """Read ``path`` with ``empty="error"`` and ``empty="skip"`` and check every written record
    ``(id, text, line)`` comes back normalised, or is reported (error naming its line / skipped list)."""
    expected = [(documented(k), documented(t), line) for k, t, line in written]
    empties = [(k, line) for k, t, line in expected if not t]
    if empties:
        with pytest.raises(DataError, match="empty='skip'") as info:
            list(read(path))
        names_line(info.value, path, empties[0][1])
    else:
        assert list(read(path)) == [(k, t) for k, t, _ in expected]
    skipped: list[tuple[str, int]] = []
    got = list(read(path, empty="skip", skipped=skipped))
    assert got == [(k, t) for k, t, _ in expected if t]
    assert skipped == empties


# --------------------------------------------------------------------------------------------------
# TSV
# --------------------------------------------------------------------------------------------------

record = st.tuples(padded_id, hostile_text)


def unique_records(strategy=record, max_size: int = 6):
    return st.lists(strategy, min_size=1, max_size=max_size, unique_by=lambda r: documented(str(r[0])))


@examples(100)
@given(records=unique_records(), eol=line_ending, mark=bom, blank_lines=st.booleans())
def test_tsv_round_trip(folder, records, eol, mark, blank_lines):
    assume(not is_tsv_header([records[0][0], one_line(records[0][1])]))
    lines, written = [], []
    for key, text in records:
        if blank_lines:
            lines.append("\x00 \t")  # control characters and whitespace only: a blank line
        lines.append(f"{key}\t{one_line(text)}")
        written.append((key, one_line(text), len(lines)))
    path = write(folder, "docs.tsv", mark + eol.join(lines) + eol)
    expect_records(read_tsv, path, written)


@examples(40)
@given(records=unique_records(), dup=st.integers(0, 5), eol=line_ending)
def test_tsv_duplicate_id_names_both_lines(folder, records, dup, eol):
    assume(not is_tsv_header([records[0][0], "x"]))
    key = records[dup % len(records)][0]
    lines = [f"{k}\tsome text" for k, _ in records] + [f" {key} \tagain"]
    path = write(folder, "dup.tsv", eol.join(lines) + eol)
    with pytest.raises(DataError, match=r"duplicate id .* \(first at line \d+\)") as info:
        list(read_tsv(path))
    names_line(info.value, path, len(lines))


# --------------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------------

json_record = st.tuples(
    st.one_of(padded_id, st.integers(-(10**6), 10**6)), st.one_of(st.none(), hostile_text), hostile_text
)


@examples(100)
@given(
    records=unique_records(json_record),
    eol=line_ending,
    mark=bom,
    ascii_only=st.booleans(),
)
def test_jsonl_round_trip(folder, records, eol, mark, ascii_only):
    lines, written = [], []
    for key, title, text in records:
        obj: dict[str, Any] = {"_id": key, "text": text}
        if title is not None:
            obj["title"] = title
        lines.append(json.dumps(obj, ensure_ascii=ascii_only))
        written.append((str(key), f"{title or ''} {text}", len(lines)))
    path = write(folder, "corpus.jsonl", mark + eol.join(lines) + eol)
    expect_records(read_jsonl, path, written)


def test_jsonl_duplicate_key_and_lone_surrogate(tmp_path):
    # Found by this file: json keeps the last of two equal keys silently, and a "\ud800" escape gave a
    # record that the tokenizer could not take (a raw TypeError far from the file).
    dup = write(tmp_path, "d.jsonl", '{"_id": "a", "text": "kept?", "text": "dropped?"}\n')
    with pytest.raises(DataError, match=r"line 1: key 'text' twice in one object") as info:
        list(read_jsonl(dup))
    names_line(info.value, dup, 1)
    lone = write(tmp_path, "s.jsonl", '{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "x\\ud800y"}\n')
    with pytest.raises(DataError, match="lone surrogate") as info:
        list(read_jsonl(lone))
    names_line(info.value, lone, 2)
    pair = write(tmp_path, "p.jsonl", '{"_id": "a", "text": "\\ud83d\\ude00 ok"}\n')
    assert list(read_jsonl(pair)) == [("a", "\U0001f600 ok")]  # a surrogate *pair* is fine


# --------------------------------------------------------------------------------------------------
# TREC documents and topics
# --------------------------------------------------------------------------------------------------


@examples(100)
@given(
    records=unique_records(st.tuples(padded_id, hostile_text.map(no_sgml))),
    eol=line_ending,
    mark=bom,
    layout=st.sampled_from(["one line", "tags on lines", "text on lines"]),
)
def test_trec_docs_round_trip(folder, records, eol, mark, layout):
    parts, written, line = [], [], 1
    for key, text in records:
        if layout == "one line":
            block = f"<DOC><DOCNO>{key}</DOCNO><TEXT>{text}</TEXT></DOC>"
        elif layout == "tags on lines":
            block = f"<DOC>{eol}<DOCNO> {key} </DOCNO>{eol}<TEXT>{eol}{text}{eol}</TEXT>{eol}</DOC>"
        else:
            block = f"<doc>{eol}<docno>{key}</docno>{eol}{text}{eol}</doc>"
        written.append((key, text, line))
        parts.append(block)
        line += block.count("\n") + 1
    path = write(folder, "docs.trec", mark + eol.join(parts) + eol)
    expect_records(read_trec_docs, path, written)


def topic_text(value: str, field: str) -> str:
    """The documented topic normalisation: blanks, then the classic ``Topic:``-style prefix removed."""
    prefix = {"title": "topic:", "desc": "description:", "narr": "narrative:"}[field]
    value = documented(value)
    return value[len(prefix) :].strip() if value.lower().startswith(prefix) else value


@examples(80)
@given(
    topics=unique_records(st.tuples(padded_id, hostile_text.map(no_sgml), hostile_text.map(no_sgml))),
    eol=line_ending,
    mark=bom,
    field=st.sampled_from(["title", "desc"]),
    closed=st.booleans(),
)
def test_trec_topics_round_trip(folder, topics, eol, mark, field, closed):
    parts, written, line = [], [], 1
    for key, title, desc in topics:
        end_title, end_desc = ("</title>", "</desc>") if closed else ("", "")
        block = eol.join(
            [
                "<top>",
                f"<num> Number: {key}",
                f"<title> {title}{end_title}",
                f"<desc> Description:{eol}{desc}{end_desc}",
                "</top>",
            ]
        )
        written.append((key, title if field == "title" else f"Description: {desc}", line))
        parts.append(block)
        line += block.count("\n") + 1
    path = write(folder, "topics.trec", mark + eol.join(parts) + eol)
    expected = [(documented(k), topic_text(t, field), n) for k, t, n in written]
    empties = [(k, n) for k, t, n in expected if not t]
    skipped: list[tuple[str, int]] = []
    got = list(read_trec_topics(path, field=field, empty="skip", skipped=skipped))
    assert got == [(k, t) for k, t, _ in expected if t]
    assert skipped == empties
    if empties:
        with pytest.raises(DataError, match="empty='skip'") as info:
            list(read_trec_topics(path, field=field))
        names_line(info.value, path, empties[0][1])


# --------------------------------------------------------------------------------------------------
# Qrels and run files
# --------------------------------------------------------------------------------------------------

#: Field separators: any run of blanks except a line break.
separator = st.text(alphabet=BLANKS.replace("\n", "").replace("\r", ""), min_size=1, max_size=3)
small_id = st.text(alphabet=id_char, min_size=1, max_size=4)


@examples(100)
@given(
    judgements=st.lists(st.tuples(small_id, small_id, st.integers(-3, 4)), min_size=1, max_size=10),
    sep=separator,
    eol=line_ending,
    mark=bom,
)
def test_qrels_round_trip_or_duplicate_named(folder, judgements, sep, eol, mark):
    lines = [sep.join([q, "0", d, str(r)]) + sep for q, d, r in judgements]
    path = write(folder, "qrels", mark + eol.join(lines) + eol)
    first: dict[tuple[str, str], int] = {}
    duplicate = None
    for n, (q, d, _) in enumerate(judgements, 1):
        if (q, d) in first:
            duplicate = (n, first[(q, d)])
            break
        first[(q, d)] = n
    if duplicate is None:
        assert list(read_trec_qrels(path)) == [Qrel(q, d, r, "0") for q, d, r in judgements]
    else:
        with pytest.raises(DataError, match=rf"duplicate .*\(first at line {duplicate[1]}\)") as info:
            list(read_trec_qrels(path))
        names_line(info.value, path, duplicate[0])


finite_score = st.floats(allow_nan=False, allow_infinity=False, width=64)


@examples(100)
@given(
    results=st.lists(
        st.tuples(small_id, small_id, st.one_of(finite_score, st.sampled_from([math.nan, math.inf]))),
        min_size=1,
        max_size=10,
    ),
    sep=separator,
    eol=line_ending,
    mark=bom,
)
def test_run_round_trip_or_error_named(folder, results, sep, eol, mark):
    lines = [sep.join([q, "Q0", d, str(i + 1), repr(s), "tag"]) for i, (q, d, s) in enumerate(results)]
    path = write(folder, "run", mark + eol.join(lines) + eol)
    seen: dict[tuple[str, str], int] = {}
    problem = None
    for n, (q, d, s) in enumerate(results, 1):
        if not math.isfinite(s):
            problem = (n, "is not finite")
            break
        if (q, d) in seen:
            problem = (n, f"first at line {seen[(q, d)]}")
            break
        seen[(q, d)] = n
    if problem is None:
        expected: dict[str, dict[str, float]] = {}
        for q, d, s in results:
            expected.setdefault(q, {})[d] = s
        assert read_trec_run(path) == expected
        assert [(s.query_id, s.doc_id, s.score) for s in iter_trec_run(path)] == results
    else:
        with pytest.raises(DataError, match=problem[1]) as info:
            read_trec_run(path)
        names_line(info.value, path, problem[0])


# --------------------------------------------------------------------------------------------------
# Every parser: Latin-1 bytes, arbitrary bytes, structured garbage
# --------------------------------------------------------------------------------------------------

PARSERS = {
    "docs.tsv": read_tsv,
    "corpus.jsonl": read_jsonl,
    "docs.trec": read_trec_docs,
    "topics.trec": read_trec_topics,
    "qrels": read_trec_qrels,
    "run": iter_trec_run,
    "texts": lambda p: read_texts(p, "docs"),
}
LATIN1_WRITERS = {
    "docs.tsv": lambda k, t: f"{k}\t{t}",
    "corpus.jsonl": lambda k, t: json.dumps({"_id": k, "text": t}, ensure_ascii=False),
    "docs.trec": lambda k, t: f"<DOC><DOCNO>{k}</DOCNO>{t}</DOC>",
    "topics.trec": lambda k, t: f"<top><num>{k}</num><title>{t}</title></top>",
    "qrels": lambda k, t: f"{k} 0 d{t.replace(' ', '_')} 1",
    "run": lambda k, t: f"{k} Q0 d{t.replace(' ', '_')} 1 1.5 x",
}
latin1_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="<"))


@pytest.mark.parametrize("name", sorted(LATIN1_WRITERS))
@examples(25)
@given(data=st.data())
def test_latin1_bytes_name_the_line(folder, name, data):
    ids = data.draw(
        st.lists(
            st.text(alphabet="abcdefgh0123456789", min_size=1, max_size=5),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    texts = data.draw(st.lists(latin1_text.map(lambda t: "x" + t), min_size=len(ids), max_size=len(ids)))
    lines = [LATIN1_WRITERS[name](f"i{k}", t).encode("latin-1") for k, t in zip(ids, texts)]
    path = write(folder, name, b"\n".join(lines) + b"\n")
    bad = next((n for n, raw in enumerate(lines, 1) if not _is_utf8(raw)), None)
    # In qrels and run lines, Latin-1 bytes that happen to be UTF-8 for a blank (b"\xc2\xa0", b"\x7f")
    # split a field: such a line may be refused for its number of fields.
    split = set()
    if name in ("qrels", "run"):
        split = {
            n for n, raw in enumerate(lines[: (bad - 1) if bad else None], 1) if _has_blank(raw.decode())
        }
    try:
        records = list(PARSERS[name](path))
    except DataError as e:
        found = re.search(r", line (\d+): ", str(e))
        assert found, str(e)
        line = int(found.group(1))
        if line == bad:
            assert re.search("not valid UTF-8 .*re-encode the file as UTF-8", str(e)), str(e)
        else:  # valid UTF-8 lines are well-formed records here, but for a split field
            assert line in split and "fields, expected" in str(e), str(e)
        names_line(e, path, line)
        return
    assert bad is None, f"line {bad} is not UTF-8 but was read: {records}"
    assert len(records) == len(lines)


def _has_blank(line: str) -> bool:
    return any(is_blank(c) for c in line.replace(" ", ""))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_parsed(name: str, records: list) -> None:
    """What a parser yields: normalised, non-empty, unique ids and texts."""
    if name in ("qrels", "run"):
        for r in records:
            assert all(documented(x) == x and x and " " not in x for x in (r.query_id, r.doc_id))
        return
    keys = [k for k, _ in records]
    assert len(set(keys)) == len(keys)
    for k, t in records:
        assert k and t and documented(k) == k and documented(t) == t


@pytest.mark.parametrize("name", sorted(PARSERS))
@pytest.mark.parametrize("gz", [False, True])
@examples(30)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_data_error(folder, name, gz, data):
    if gz:
        data = gzip.compress(data)[: len(data) // 2 + 10]  # often truncated
    path = write(folder, name + (".gz" if gz else ""), data)
    try:
        records = list(PARSERS[name](path))
    except DataError as e:
        names_line(e, path)
        return
    check_parsed(name, records)


TOKENS = [
    "<DOC>", "</DOC>", "<DOCNO>", "</DOCNO>", "<TEXT>", "</TEXT>", "<top>", "</top>", "<num>", "<title>",
    "<desc>", "Number:", "{", "}", '"_id"', '"text"', '"title"', ":", ",", '"', "null", "1", "0", "-2",
    "2.5", "nan", "Q0", "d1", "q1", "\t", " ", "\n", "\r\n", "\r", "\x00", "\ufeff", "é", "\u2028", "\x85",
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARSERS))
@examples(40)
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=40), empty=st.sampled_from(["error", "skip"]))
def test_structured_garbage_parses_or_raises_data_error(folder, name, tokens, empty):
    path = write(folder, name, "".join(tokens))
    reader = PARSERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        try:
            if name in ("qrels", "run", "texts"):
                records = list(reader(path))
            else:
                records = list(reader(path, empty=empty))  # type: ignore[call-arg]
        except DataError as e:
            names_line(e, path)
            return
    check_parsed(name, records)


def test_regressions_found_by_these_tests(tmp_path):
    # A bare-CR file (classic Mac OS) was read as one line: TSV records ran into one text.
    mac = write(tmp_path, "mac.tsv", b"d1\tcats purr\rd2\tdogs bark\r")
    assert list(read_tsv(mac)) == [("d1", "cats purr"), ("d2", "dogs bark")]
    # Control characters were text: a NUL-only document passed the parser and failed later, in the
    # tokenizer, without file or line; and qrels fields were not split on them.
    nul = write(tmp_path, "nul.tsv", "d1\tok\nd2\t\x00\x1b\n")
    with pytest.raises(DataError, match=r"line 2: 'd2' has an empty text"):
        list(read_tsv(nul))
    qrels = write(tmp_path, "qrels", "q1\x000\x00d1\x001\n")
    assert list(read_trec_qrels(qrels)) == [Qrel("q1", "d1", 1, "0")]
    # A BOM inside a file (two files joined with cat) stuck to the next id.
    joined = write(tmp_path, "joined.tsv", "\ufeffd1\tone\n\ufeffd2\ttwo\n")
    assert list(read_tsv(joined)) == [("d1", "one"), ("d2", "two")]
    # UTF-16 is refused with a message that says so.
    utf16 = write(tmp_path, "u16.tsv", "d1\tx\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"line 1: not valid UTF-8 .*UTF-16 byte-order mark"):
        list(read_tsv(utf16))


# --------------------------------------------------------------------------------------------------
# Collections and judged pairs: mismatched and duplicate ids
# --------------------------------------------------------------------------------------------------

pair_id = st.sampled_from(["q1", "q2", "q3", "qX"])
doc_id = st.sampled_from(["d1", "d2", "d3", "d4", "dX", "dY"])


@examples(80)
@given(
    judgements=st.lists(st.tuples(pair_id, doc_id, st.integers(-1, 2)), max_size=14),
    candidates=st.dictionaries(pair_id, st.dictionaries(doc_id, finite_score, max_size=5), max_size=4),
    use_candidates=st.booleans(),
    texts=st.lists(hostile_text, min_size=7, max_size=7),
)
def test_judged_pairs_count_every_judgement(judgements, candidates, use_candidates, texts):
    docs = {f"d{i}": texts[i - 1] for i in range(1, 5)}
    queries = {f"q{i}": texts[3 + i] for i in range(1, 4)}
    qrels = [Qrel(q, d, r) for q, d, r in judgements]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        col = Collection(docs=docs, queries=queries, qrels=qrels, relevance_threshold=1)
        kwargs: dict[str, Any] = {}
        if use_candidates:
            kwargs = {"candidates": candidates, "sample_nonrelevant_from_candidates": True}
        pairs = judged_pairs(col, **kwargs)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    report = col.report
    distinct = {(q, d): r for q, d, r in judgements}  # the last grade of a repeated pair counts
    assert len(col.qrels) == len(judgements)  # kept, even the unknown and repeated ones
    assert report["qrels_duplicates"] == len(judgements) - len(distinct)
    assert report["qrels_unknown_queries"] == len({q for q, _ in distinct if q not in queries})
    assert report["qrels_unknown_docs"] == len({d for _, d in distinct if d not in docs})
    if report["qrels_duplicates"]:
        assert any("repeat a (query, document) pair" in m for m in messages)
    if report["qrels_unknown_queries"] or report["qrels_unknown_docs"]:
        assert any("are not in the collection" in m for m in messages)
    # Every distinct judgement is a pair, or counted as skipped: nothing is dropped silently.
    usable = {(q, d): r for (q, d), r in distinct.items() if q in queries and d in docs}
    judged_pairs_ = {(p.query_id, p.doc_id): p.relevance for p in pairs if p.relevance is not None}
    unknown_queries = sum(1 for q, _ in distinct if q not in queries)
    assert pairs.report["qrels_unknown_queries_skipped"] == sum(1 for q in judgements if q[0] not in queries)
    assert pairs.report["qrels_unknown_skipped"] == sum(
        1 for q, d in distinct if q in queries and d not in docs
    )
    if not use_candidates:
        assert judged_pairs_ == usable
        assert len(pairs) + pairs.report["qrels_unknown_skipped"] + unknown_queries == len(distinct)
    else:
        relevant = {k: r for k, r in usable.items() if r >= 1}
        hard = {k: r for k, r in usable.items() if r < 1 and k[1] in candidates.get(k[0], {})}
        assert judged_pairs_ == {**relevant, **hard}
        unjudged = [(q, d) for q, ranked in candidates.items() if q in queries for d in ranked]
        unjudged = [k for k in unjudged if k not in distinct]
        assert {(p.query_id, p.doc_id) for p in pairs if p.relevance is None} == {
            k for k in unjudged if k[1] in docs
        }
        assert pairs.report["candidates_unknown_skipped"] == sum(1 for k in unjudged if k[1] not in docs)
    for p in pairs:  # texts pass through unchanged
        assert p.query == queries[p.query_id] and p.doc == docs[p.doc_id]


@examples(25)
@given(
    texts=st.lists(hostile_text, min_size=1, max_size=6),
    queries=st.lists(hostile_text, min_size=1, max_size=3),
    k=st.integers(1, 8),
)
def test_bm25_candidates_on_hostile_texts(texts, queries, k):
    col = Collection(
        docs={f"d{i}": t for i, t in enumerate(texts)},
        queries={f"q{i}": t for i, t in enumerate(queries)},
        relevance_threshold=1,
    )
    run = bm25_candidates(col, k=k)
    assert list(run) == list(col.queries)  # every query is a key, none dropped
    for ranked in run.values():
        assert len(ranked) <= k and set(ranked) <= set(col.docs)
        assert all(math.isfinite(s) and s > 0 for s in ranked.values())
        assert list(ranked.values()) == sorted(ranked.values(), reverse=True)


@examples(25)
@given(
    docs=unique_records(st.tuples(padded_id, hostile_text.map(one_line)), max_size=4),
    queries=unique_records(st.tuples(padded_id, hostile_text.map(one_line)), max_size=3),
    extra=st.lists(st.tuples(small_id, small_id, st.integers(0, 2)), max_size=4),
    eol=line_ending,
    mark=bom,
    empty=st.sampled_from(["error", "skip"]),
)
def test_load_collection_from_hostile_files(folder, docs, queries, extra, eol, mark, empty):
    assume(not is_tsv_header([docs[0][0], "x"]) and not is_tsv_header([queries[0][0], "x"]))
    doc_path = write(folder, "docs.tsv", mark + eol.join(f"{k}\t{one_line(t)}" for k, t in docs) + eol)
    query_path = write(
        folder, "queries.tsv", mark + eol.join(f"{k}\t{one_line(t)}" for k, t in queries) + eol
    )
    # qrels naming every document for the first query, plus judgements naming arbitrary (mostly unknown) ids
    judged = [(documented(queries[0][0]), documented(k), 1) for k, _ in docs]
    extra = [(q, d, r) for q, d, r in extra if (q, d) not in {(a, b) for a, b, _ in judged}]
    extra = list({(q, d): (q, d, r) for q, d, r in extra}.values())
    qrels_path = write(folder, "qrels", mark + eol.join(f"{q} 0 {d} {r}" for q, d, r in judged + extra) + eol)
    doc_texts = {documented(k): documented(t) for k, t in docs}
    query_texts = {documented(k): documented(t) for k, t in queries}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            col = load_collection(docs=doc_path, queries=query_path, qrels=qrels_path, empty=empty)
        except DataError as e:
            msg = str(e)
            if "has no documents" in msg or "has no queries" in msg:  # every text empty and skipped
                assert empty == "skip"
                assert not any(doc_texts.values()) or not any(query_texts.values())
                return
            assert empty == "error" and "empty='skip'" in msg
            assert str(doc_path) in msg or str(query_path) in msg
            return
    assert col.docs == {k: t for k, t in doc_texts.items() if t}
    assert col.queries == {k: t for k, t in query_texts.items() if t}
    assert len(col.qrels) == len(judged) + len(extra)  # unknown ids kept and reported
    assert col.report.get("empty_docs_skipped", 0) == sum(1 for t in doc_texts.values() if not t)


# --------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------

#: Texts the tokenizer may see: anything, plus lone surrogates (not valid Unicode) now and then.
token_text = st.one_of(
    hostile_text,
    st.builds(lambda a, s, b: a + s + b, word, st.sampled_from(["\ud800", "\udfff"]), word),
)


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _expected_refusal(tokenizer, queries: list[str], docs: list[str]) -> str | None:
    """The index a tokenize call must name in its InputError, or None when every text is acceptable."""
    for what, texts in (("queries", queries), ("docs", docs)):
        for i, t in enumerate(texts):
            if not t.strip():
                return f"{what}[{i}] is empty or only whitespace"
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                return f"{what}[{i}]"
    for what, texts in (("queries", queries), ("docs", docs)):
        for i, t in enumerate(texts):
            if _n_tokens(tokenizer, t) == 0:
                return f"{what}[{i}]"
    return None


@examples(40)
@given(pairs=st.lists(st.tuples(token_text, token_text), min_size=1, max_size=3))
def test_tokenize_pairs_works_or_names_the_text(tiny_ce, pairs):
    queries, docs = [q for q, _ in pairs], [d for _, d in pairs]
    tokenizer = tiny_ce.tokenizer
    refusal = _expected_refusal(tokenizer, queries, docs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            batch = tiny_ce.tokenize(queries, docs)
        except InputError as e:
            msg = str(e)
            if refusal is not None:
                assert refusal in msg, (refusal, msg)
            else:  # the only other refusal: a query too long to leave room for its document
                assert "leaving no room for its document" in msg and "queries[" in msg, msg
            return
    assert refusal is None, refusal
    assert batch.queries == queries and batch.docs == docs  # kept exactly as given
    n_trunc = 0
    for i, (q, d) in enumerate(pairs):
        groups = batch.groups[i].tolist()
        assert groups.count(QUERY) == _n_tokens(tokenizer, q)  # the query is never truncated
        n_doc = _n_tokens(tokenizer, d)
        assert 1 <= groups.count(DOC) <= n_doc
        assert bool(batch.truncated[i]) == (groups.count(DOC) < n_doc)
        n_trunc += bool(batch.truncated[i])
    truncation = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert bool(truncation) == (n_trunc > 0)  # nothing truncated silently
    scores = tiny_ce(batch)
    assert scores.shape == (len(pairs),) and bool(scores.isfinite().all())


@examples(30)
@given(texts=st.lists(token_text, min_size=1, max_size=4))
def test_tokenize_texts_works_or_names_the_text(tiny_ce, texts):
    tokenizer = tiny_ce.tokenizer
    refusal = _expected_refusal(tokenizer, [], texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        try:
            batch = tokenize_texts(tokenizer, texts, max_length=64, n_ctx=tiny_ce.cfg.n_ctx)
        except InputError as e:
            assert refusal is not None, str(e)
            assert refusal.replace("docs", "texts") in str(e)
            return
    assert refusal is None, refusal
    assert batch.texts == texts
    for i, t in enumerate(texts):
        assert batch.groups[i].tolist().count(DOC) == min(_n_tokens(tokenizer, t), 62)


def test_tokenize_lone_surrogate_is_an_input_error(tiny_ce):
    # Found by this file: the tokenizers library raised a bare TypeError ("TextEncodeInput must be ...").
    with pytest.raises(InputError, match=r"docs\[1\] .* lone surrogate"):
        tiny_ce.tokenize(["q", "q"], ["fine", "bad \udc00 text"])
    with pytest.raises(InputError, match=r"queries\[0\] .* lone surrogate"):
        tiny_ce.score(["\ud800"], ["doc"])
