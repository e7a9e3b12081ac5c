"""Perturbations and their alignment: aligned inputs score exactly as unaligned ones, ``changed`` marks
exactly the perturbed tokens, and perturbations that change nothing (or only truncated tokens) raise."""

from __future__ import annotations

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import HookedCrossEncoder
from mechir_nig.errors import InputError
from mechir_nig.interventions import perturb
from mechir_nig.models.tokenization import PAD

VOCAB = perturb.term_idf({f"d{i}": d for i, d in enumerate(DOCS)})

PERTURBATIONS = {
    "tfc1_start": lambda q, d: perturb.tfc1(q, d, where="start"),
    "tfc1_middle": lambda q, d: perturb.tfc1(q, d, where="middle"),
    "tfc1_end": lambda q, d: perturb.tfc1(q, d, where="end"),
    "tdc": lambda q, d: perturb.tdc(q, d, VOCAB, where="middle"),
    "random_term": lambda q, d: perturb.random_term(q, d, VOCAB, seed=1, where="start"),
    "delete_first_word": lambda q, d: d.split(" ", 1)[1],
    "replace_words": lambda q, d: d.replace(" a", " the very"),
    "custom_swap": lambda q, d: " ".join(reversed(d.split(" ")[:3])) + " " + " ".join(d.split(" ")[3:]),
}


def _strip(batch, i):
    """The attended tokens of row ``i`` of an aligned side, in order."""
    keep = batch.attention_mask[i].bool()
    return {k: getattr(batch, k)[i][keep] for k in ("input_ids", "token_type_ids", "groups", "position_ids")}


