"""interaction_study (issue 17): re-ranking held-out queries with attention interactions blocked per layer,
checked against block_attention run by hand, the pruning study's split and mechir_nig.statistics."""

from __future__ import annotations

import pytest
import torch

from mechir_nig.data import bm25_candidates, load_collection
from mechir_nig.errors import InputError
from mechir_nig.evaluation import evaluate
from mechir_nig.experiments.interaction import InteractionResult, interaction_study
from mechir_nig.experiments.pruning import split_queries
from mechir_nig.interventions.attention import block_attention
from mechir_nig.statistics import compare_paired, holm

MEASURES = ["nDCG@10", "RR@10"]


@pytest.fixture(scope="module")
def col():
    return load_collection("embedded")


@pytest.fixture(scope="module")
def cands(col):
    return bm25_candidates(col, k=8)


@pytest.fixture(scope="module")
def study(tiny_ce, col, cands):
    return interaction_study(
        tiny_ce,
        col,
        cands,
        interactions=[("query", "doc"), ("cls", "doc")],
        measures=MEASURES,
        progress=False,
    )


def _flat(per_query):
    """``{(query_id, measure): value}`` (pytest.approx compares flat mappings)."""
    return {(q, m): v for q, ms in per_query.items() for m, v in ms.items()}


def _by_hand(model, col, cands, queries, ctx=None):
    """Per-query measures of the candidates scored inside ``ctx`` (model.score, ir_measures)."""
    pairs = [(q, d) for q in queries for d in cands[q]]
    docs = col.get_docs(d for _, d in pairs)
    qs, ds = [col.queries[q] for q, _ in pairs], [docs[d] for _, d in pairs]
    with torch.no_grad():
        if ctx is None:
            scores = model.score(qs, ds)
        else:
            with ctx:
                scores = model.score(qs, ds)
    run: dict[str, dict[str, float]] = {q: {} for q in queries}
    for (q, d), v in zip(pairs, scores.double().tolist(), strict=True):
        run[q][d] = v
    return evaluate(run, col, MEASURES, per_query=True, query_ids=queries).per_query


def test_held_out_split_and_runs(study, col, tiny_ce, cands):
    assert study.eval_queries == split_queries(col)[1]  # the pruning study's held-out half
    assert study.layers == [0, 1, "all"] and study.labels == ["query->doc", "cls->doc"]
    assert [(r["interaction"], r["layer"]) for r in study.runs] == [("none", None)] + [
        (i, c) for i in study.labels for c in (0, 1, "all")
    ]
    # the unblocked run is the model as it is, scored and evaluated by hand
    assert _flat(study.per_query[0]) == pytest.approx(
        _flat(_by_hand(tiny_ce, col, cands, study.eval_queries))
    )
    assert study.changed[0] == []


def test_one_block_equals_block_attention_by_hand(study, col, tiny_ce, cands):
    i = next(i for i, r in enumerate(study.runs) if r["interaction"] == "query->doc" and r["layer"] == 0)
    hand = _by_hand(
        tiny_ce, col, cands, study.eval_queries, block_attention(tiny_ce, "query", "doc", layers=[0])
    )
    assert _flat(study.per_query[i]) == pytest.approx(_flat(hand), abs=1e-12)
    assert study.per_query[i] != study.per_query[0]  # the block changes rankings here
    j = next(i for i, r in enumerate(study.runs) if r["interaction"] == "cls->doc" and r["layer"] == "all")
    hand = _by_hand(tiny_ce, col, cands, study.eval_queries, block_attention(tiny_ce, "cls", "doc"))
    assert _flat(study.per_query[j]) == pytest.approx(_flat(hand), abs=1e-12)


