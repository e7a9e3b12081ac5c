"""The HTML report (mechir_nig.report.build) of a results folder written from real small results of the
tiny model: it lists what it found, shows the run's metadata, references nothing outside itself, escapes
the texts of results, and refuses a folder without results."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import DOCS, QUERIES

from mechir_nig.errors import InputError
from mechir_nig.report import FILES, build

EVIL = "<script>alert('pwned')</script>"
LABELS = [1, 0, 2, 0]


@pytest.fixture(scope="module")
def results(tiny_ce, tmp_path_factory) -> Path:
    """A results folder in the command line's layout, every file from a real run of the tiny model."""
    from mechir_nig import neuron_integrated_gradients
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import bm25_candidates, load_collection
    from mechir_nig.experiments.faithfulness import faithfulness
    from mechir_nig.experiments.pruning import pruning_study
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import patch
    from mechir_nig.sets import NeuronSet

    out = tmp_path_factory.mktemp("results")
    attr = neuron_integrated_gradients(tiny_ce, QUERIES, DOCS, n_steps=4, reduce="group")
    stats = CollectionAttribution(layers=attr.layers, n_layers=2, d_mlp=attr.values.shape[-1])
    rel = torch.tensor(LABELS) > 0
    stats.update("relevant", attr.by_group()[rel])
    stats.update("nonrelevant", attr.by_group()[~rel])
    stats.meta.update({"collection": "tiny-collection", "n_steps": 4, "baseline": "pad"})
    stats.save(out / FILES["attribution"])

    col = load_collection("embedded")
    study = pruning_study(
        tiny_ce,
        col,
        bm25_candidates(col, k=3),
        torch.randn(2, 64, generator=torch.Generator().manual_seed(0)),
        fractions=(0.05, 0.1),
        seeds=2,
        modes=("zero",),
        progress=False,
    )
    study.save(out / FILES["pruning"])

    queries = [EVIL + " " + QUERIES[0], QUERIES[1]]
    al = perturb.align(
        tiny_ce, queries, DOCS[:2], lambda q, d: perturb.tfc1(q, d, term="neuron", where="start")
    )
    members = NeuronSet([(0, 3), (1, 5), (1, 7)], n_layers=2, d_mlp=64)
    res = patch(tiny_ce, al, sites=("resid_pre", "heads", "head_pos", "neurons", members))
    res.clean_tokens[0][1] = EVIL  # a token text from a result
    res.meta.update(
        {"perturbation": "tfc1", "queries": queries, "pairs": [{"query_id": "q1", "doc_id": "d1"}] * 2}
    )
    res.save(out / FILES["patching"])

    faith = faithfulness(
        tiny_ce, QUERIES[:2], DOCS[:2], k=3, curve_k=2, seeds=2, n_steps=2, interventions=("zero",)
    )
    data = faith.to_dict() | {
        "neurons": faith.neurons.tolist(),
        "drops": {m: v.tolist() for m, v in faith.drops.items()},
    }
    (out / FILES["faithfulness"]).write_text(json.dumps(data))

    (out / FILES["rerank"]).write_text(
        json.dumps(
            {
                "collection": "embedded",
                "queries": 15,
                "k": 10,
                "bm25": {"nDCG@10": 0.8263, "RR@10": 0.8630},
                "reranked": {"nDCG@10": 0.9510, "RR@10": 1.0},
                "seconds": {"bm25": 0.19, "rerank": 5.47},
            }
        )
    )
    overlap = {
        "name_a": "half0",
        "name_b": "half1",
        "size_a": 6,
        "size_b": 6,
        "intersection": 2,
        "expected_intersection": 0.28,
        "jaccard": 0.2,
        "expected_jaccard": 0.024,
        "lift": 8.3,
        "pool_size": 128,
    }
    (out / FILES["stability"]).write_text(
        json.dumps(
            {
                "fraction": 0.05,
                "seed": 0,
                "halves": [{"queries": 7, "pairs": 7}, {"queries": 8, "pairs": 8}],
                "overlap": overlap,
                "layer_profiles": [[4, 2], [3, 3]],
            }
        )
    )
    record = {
        "command": "attribute",
        "argv": ["attribute", "--out", str(out), "--n-steps", "4"],
        "model": {"spec": "tiny-model-spec", "class": "HookedCrossEncoder", "fingerprint": "f1ngerpr1nt0042"},
        "collection": {"spec": "embedded", "name": "embedded", "queries": 15},
        "settings": {"n_steps": 4, "baseline": "pad", "query_ids": [f"q{i:02d}" for i in range(30)]},
        "outputs": ["attribution.safetensors"],
        "started": "2026-01-02T03:04:05+00:00",
        "seconds": 12.5,
        "timings": {"load_model": 0.25, "attribute": 11.75},
        "versions": {"mechir_nig": "0.1.0", "torch": "9.9.9-test-version", "python": "3.11.7"},
    }
    (out / FILES["run"]).write_text(json.dumps({"layout": 1, **record, "history": [record]}))
    return out