@pytest.fixture(scope="module")
def ce64(minilm_ce_dir):
    return HookedCrossEncoder.from_pretrained(minilm_ce_dir, dtype=torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_aligned_sides_score_as_unaligned(tiny_ce, ce64, name):
    fn = PERTURBATIONS[name]
    for model, tol in ((tiny_ce, 1e-6), (ce64, 1e-9)):
        al = perturb.align(model, QUERIES, DOCS, fn)
        assert al.clean.input_ids.shape == al.perturbed.input_ids.shape == al.changed.shape
        pert = [fn(q, d) for q, d in zip(QUERIES, DOCS, strict=True)]
        assert al.perturbed.docs == pert and al.clean.docs == DOCS
        for side, docs in ((al.clean, DOCS), (al.perturbed, pert)):
            ref = model.tokenize(QUERIES, docs)
            torch.testing.assert_close(model(side), model(ref), atol=tol, rtol=0)
            for i in range(len(QUERIES)):  # each side holds exactly the tokenizer's input, at its positions
                got, n = _strip(side, i), int(ref.attention_mask[i].sum())
                assert torch.equal(got["input_ids"], ref.input_ids[i, :n])
                assert torch.equal(got["token_type_ids"], ref.token_type_ids[i, :n])
                assert torch.equal(got["groups"], ref.groups[i, :n])
                assert torch.equal(got["position_ids"], torch.arange(n))


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_injection_changes_exactly_the_injected_tokens(tiny_ce, where):
    term = "neuron"  # two word pieces
    n_term = len(tiny_ce.tokenizer(term, add_special_tokens=False)["input_ids"])
    al = perturb.align(tiny_ce, QUERIES, DOCS, lambda q, d: perturb.tfc1(q, d, term=term, where=where))
    c, p = al.clean, al.perturbed
    for i in range(len(QUERIES)):
        ch = al.changed[i]
        assert int(ch.sum()) == n_term
        assert (c.attention_mask[i][ch] == 0).all() and (p.attention_mask[i][ch] == 1).all()
        assert torch.equal(al.injected[i], ch) and not al.removed[i].any()
        assert (
            tiny_ce.tokenizer.convert_tokens_to_string(
                [al.perturbed_tokens[i][j] for j in ch.nonzero().flatten()]
            )
            == term
        )
        # every other attended position holds the same token on both sides
        same = ~ch & (c.groups[i] != PAD)
        assert torch.equal(c.input_ids[i][same], p.input_ids[i][same])
        assert (c.attention_mask[i][same] == 1).all() and (p.attention_mask[i][same] == 1).all()
        # a masked slot holds the other side's token, type and position
        assert torch.equal(c.input_ids[i][ch], p.input_ids[i][ch])
        assert torch.equal(c.position_ids[i][ch], p.position_ids[i][ch])


def test_removal_and_substitution(tiny_ce):
    al = perturb.align(
        tiny_ce,
        QUERIES[:2],
        DOCS[:2],
        lambda q, d: perturb.remove_term(q, d, "cells" if "neuron" in q else "stars"),
    )
    for i in range(2):
        assert int(al.changed[i].sum()) == 1 and torch.equal(al.removed[i], al.changed[i])
        assert (al.perturbed.attention_mask[i][al.changed[i]] == 0).all()
        j = int(al.changed[i].nonzero())
        assert al.clean_tokens[i][j] in ("cells", "stars") and al.perturbed_tokens[i][j] == ""
    sub = perturb.align(tiny_ce, QUERIES[2:3], DOCS[2:3], lambda q, d: d.replace("water", "milk"))
    j = int(sub.changed[0].nonzero())  # a one-piece substitution shares its position
    assert (sub.clean_tokens[0][j], sub.perturbed_tokens[0][j]) == ("water", "milk")
    assert sub.clean.attention_mask[0, j] == sub.perturbed.attention_mask[0, j] == 1
    assert torch.equal(sub.clean.position_ids, sub.perturbed.position_ids)


def test_perturbation_that_changes_nothing_raises(tiny_ce):
    with pytest.raises(InputError, match=r"pair 1 .*changes nothing"):
        perturb.align(tiny_ce, QUERIES[:2], DOCS[:2], [DOCS[0] + " neuron", DOCS[1]])
    long_doc = " ".join(["water"] * 300)
    with pytest.raises(InputError, match=r"pair 0 .*past max_length"):
        perturb.align(tiny_ce, QUERIES[:1], [long_doc], lambda q, d: perturb.tfc1(q, d, where="end"))
    with pytest.warns(Warning):  # truncated but the change is kept: aligned, truncation reported
        al = perturb.align(tiny_ce, QUERIES[:1], [long_doc], lambda q, d: perturb.tfc1(q, d, where="start"))
    assert bool(al.clean.truncated[0]) and al.changed[0].sum() >= 1


def test_perturbation_functions():
    q, d = "how do black holes form", "Stars collapse at the end of their life."
    assert perturb.query_terms(q) == ["black", "holes", "form"]
    assert perturb.tfc1(q, d) == d + " black"
    assert perturb.tfc1(q, d, term="holes", where="start") == "holes " + d
    assert perturb.tfc1(q, "a b c d", term="x", where="middle") == "a b x c d"
    idf = {"black": 1.0, "holes": 3.0, "form": 2.0}
    assert perturb.tdc(q, d, idf) == d + " holes"
    docs = {"a": "black holes", "b": "black cats", "c": "white cats"}
    table = perturb.term_idf(docs)
    assert table["holes"] > table["black"] > 0
    assert perturb.tdc(q, d, docs) == d + " holes"  # IDF computed from the documents
    assert perturb.remove_term(q, "Black holes: black, BLACK.", "black") == "holes: , ."
    r1 = perturb.random_term(q, d, ["black", "cats", "white"], seed=0)
    assert r1 == perturb.random_term(q, d, ["white", "cats", "black"], seed=0)
    assert r1.split()[-1] in ("cats", "white")
    out = perturb.perturb_docs(lambda q, d: d.upper(), [q], [d])
    assert out == [d.upper()]


def test_perturbation_errors():
    q, d = "how do black holes form", "Stars collapse."
    with pytest.raises(InputError, match="where"):
        perturb.tfc1(q, d, where="after")
    with pytest.raises(InputError, match="pass term="):
        perturb.tfc1("is it", d)
    with pytest.raises(InputError, match="tfc1"):
        perturb.tdc(q, d, {"cats": 1.0})
    with pytest.raises(InputError, match="does not occur"):
        perturb.remove_term(q, d, "black")
    with pytest.raises(InputError, match="outside the query"):
        perturb.random_term(q, d, ["black", "holes"])
    with pytest.raises(InputError, match="non-empty string"):
        perturb.perturb_docs(lambda q, d: "", [q], [d])


def test_tfc1_term_rule_first_or_highest_idf_and_the_reason():
    from mechir_nig.interventions.perturb import term_idf, tfc1, tfc1_term

    idf = term_idf({"d1": "papers on neurons", "d2": "papers on rice", "d3": "papers"})
    q = "what papers are there on neurons"
    assert tfc1_term(q) == ("papers", "first query term")
    assert tfc1_term(q, idf=idf) == ("neurons", "highest-IDF query term")
    assert tfc1_term(q, "rice", idf) == ("rice", "given")
    assert tfc1(q, "A cell.") == "A cell. papers"  # the default is unchanged
    assert tfc1(q, "A cell.", idf=idf) == "A cell. neurons"


def test_patch_states_the_injected_term_and_its_rule():
    import argparse

    from mechir_nig.cli.patch import _injected_terms, injected_terms_line
    from mechir_nig.data import load_collection
    from mechir_nig.interventions.perturb import TERM_RULES, tfc1_term

    col = load_collection("embedded")
    queries = [col.queries[q] for q in list(col.queries)[:3]]
    for rule, reason in (("first", "first query term"), ("idf", "highest-IDF query term")):
        args = argparse.Namespace(perturbation="tfc1", term=None, term_rule=rule)
        meta = _injected_terms(args, col, queries)
        idf = None if rule == "first" else col
        assert meta["injected_terms"] == [tfc1_term(q, None, idf)[0] for q in queries]
        assert meta["term_rule"] == reason and meta["term_rule_explained"] == TERM_RULES[reason]
        line = injected_terms_line(meta)
        assert line is not None and line.startswith("tfc1 injected ") and f"({reason}: " in line
        assert all(repr(t) in line for t in meta["injected_terms"])
    assert (
        _injected_terms(argparse.Namespace(perturbation="tdc", term=None, term_rule="first"), col, queries)
        == {}
    )
    assert set(TERM_RULES) == {"given", "first query term", "highest-IDF query term"}