def test_a_block_the_score_never_reads_changes_nothing(study):
    # the score reads [CLS] after the last layer: query->doc attention there changes no score at all
    i = next(i for i, r in enumerate(study.runs) if r["interaction"] == "query->doc" and r["layer"] == 1)
    assert study.per_query[i] == study.per_query[0] and study.changed[i] == []
    row = next(r for r in study.statistics("nDCG@10") if r["interaction"] == "query->doc" and r["layer"] == 1)
    assert row["drop"] == 0 and row["drop_ci"] == [0.0, 0.0] and row["p"] == 1.0


def test_statistics_are_paired_per_query_with_holm(study):
    rows = study.statistics("RR@10", n_resamples=2000)
    assert len(rows) == 6
    base = study.per_query[0]
    for r, run, pq in zip(rows, study.runs[1:], study.per_query[1:], strict=True):
        a = [base[q]["RR@10"] for q in study.eval_queries]
        b = [pq[q]["RR@10"] for q in study.eval_queries]
        cmp = compare_paired(a, b, n_resamples=2000)
        assert (r["interaction"], r["layer"]) == (run["interaction"], run["layer"])
        assert r["drop"] == pytest.approx(cmp.mean_difference) and r["p"] == cmp.p_value
        assert r["drop_ci"] == [cmp.ci_low, cmp.ci_high] and r["n_queries"] == len(study.eval_queries)
    assert [r["p_holm"] for r in rows] == holm([r["p"] for r in rows])
    table = study.table()
    assert table[1]["nDCG@10 drop"] == pytest.approx(study.runs[0]["nDCG@10"] - study.runs[1]["nDCG@10"])
    d = study.drops("nDCG@10")
    assert d.shape == (2, 3) and float(d[0, 1]) == 0.0


def test_save_load_plot_findings(study, tmp_path):
    from mechir_nig.findings import interaction_findings

    back = InteractionResult.load(study.save(tmp_path / "interaction.json"))
    assert back == study
    fig = study.plot(measure="nDCG@10", n_resamples=500)
    assert fig.data[0].z.tolist() == study.drops("nDCG@10").tolist() and fig.data[0].zmid == 0
    assert list(fig.data[0].y) == study.labels and list(fig.data[0].x) == ["L0", "L1", "all"]
    lines = interaction_findings(study, n_resamples=500)
    assert lines[-1].startswith("0 of 6") or "of 6 (interaction, layer) blocks" in lines[-1]
    best = min(study.statistics("nDCG@10", n_resamples=500), key=lambda r: r["drop"])
    if best["drop"] < 0:
        assert any(f"raises nDCG@10 by {-best['drop']:.3f}" in s for s in lines)
    assert "| query->doc |" in study.to_markdown()


def test_bi_encoder_blocks_within_the_document(minilm_be, col):
    cands = bm25_candidates(col, k=3)
    ev = split_queries(col)[1][:3]
    res = interaction_study(
        minilm_be, col, cands, interactions=[("cls", "doc")], layers=[0], eval_queries=ev, progress=False
    )
    assert res.settings["side"] == "doc" and res.layers == [0]
    pairs = [(q, d) for q in ev for d in cands[q]]
    docs = col.get_docs(d for _, d in pairs)
    with torch.no_grad():
        qe = minilm_be.encode([col.queries[q] for q, _ in pairs])
        with block_attention(minilm_be, "cls", "doc", layers=[0]):
            de = minilm_be.encode([docs[d] for _, d in pairs])
    scores = minilm_be.similarity_fn(qe, de).double().tolist()
    run: dict[str, dict[str, float]] = {q: {} for q in ev}
    for (q, d), v in zip(pairs, scores, strict=True):
        run[q][d] = v
    hand = evaluate(run, col, MEASURES, per_query=True, query_ids=ev).per_query
    assert _flat(res.per_query[1]) == pytest.approx(_flat(hand), abs=1e-6)
    with pytest.raises(InputError, match="encodes the query and the document apart"):
        interaction_study(minilm_be, col, cands, interactions=[("query", "doc")])


