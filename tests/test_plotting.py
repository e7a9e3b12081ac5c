"""Figures (mechir_nig.plotting) on real small results: the data in the traces equals the result's values,
hover texts name tokens, bands are mean ± std of the seeds, and bad inputs say what to fix."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig import neuron_integrated_gradients
from mechir_nig.attribution.result import CONTENT_GROUPS
from mechir_nig.attribution.stats import CollectionAttribution, top_neuron_set
from mechir_nig.errors import InputError
from mechir_nig.models.tokenization import DOC
from mechir_nig.plotting import (
    KINDS,
    SCALES,
    faithfulness_bars,
    faithfulness_curves,
    group_bars,
    layer_profile_bars,
    neuron_heatmap,
    overlap_bars,
    patching_heatmap,
    plot,
    pruning_curves,
    token_heatmap,
    top_neurons_bar,
)
from mechir_nig.sets import NeuronSet, overlap_report, select_top

LABELS = [1, 0, 2, 0]  # relevance of the 4 pairs (QUERIES[i], DOCS[i])
SIGNED = go.Heatmap(colorscale=SCALES["signed"]).colorscale


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-12)


@pytest.fixture(scope="module")
def attr(tiny_ce):
    return neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, n_steps=4, reduce="token", heads=True)


@pytest.fixture(scope="module")
def stats(attr):
    s = CollectionAttribution(layers=attr.layers, n_layers=2, d_mlp=attr.values.shape[-1])
    rel = torch.tensor(LABELS) > 0
    s.update("relevant", attr.by_group()[rel])
    s.update("nonrelevant", attr.by_group()[~rel])
    return s


@pytest.fixture(scope="module")
def study(tiny_ce):
    from mechir_nig.data import bm25_candidates, load_collection
    from mechir_nig.experiments.pruning import pruning_study

    col = load_collection("embedded")
    ranking = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    return pruning_study(
        tiny_ce,
        col,
        bm25_candidates(col, k=3),
        ranking,
        fractions=(0.05, 0.1),
        seeds=3,
        modes=("zero", "baseline"),
        progress=False,
    )


@pytest.fixture(scope="module")
def patched(tiny_ce):
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import patch

    al = perturb.align(tiny_ce, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))
    members = NeuronSet([(0, 3), (1, 5), (1, 7)], n_layers=2, d_mlp=64)
    return patch(tiny_ce, al, sites=("resid_pre", "heads", "head_pos", "neurons", members))


@pytest.fixture(scope="module")
def faith(tiny_ce):
    from mechir_nig.experiments.faithfulness import faithfulness

    return faithfulness(
        tiny_ce, QUERIES, DOCS, k=3, curve_k=3, seeds=3, n_steps=4, interventions=("zero", "baseline")
    )


# -- attribution figures -----------------------------------------------------------------------------------
def test_neuron_heatmap_of_a_collection_is_each_label_mean_and_their_difference(stats):
    fig = neuron_heatmap(stats)
    assert [t.name for t in fig.data] == ["relevant", "nonrelevant", "difference"]
    rel, non = stats.mean("relevant"), stats.mean("nonrelevant")
    for trace, want in zip(fig.data, (rel, non, rel - non), strict=True):
        close(trace.z, want)
        assert list(trace.y) == stats.layers and list(trace.x) == list(range(64))
        assert "layer %{y}" in trace.hovertemplate and "neuron %{x}" in trace.hovertemplate
        assert "%{z" in trace.hovertemplate and trace.coloraxis == "coloraxis"
    assert fig.layout.coloraxis.cmid == 0 and fig.layout.coloraxis.colorscale == SIGNED
    doc = neuron_heatmap(stats, group="doc", panels=["mean_abs"], layers=[1])
    close(doc.data[0].z, stats.scheme_scores("mean_abs", "doc")[[1]])
    json.loads(doc.to_json())  # serialisable (what the report embeds)


def test_neuron_heatmap_of_pairs(attr):
    pn = attr.per_neuron().double()
    close(neuron_heatmap(attr, pair=2).data[0].z, pn[2])
    close(neuron_heatmap(attr).data[0].z, pn.mean(0))
    fig = neuron_heatmap(attr, labels=LABELS, group="query")
    q = attr.by_group()[:, :, CONTENT_GROUPS.index("query")].double()
    rel = torch.tensor(LABELS) > 0
    close(fig.data[0].z, q[rel].mean(0))
    close(fig.data[2].z, q[rel].mean(0) - q[~rel].mean(0))
    with pytest.raises(InputError, match="out of range"):
        neuron_heatmap(attr, pair=4)
    with pytest.raises(InputError, match=r"layers \[5\] are not in this result"):
        neuron_heatmap(attr, layers=[5])
    with pytest.raises(InputError, match="one per pair"):
        neuron_heatmap(attr, labels=[1, 0])
    with pytest.raises(InputError, match="panels= needs labels="):
        neuron_heatmap(attr, panels=["relevant"])
    with pytest.raises(InputError, match="must be a NeuronAttribution or CollectionAttribution"):
        neuron_heatmap(attr.values)


def _wide_stats() -> CollectionAttribution:
    """Relevant means over a 2 x 200 layer (wider than FULL_VIEW_MAX): a few strong neurons, the rest 0."""
    v = torch.zeros(1, 2, 4, 200, dtype=torch.float64)  # [pairs, layer, group, d_mlp]; "all" sums the groups
    for layer, neuron, value in (
        (0, 7, 5.0),
        (0, 150, -3.0),
        (0, 0, 1.0),
        (1, 199, -6.0),
        (1, 42, 2.0),
        (1, 100, 0.5),
    ):
        v[0, layer, 0, neuron] = value
    s = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=200)
    s.update("relevant", v)
    return s


def test_neuron_heatmap_of_a_wide_layer_shows_its_top_neurons_labelled():
    s = _wide_stats()
    fig = neuron_heatmap(s, k=3)  # auto: 200 neurons a layer > FULL_VIEW_MAX, so the top k
    (trace,) = fig.data
    assert trace.name == "relevant" and np.asarray(trace.z).shape == (2, 3)
    close(trace.z, [[5.0, -3.0, 1.0], [-6.0, 2.0, 0.5]])  # by |NIG|, largest first, sign kept
    assert np.asarray(trace.text).tolist() == [["7", "150", "0"], ["199", "42", "100"]]
    assert np.asarray(trace.customdata).tolist() == [[7, 150, 0], [199, 42, 100]]
    assert list(trace.x) == [1, 2, 3] and list(trace.y) == [0, 1] and trace.texttemplate == "%{text}"
    assert "neuron %{text}" in trace.hovertemplate and "NIG %{z" in trace.hovertemplate
    axis = fig.layout.coloraxis  # symmetric around 0, in score units
    assert (axis.cmin, axis.cmid, axis.cmax) == (-6.0, 0, 6.0) and axis.colorscale == SIGNED
    assert axis.colorbar.title.text == "NIG (score units)"
    assert "MLP neuron index" in fig.layout.xaxis.title.text and fig.layout.yaxis.title.text == "layer"
    assert np.asarray(neuron_heatmap(s).data[0].z).shape == (2, 20)  # k = 20 by default

    binned = neuron_heatmap(s, view="binned", bins=4)  # bins of 50 neurons: the largest |NIG| of each
    close(binned.data[0].z, [[5.0, 0.0, 0.0, -3.0], [2.0, 0.0, 0.5, -6.0]])
    assert np.asarray(binned.data[0].customdata)[1].tolist() == [
        [0, 49, 42],
        [50, 99, 50],
        [100, 149, 100],
        [150, 199, 199],
    ]
    assert list(binned.data[0].x) == [0, 50, 100, 150]
    assert binned.layout.xaxis.title.text == "MLP neuron (index; bins of 50)"
    assert "neurons %{customdata[0]}-%{customdata[1]}" in binned.data[0].hovertemplate

    full = neuron_heatmap(s, view="full")  # every neuron, as before
    close(full.data[0].z, s.mean("relevant"))
    assert full.layout.xaxis.title.text == "MLP neuron (index)" and full.layout.coloraxis.cmax == 6.0
    with pytest.raises(InputError, match="view"):
        neuron_heatmap(s, view="all")
    with pytest.raises(InputError, match="k"):
        neuron_heatmap(s, k=0)


def test_top_neurons_bar(stats, attr):
    fig = top_neurons_bar(stats, k=5, scheme="difference")
    scores = stats.scheme_scores("difference")[stats.layers]
    vals, idx = scores.flatten().topk(5)
    close(fig.data[0].x, vals)
    assert [tuple(m) for m in fig.data[0].customdata] == [(i // 64, i % 64) for i in idx.tolist()]
    assert fig.data[0].y[0] == f"L{idx[0].item() // 64} N{idx[0].item() % 64}"
    want = attr.top_neurons(4, pair=1)
    fig = top_neurons_bar(attr, k=4, pair=1)
    close(fig.data[0].x, [v for _, _, v in want])
    assert [tuple(m) for m in fig.data[0].customdata] == [(lay, n) for lay, n, _ in want]
    s = top_neuron_set(stats, "relevant", k=6)
    close(top_neurons_bar(s, k=3).data[0].x, sorted(s.scores.values(), reverse=True)[:3])
    with pytest.raises(InputError, match="no scores"):
        top_neurons_bar(NeuronSet([(0, 1)], n_layers=2, d_mlp=64))
    with pytest.raises(InputError, match="unknown scheme"):
        top_neurons_bar(stats, scheme="best")
    with pytest.raises(InputError, match="scheme= ranks a CollectionAttribution"):
        top_neurons_bar(attr, scheme="relevant")


def test_token_heatmap_shows_tokens_and_the_query_doc_boundary(attr, tiny_ce):
    pair = 1
    fig = token_heatmap(attr, pair)
    n = len(attr.tokens[pair])
    trace = fig.data[0]
    close(trace.z, attr.values[pair, :, :n].sum(-1))
    assert list(trace.x) == list(range(n)) and list(fig.layout.xaxis.ticktext) == attr.tokens[pair]
    for p, tok in enumerate(attr.tokens[pair]):
        assert trace.text[0][p].startswith(tok + " (")
    assert "black" in trace.text[0][attr.tokens[pair].index("black")]
    assert "%{text}" in trace.hovertemplate and trace.zmid == 0 and trace.colorscale == SIGNED
    first_doc = int((attr.groups[pair] == DOC).nonzero()[0])
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == first_doc - 0.5
    assert [a.text for a in fig.layout.annotations] == ["<b>query</b>", "<b>doc</b>"]
    # a neuron subset, one layer, and the heads
    s = NeuronSet([(0, 2), (1, 9), (1, 10)], n_layers=2, d_mlp=64)
    sub = token_heatmap(attr, pair, neurons=s, layers=[1])
    close(sub.data[0].z, attr.values[pair, 1:, :n][..., [9, 10]].sum(-1))
    close(token_heatmap(attr, pair, component="head").data[0].z, attr.head_values[pair, :, :n].sum(-1))
    grouped = neuron_integrated_gradients(tiny_ce, QUERIES[:1], DOCS[:1], n_steps=2, reduce="group")
    with pytest.raises(InputError, match="reduce='token'"):
        token_heatmap(grouped)
    with pytest.raises(InputError, match="out of range"):
        token_heatmap(attr, pair=-1)


def test_group_bars(attr, stats):
    fig = group_bars(attr, pair=3)
    bg = attr.by_group().double().sum(-1)  # [batch, layer, group]
    assert [t.name for t in fig.data] == list(CONTENT_GROUPS)
    for g, trace in enumerate(fig.data):
        close(trace.y, bg[3, :, g])
        assert list(trace.x) == ["0", "1"]
    fig = group_bars(stats)
    assert len(fig.data) == 3 * 4  # relevant, nonrelevant, difference x 4 groups
    for g, name in enumerate(CONTENT_GROUPS):
        close(fig.data[g].y, stats.mean("relevant", name).sum(-1))
        close(fig.data[8 + g].y, (stats.mean("relevant", name) - stats.mean("nonrelevant", name)).sum(-1))


# -- sets ----------------------------------------------------------------------------------------------------
def test_layer_profile_and_overlap_with_chance(stats, attr):
    rel = top_neuron_set(stats, "relevant", k=12)
    non = top_neuron_set(stats, "nonrelevant", k=12)
    first = select_top(attr.per_neuron()[:2].sum(0), k=12, name="half 1")  # halves of the pairs
    second = select_top(attr.per_neuron()[2:].sum(0), k=12, name="half 2")
    fig = layer_profile_bars({"relevant": rel, "nonrelevant": non})
    close(fig.data[0].y, rel.layer_profile())
    close(fig.data[1].y, non.layer_profile())
    close(layer_profile_bars(rel, normalize=True).data[0].y, np.asarray(rel.layer_profile()) / 64)
    fig = overlap_bars([first, second, rel])
    reports = [overlap_report(first, second), overlap_report(first, rel), overlap_report(second, rel)]
    assert list(fig.data[0].x) == ["half 1 vs half 2", "half 1 vs relevant:all", "half 2 vs relevant:all"]
    close(fig.data[0].y, [r["jaccard"] for r in reports])
    close(fig.data[1].y, [r["expected_jaccard"] for r in reports])
    assert fig.data[1].name.startswith("chance")
    from_reports = overlap_bars({"labels": overlap_report(rel, non)}, metric="intersection")
    assert list(from_reports.data[0].x) == ["labels"]
    close(from_reports.data[1].y, [overlap_report(rel, non)["expected_intersection"]])
    json.loads(fig.to_json())
    with pytest.raises(InputError, match="at least two sets"):
        overlap_bars([rel])
    with pytest.raises(InputError, match="metric"):
        overlap_bars([rel, non], metric="dice")


# -- experiments ---------------------------------------------------------------------------------------------
def test_pruning_curves_band_is_mean_plus_minus_std_of_the_seeds(study):
    fig = pruning_curves(study, measure="RR@10")
    assert [a.text for a in fig.layout.annotations] == ["zero", "baseline"]
    zero = [t for t in fig.data if t.xaxis == "x"]  # the first panel: mode "zero"
    by_name = {t.name: t for t in zero}
    assert set(by_name) == {
        "nig_top",
        "random",
        "random mean + std",
        "random mean − std",
        "bottom",
        "negative",
        "unpruned",
    }
    for f_i, f in enumerate((0.05, 0.1)):
        vals = [
            r["RR@10"]
            for r in study.runs
            if r["condition"] == "random" and r["mode"] == "zero" and r["fraction"] == f
        ]
        assert len(vals) == 3
        mean = sum(vals) / 3
        std = (sum((v - mean) ** 2 for v in vals) / 2) ** 0.5
        close(by_name["random"].y[f_i], mean)
        close(by_name["random mean + std"].y[f_i], mean + std)
        close(by_name["random mean − std"].y[f_i], mean - std)
        top = next(
            r
            for r in study.runs
            if r["condition"] == "nig_top" and r["mode"] == "zero" and r["fraction"] == f
        )
        close(by_name["nig_top"].y[f_i], top["RR@10"])
    assert by_name["random mean − std"].fill == "tonexty"
    base = next(r for r in study.runs if r["condition"] == "unpruned")
    close(by_name["unpruned"].y, [base["RR@10"]] * 2)
    table = {(r["condition"], r["mode"], r["fraction"]): r for r in study.table()}
    close(
        by_name["random mean + std"].y[1] - by_name["random"].y[1],
        table[("random", "zero", 0.1)]["RR@10 std"],
    )
    # the saved JSON draws the same figure; defaults: first measure, every mode
    again = pruning_curves(json.loads(json.dumps(study.to_dict())), measure="RR@10")
    assert [t.y.tolist() for t in again.data] == [t.y.tolist() for t in fig.data]
    assert study.plot().layout.yaxis.title.text == study.measures[0]
    one = pruning_curves(study, modes=["baseline"], conditions=["random"])
    assert [t.name for t in one.data] == ["random", "random mean + std", "random mean − std", "unpruned"]
    with pytest.raises(InputError, match="measure must be one of"):
        pruning_curves(study, measure="P@5")
    with pytest.raises(InputError, match="modes must be among"):
        pruning_curves(study, modes=["mean"])


def test_faithfulness_curves_and_correlations(faith):
    fig = faithfulness_curves(faith)
    assert [a.text for a in fig.layout.annotations] == ["zero", "baseline"]
    panel = [t for t in fig.data if t.xaxis == "x2"]  # baseline
    cur = faith.curve["baseline"]
    close(panel[0].y, cur["nig"])
    close(panel[1].y, cur["random"])
    close(panel[2].y, np.add(cur["random"], cur["random_std"]))
    close(panel[3].y, np.subtract(cur["random"], cur["random_std"]))
    assert list(panel[0].x) == [1, 2, 3]
    bars = faith.plot("correlations")
    assert [t.name for t in bars.data] == ["nig", "act_x_grad", "activation"]
    close(bars.data[0].y, [faith.spearman["zero"]["nig"], faith.spearman["baseline"]["nig"]])
    assert faithfulness_bars(faith).data[2].x == ("zero", "baseline")
    with pytest.raises(InputError, match="FaithfulnessResult"):
        faithfulness_curves({"curve": {}})


# -- patching ------------------------------------------------------------------------------------------------
def test_patching_heatmap_layer_by_position_with_tokens(patched, tiny_ce):
    pair = 0
    fig = patching_heatmap(patched, "resid_pre", pair=pair)
    trace = fig.data[0]
    clean, corr = patched.clean_tokens[pair], patched.corrupted_tokens[pair]
    n = max(p for p in range(len(clean)) if clean[p] or corr[p]) + 1
    close(trace.z, patched["resid_pre"][pair, :, :n])
    assert list(trace.x) == list(range(n)) and trace.zmid == 0
    ticks = list(fig.layout.xaxis.ticktext)
    for p in range(n):
        if clean[p] == corr[p]:
            assert ticks[p] == clean[p] and clean[p] in trace.text[0][p]
        else:  # the injected query term: only in the corrupted run
            assert ticks[p] == f"<b>∅→{corr[p]}</b>" and corr[p] in trace.text[0][p]
    assert any("→" in t for t in ticks)
    assert len(fig.layout.shapes) == 1  # the query | doc line
    # batches patched without an Alignment carry no token strings: positions label the axis
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import patch

    al = perturb.align(tiny_ce, QUERIES[:1], DOCS[:1], lambda q, d: perturb.tfc1(q, d, where="start"))
    plain = patch(tiny_ce, al.clean, al.perturbed, sites="mlp_out")
    n_plain = int(al.perturbed.attention_mask[0].sum())
    fig = patching_heatmap(plain, pair=0)
    close(fig.data[0].z, plain["mlp_out"][0, :, :n_plain])
    assert list(fig.layout.xaxis.ticktext) == [str(p) for p in range(n_plain)]
    # head_pos: (layer, head) rows
    hp = patching_heatmap(patched, "head_pos", pair=1)
    close(hp.data[0].z, patched["head_pos"][1].reshape(4, -1)[:, : len(hp.data[0].x)])
    assert list(hp.data[0].y) == ["L0 H0", "L0 H1", "L1 H0", "L1 H1"]


def test_patching_heatmap_layer_by_head_neurons_and_a_set(patched):
    fig = patching_heatmap(patched, "heads", pair=1, layers=[1])
    close(fig.data[0].z, patched["heads"][1, 1:])
    mean = patching_heatmap(patched, "heads", pair=None)
    close(mean.data[0].z, torch.nanmean(patched["heads"].double(), 0))
    assert list(mean.data[0].y) == ["0", "1"] and list(mean.data[0].x) == [0, 1]
    close(patching_heatmap(patched, "neurons", pair=0).data[0].z, patched["neurons"][0])
    bars = patched.plot(site="neuron_set", pair=1)
    close(bars.data[0].y, patched["neuron_set"][1])
    assert list(bars.data[0].x) == ["L0 N3", "L1 N5", "L1 N7"]
    assert patched.plot().data[0].z.shape[0] == 2  # default: the first site (resid_pre), pair 0
    with pytest.raises(InputError, match="no site 'mlp_out'"):
        patching_heatmap(patched, "mlp_out")
    with pytest.raises(InputError, match="pass pair=i"):
        patching_heatmap(patched, "resid_pre", pair=None)
    with pytest.raises(InputError, match="out of range"):
        patching_heatmap(patched, "heads", pair=2)
    with pytest.raises(InputError, match=r"layers \[2\] are not in this result"):
        patching_heatmap(patched, "heads", layers=[2])


# -- dispatch --------------------------------------------------------------------------------------------------
def test_plot_shortcuts_and_their_errors(attr, stats, patched):
    assert attr.plot().data[0].name == "mean over 4 pairs"
    close(attr.plot("tokens", pair=0).data[0].z, attr.values[0, :, : len(attr.tokens[0])].sum(-1))
    close(plot(stats, "groups", panels=["relevant"]).data[0].y, stats.mean("relevant", "cls").sum(-1))
    assert set(KINDS) == {
        "NeuronAttribution",
        "CollectionAttribution",
        "ComponentSet",
        "PruningResult",
        "PatchingResult",
        "FaithfulnessResult",
    }
    with pytest.raises(InputError, match=r"unknown kind 'curves' for a NeuronAttribution; use one of"):
        attr.plot("curves")
    with pytest.raises(InputError, match="cannot plot a list"):
        plot([1, 2])
    with pytest.raises(InputError, match=r"patching_heatmap\(\) has no option 'colour'; its options are"):
        patched.plot(colour="red")