@pytest.fixture(scope="module")
def page(results) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = build(results, title="Report <of> tiny")
    problems = [str(w.message) for w in caught if "could not" in str(w.message) or "failed" in str(w.message)]
    assert not problems, problems  # every section and figure of the real results was drawn
    assert path == results / "report.html"
    return path.read_text(encoding="utf-8")


def test_the_report_lists_every_result_found(page):
    for key, name in FILES.items():
        assert re.search(rf'<li class="found"><code>{re.escape(name)}</code>', page), key
    assert f"{len(FILES)} of {len(FILES)} result files found" in page
    for section in ("run", "rerank", "attribution", "pruning", "patching", "faithfulness", "stability"):
        assert f'<section id="{section}">' in page and f'href="#{section}"' in page
    n = int(re.search(r'<span id="figure-count">(\d+)</span>', page).group(1))
    assert n == page.count('class="plotly-graph-div"') == len(re.findall(r"Plotly\.newPlot\(", page))
    # attribution 5, pruning 2 measures + profile, patching: 2 pairs x 2 position sites + 3, faithfulness 2,
    # stability 2
    assert n == 5 + 3 + 7 + 2 + 2
    assert f'<meta name="mechir-nig-figures" content="{n}">' in page
    assert "Problems:" not in page and 'class="problem"' not in page


def test_the_report_shows_the_run_metadata(page):
    for text in ("tiny-model-spec", "f1ngerpr1nt0042", "9.9.9-test-version", "HookedCrossEncoder", "11.75"):
        assert text in page
    assert "mechir-nig attribute --out" in page  # the command line, re-runnable
    assert "… (30 in all)" in page  # long lists are shortened
    assert "<title>Report &lt;of&gt; tiny</title>" in page
    assert "nDCG@10" in page and "0.9510" in page and "+0.1247" in page  # the re-ranking table
    assert "Spearman" in page and "tiny-collection" in page


def test_the_report_references_nothing_outside_itself(page):
    from plotly.offline import get_plotlyjs

    plotlyjs = get_plotlyjs()
    assert page.count(plotlyjs) == 1  # plotly.js inlined, once
    rest = page.replace(plotlyjs, "")  # the library's own strings name its home page: not references
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed|object|a)\b[^>]*>", rest, flags=re.I)
    assert tags and all(not re.search(r"\b(src|data)\s*=", t, flags=re.I) for t in tags), tags
    assert not re.search(r"<link\b", rest, flags=re.I)
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", rest, flags=re.I)  # no URL at all
    assert not re.search(r"url\(|@import", rest)


def test_texts_from_results_are_escaped(page):
    assert EVIL not in page  # neither the query nor the token reaches the page as markup
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    n = int(re.search(r'<span id="figure-count">(\d+)</span>', page).group(1))
    assert len(re.findall(r"<script\b", page)) == 2 + n  # the config, plotly.js, one per figure


def test_missing_files_are_skipped_and_named(results, tmp_path):
    part = tmp_path / "part"
    part.mkdir()
    for key in ("run", "rerank", "stability"):
        shutil.copy(results / FILES[key], part / FILES[key])
    out = build(part, tmp_path / "sub" / "r.html")
    assert out == tmp_path / "sub" / "r.html" and not (part / "report.html").exists()
    page = out.read_text(encoding="utf-8")
    assert "3 of 7 result files found" in page
    assert '<li class="missing"><code>pruning.json</code>: not in the folder</li>' in page
    assert '<section id="pruning">' not in page and '<section id="stability">' in page
    assert page.count('class="plotly-graph-div"') == 2


def test_an_unreadable_file_is_reported_not_fatal(results, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(results, broken)
    (broken / FILES["pruning"]).write_text("{not json")
    (broken / FILES["attribution"]).write_bytes(b"\x00" * 64)
    with pytest.warns(UserWarning, match="could not be read"):
        page = build(broken).read_text(encoding="utf-8")
    assert "pruning.json</code>: could not be read (CheckpointError" in page and "is not valid JSON" in page
    assert "attribution.safetensors</code>: could not be read (CheckpointError" in page
    assert "5 of 7 result files found" in page and '<section id="patching">' in page


def test_a_folder_without_results_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(
        InputError, match=r"empty holds no results: expected at least one of run\.json, attribution"
    ):
        build(empty)
    with pytest.raises(InputError, match="is not a folder"):
        build(tmp_path / "missing")
    assert not (empty / "report.html").exists()


def test_the_cli_report_command_calls_build(results, tmp_path, capsys):
    from mechir_nig.cli import main

    out = tmp_path / "cli.html"
    assert main(["report", str(results), "-o", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    assert 'class="plotly-graph-div"' in out.read_text(encoding="utf-8")