def test_errors_say_what_to_fix(tiny_ce, col, cands):
    with pytest.raises(InputError, match="from_group, to_group"):
        interaction_study(tiny_ce, col, cands, interactions=[("query", "docs")])
    with pytest.raises(InputError, match="listed twice"):
        interaction_study(tiny_ce, col, cands, interactions=[("query", "doc"), ("query", "doc")])
    with pytest.raises(InputError, match="out of range"):
        interaction_study(tiny_ce, col, cands, layers=[5])
    with (
        pytest.raises(InputError, match="no evaluation query"),
        pytest.warns(UserWarning, match="not judged"),
    ):
        interaction_study(tiny_ce, col, cands, eval_queries=["nope"])


def test_reweighting_equals_block_attention_with_weight_by_hand(tiny_ce, col, cands, study, tmp_path):
    res = interaction_study(
        tiny_ce,
        col,
        cands,
        interactions=[("query", "doc")],
        layers=[0],
        weight=0.5,
        measures=MEASURES,
        progress=False,
    )
    assert res.weight == 0.5 and res.settings["weight"] == 0.5 and res.action == "re-weighted by 0.5"
    assert res.layers == [0] and res.per_query[0] == study.per_query[0]  # the unmodified model
    hand = _by_hand(
        tiny_ce,
        col,
        cands,
        res.eval_queries,
        block_attention(tiny_ce, "query", "doc", layers=[0], weight=0.5),
    )
    assert _flat(res.per_query[1]) == pytest.approx(_flat(hand), abs=1e-12)
    blocked = next(
        i for i, r in enumerate(study.runs) if r["interaction"] == "query->doc" and r["layer"] == 0
    )
    assert res.per_query[1] != study.per_query[blocked]  # halving is not blocking
    assert study.weight == 0.0 and study.action == "blocked" and study.settings["weight"] == 0.0
    back = InteractionResult.load(res.save(tmp_path / "interaction.json"))
    assert back == res and back.weight == 0.5
    assert "re-weighted by 0.5" in res.to_markdown() and "blocked" not in res.to_markdown()
    from mechir_nig.findings import interaction_findings

    lines = interaction_findings(res, n_resamples=200)
    assert "re-weightings (x0.5)" in lines[-1]
    assert all("Blocking" not in s for s in lines)
    fig = res.plot(measure="nDCG@10", n_resamples=200)
    assert "re-weighted by 0.5" in fig.layout.title.text
    with pytest.raises(InputError, match="weight must be a finite number >= 0"):
        interaction_study(tiny_ce, col, cands, weight=-0.5)
    with pytest.raises(InputError, match="weight must be a finite number >= 0"):
        interaction_study(tiny_ce, col, cands, weight=float("inf"))


def test_report_section_names_the_re_weighting(study, tmp_path):
    """The report's section of a re-weighted study is titled by what was done to the attention (its title
    said "(blocking)" whatever the weight); a blocked study keeps its title."""
    import dataclasses

    from mechir_nig.report import build

    for weight, title in (
        (0.0, "Attention interactions (blocking)"),
        (0.5, "Attention interactions (re-weighting by 0.5)"),
    ):
        folder = tmp_path / f"w{weight}"
        folder.mkdir()
        res = dataclasses.replace(study, settings={**study.settings, "weight": weight})
        res.save(folder / "interaction.json")
        page = build(folder).read_text()
        start = page.index('<section id="interaction">')
        section = page[start : page.index("</section>", start)]
        assert f"<h2>{title}</h2>" in section
        assert ("(blocking)" in page) == (weight == 0)


def test_weight_minus_zero_is_recorded_as_zero(tiny_ce, col, cands):
    import math

    one = {"interactions": [("query", "doc")], "layers": [0], "all_layers": False, "progress": False}
    res = interaction_study(tiny_ce, col, cands, weight=-0.0, measures=MEASURES, **one)
    assert res.action == "blocked" and math.copysign(1.0, res.settings["weight"]) == 1.0
