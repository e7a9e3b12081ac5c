"""``mechir-nig circuits`` (issue 17) on the embedded collection with a tiny cross-encoder folder: the
files it writes, a few of their values, the findings it prints and the report sections."""

from __future__ import annotations

import json

import pytest
import torch

from mechir_nig.cli import main
from mechir_nig.report import CIRCUIT_FILES


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_ce_dir):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("circuits") / "results"
    argv = ["circuits", "--model", str(tiny_ce_dir), "--collection", "embedded", "--out", str(out)]
    argv += ["--no-progress", "--max-pairs", "3", "--depth", "6", "--verify-top", "4"]
    argv += ["--interactions", "query:doc,cls:doc", "--measures", "nDCG@10"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, out, buf.getvalue()


def test_writes_every_result_with_values(ran, tiny_ce_dir):
    from mechir_nig import HookedCrossEncoder
    from mechir_nig.experiments.interaction import InteractionResult
    from mechir_nig.interventions.attention import AttentionGroups
    from mechir_nig.interventions.patching import PatchingResult

    rc, out, printed = ran
    assert rc == 0
    for key in ("attribution_patching", "interaction", "attention_groups", "path_patching"):
        assert (out / CIRCUIT_FILES[key]).is_file(), key
    est = PatchingResult.load(out / CIRCUIT_FILES["attribution_patching"])
    assert est.sites == ["resid_pre", "heads"] and len(est) == 3 and est["heads"].shape == (3, 2, 2)
    v = est.meta["attribution"]["verify"]
    assert v["k"] == 4 and len(v["exact"]) == 4 and est.meta["perturbation"] == "tfc1"
    # the clean and perturbed scores are the model's
    ce = HookedCrossEncoder.from_pretrained(tiny_ce_dir)
    clean = ce.score(est.meta["queries"], _docs(est), batch_size=8)
    torch.testing.assert_close(est.clean_scores, clean.float(), atol=1e-5, rtol=0)
    res = InteractionResult.load(out / CIRCUIT_FILES["interaction"])
    assert (
        res.labels == ["query->doc", "cls->doc"]
        and res.layers == [0, 1, "all"]
        and res.measures == ["nDCG@10"]
    )
    # the score reads [CLS] after the last layer: blocking query->doc there changes nothing
    assert float(res.drops()[0, 1]) == 0.0
    groups = AttentionGroups.load(out / CIRCUIT_FILES["attention_groups"])
    assert len(groups) == 3 and groups.pattern is not None and groups.meta["pairs"] == est.meta["pairs"]
    torch.testing.assert_close(groups.values.sum(-1), torch.ones(3, 2, 2, 3, dtype=torch.float64))
    path = PatchingResult.load(
        out / CIRCUIT_FILES["path_patching"]
    )  # every head's direct path into the score
    assert path.meta["path_patching"]["receiver"] == "score_direct" and path["heads"].shape == (3, 2, 2)
    assert path.meta["pairs"] == est.meta["pairs"] and torch.isfinite(path.patched["heads"]).all()
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "circuits" and run["status"] == "finished"
    assert set(run["outputs"]) == {
        CIRCUIT_FILES[k] for k in ("attribution_patching", "interaction", "attention_groups", "path_patching")
    }
    assert "Findings:" in printed and "held-out queries" in printed and "re-run exactly" in printed


def _docs(est):
    from mechir_nig.data import load_collection

    col = load_collection("embedded")
    return [col.get_docs([p["doc_id"]])[p["doc_id"]] for p in est.meta["pairs"]]


def test_report_has_a_section_for_each(ran):
    rc, out, _ = ran
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for key in ("attribution_patching", "interaction", "attention_groups", "path_patching"):
        assert f'<section id="{key}">' in page
    assert "1 of 7 result files found, 4 circuit results" in page  # run.json and the four
    assert 'data-figure="attention pattern"' in page and 'data-figure="interaction nDCG@10"' in page
    assert "Verification: the 4 largest estimates re-run exactly" in page
    assert "<script src" not in page  # plotly inlined: offline
    assert 'data-figure="attribution patching heads"' in page


def test_report_reads_a_path_patching_result(ran, tmp_path):
    import shutil

    from mechir_nig.report import build

    _, out, _ = ran
    # a PatchingResult under the path-patching name (what interventions.path_patching saves) gets its section
    for suffix in ("", ".json"):
        shutil.copy(
            out / (CIRCUIT_FILES["attribution_patching"] + suffix),
            tmp_path / (CIRCUIT_FILES["path_patching"] + suffix),
        )
    page = build(tmp_path).read_text()
    assert '<section id="path_patching">' in page and "0 of 7 result files found, 1 circuit result," in page
    assert 'data-figure="path patching heads"' in page


def test_steps_and_errors(tmp_path, tiny_ce_dir, capsys):
    common = [
        "--model",
        str(tiny_ce_dir),
        "--collection",
        "embedded",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main(["circuits", *common, "--interactions", "query:docs"]) == 2
    assert "query:docs" in capsys.readouterr().err
    assert (
        main(["circuits", *common, "--steps", "attention_groups", "--max-pairs", "2", "--view-pair", "5"])
        == 2  # a bad option
    )
    assert "--view-pair 5" in capsys.readouterr().err
    assert (
        main(["circuits", *common, "--steps", "attention_groups", "--max-pairs", "2", "--layers", "1"]) == 0
    )
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "attention_groups.safetensors",
        "attention_groups.safetensors.json",
        "run.json",
    ]
