"""``mechir-nig circuits`` (issue 17) on the embedded collection with a tiny cross-encoder folder: the
files it writes, a few of their values, the findings it prints and the report sections."""

from __future__ import annotations

import json

import pytest
import torch

from mechir_nig.cli import main
from mechir_nig.report import CIRCUIT_FILES

STEP_KEYS = (
    "attribution_patching",
    "interaction",
    "attention_groups",
    "path_patching",
    "path_patching_heads",
)
"""Every step's result key (each a file and a report section)."""


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
    for key in STEP_KEYS:
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
        CIRCUIT_FILES[k]
        for k in (
            "attribution_patching",
            "interaction",
            "attention_groups",
            "path_patching",
            "path_patching_heads",
        )
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
    for key in STEP_KEYS:
        assert f'<section id="{key}">' in page
    assert "1 of 7 result files found, 5 circuit results" in page  # run.json and the five
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


# -- path patching into heads (the path_patching_heads step) ------------------------------------------------
@pytest.fixture(scope="module")
def ran_heads(tmp_path_factory, tiny_ce2_dir):
    """The two path-patching steps on a 3-layer, 4-head model (8 candidate receiver heads in layers 1-2)."""
    out = tmp_path_factory.mktemp("circuits_heads") / "results"
    argv = ["circuits", "--model", str(tiny_ce2_dir), "--collection", "embedded", "--out", str(out)]
    argv += ["--no-progress", "--max-pairs", "3", "--steps", "path_patching,path_patching_heads"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    # the direct paths are computed once: the path_patching step's result chooses the receivers
    assert buf.getvalue().count("into the score (direct path)") == 1
    return rc, out


def _alignment(model, meta):
    from mechir_nig.data import load_collection
    from mechir_nig.interventions import perturb

    col = load_collection("embedded")
    docs = [col.get_docs([p["doc_id"]])[p["doc_id"]] for p in meta["pairs"]]
    return perturb.align(model, meta["queries"], docs, meta["perturbed_docs"])


def test_path_patching_heads_receivers_are_the_top_direct_heads(ran_heads, tiny_ce2_dir):
    from mechir_nig import HookedCrossEncoder
    from mechir_nig.interventions.patching import PatchingResult
    from mechir_nig.interventions.path_patching import PathPatchingResult, path_patch

    rc, out = ran_heads
    assert rc == 0
    direct = PatchingResult.load(out / CIRCUIT_FILES["path_patching"])
    res = PathPatchingResult.load(out / CIRCUIT_FILES["path_patching_heads"])
    # the receivers: the 2 heads of layer >= 1 with the largest |mean| direct effect (summary pairs, NaN as 0)
    mean = torch.nan_to_num(direct["heads"].double())[direct.summary_pairs()].mean(0)  # [layer, head]
    ranked = sorted(
        ((abs(float(mean[lyr, h])), lyr, h) for lyr in (1, 2) for h in range(4)),
        key=lambda c: (-c[0], c[1], c[2]),
    )
    heads = [[lyr, h] for _, lyr, h in ranked[:2]]
    chosen = res.meta["receivers_chosen"]
    assert chosen["by"] == "score_direct" and chosen["heads"] == heads
    assert chosen["direct_effect"] == pytest.approx([float(mean[lyr, h]) for lyr, h in heads], abs=1e-12)
    assert res.receivers == [f"{k}:L{lyr}H{h}" for lyr, h in heads for k in ("q", "k", "v")]
    assert res.meta["pairs"] == direct.meta["pairs"] and res.meta["perturbation"] == "tfc1"
    # each receiver's values are path_patch's on the same alignment
    ce = HookedCrossEncoder.from_pretrained(tiny_ce2_dir)
    al = _alignment(ce, res.meta)
    for key in res.receivers:
        kind, lyr, h = key[0], int(key[3]), int(key[5])
        ref = path_patch(ce, al, senders="heads", receivers=(kind, lyr, h))[key]
        assert res[key].layers == list(range(lyr)) == ref.layers
        torch.testing.assert_close(res[key]["heads"], ref["heads"], atol=1e-6, rtol=0, equal_nan=True)
        torch.testing.assert_close(res[key].patched["heads"], ref.patched["heads"], atol=1e-6, rtol=0)
    assert any(
        float(res[k]["heads"].nan_to_num().abs().max()) > 1e-3 for k in res.receivers
    )  # paths that move


def test_path_patching_heads_report_and_findings(ran_heads):
    from mechir_nig.findings import folder_findings
    from mechir_nig.interventions.path_patching import PathPatchingResult

    _, out = ran_heads
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    res = PathPatchingResult.load(out / CIRCUIT_FILES["path_patching_heads"])
    heads = [f"L{lyr}H{h}" for lyr, h in res.meta["receivers_chosen"]["heads"]]
    assert '<section id="path_patching_heads">' in page and "Path patching into heads" in page
    for head in heads:  # one figure per receiver head: its q, k, v inputs side by side
        assert f'data-figure="path patching into {head}"' in page
    sentences = [s for key, s in folder_findings(out) if key == "path_patching_heads"]
    assert sentences[0].startswith(f"Path patching into heads: the receivers are {', '.join(heads)}")
    # "largest carrier", not "most": the top path may carry 1 % of the effect (its size is in the sentence)
    assert any(
        f"into the queries of {heads[0]}, the largest carrier of the TFC1 effect is" in s for s in sentences
    )


def test_path_patching_heads_figures_share_one_colour_scale(ran_heads):
    from mechir_nig.interventions.path_patching import PathPatchingResult
    from mechir_nig.plotting import path_patching_heatmaps

    _, out = ran_heads
    res = PathPatchingResult.load(out / CIRCUIT_FILES["path_patching_heads"])
    fig = path_patching_heatmaps(res, "heads", receivers=res.receivers[:3], zmax=0.5)
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (-0.5, 0.5) and len(fig.data) == 3
    torch.testing.assert_close(
        torch.tensor(fig.data[2].z), torch.nanmean(res[res.receivers[2]]["heads"].double(), 0), equal_nan=True
    )


def test_explicit_receivers_and_their_errors(tmp_path, tiny_ce2_dir, capsys):
    from mechir_nig.interventions.path_patching import PathPatchingResult

    out = tmp_path / "o"
    common = ["--model", str(tiny_ce2_dir), "--collection", "embedded", "--out", str(out), "--no-progress"]
    common += ["--max-pairs", "2", "--steps", "path_patching_heads"]
    bad = [
        (["--receivers", "q:1"], "is not KIND:LAYER.HEAD"),
        (["--receivers", "x:1.0"], "is not KIND:LAYER.HEAD"),
        (["--receivers", "q:1.0,q:1.0"], "listed twice"),
        (["--receivers", "q:3.0"], "--receivers q:3.0: layer 3 is out of range"),
        (["--receivers", "v:0.1"], "give a layer in 1..2"),
        (["--receivers", "k:1.4"], "head 4 is out of range; the model has 4 heads"),
        (["--receivers", "q:1.0", "--receiver-heads", "1"], "not both"),
        (
            ["--receivers", "q:1.0", "--steps", "interaction"],
            "--receivers is for the path_patching_heads step",
        ),
        (["--layers", "0"], "add a later layer, give --receivers"),
    ]
    for extra, message in bad:
        assert main(["circuits", *common, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not (out / CIRCUIT_FILES["path_patching_heads"]).exists()  # refused before any work
    assert main(["circuits", *common, "--receivers", "v:1.1,q:2.0"]) == 0
    assert "into the score (direct path)" not in capsys.readouterr().out  # not needed: not computed
    res = PathPatchingResult.load(out / CIRCUIT_FILES["path_patching_heads"])
    assert res.receivers == ["v:L1H1", "q:L2H0"] and res.meta["receivers_chosen"]["by"] == "given"
    assert res["v:L1H1"].layers == [0] and res["q:L2H0"].layers == [0, 1]
    assert not (out / CIRCUIT_FILES["path_patching"]).exists()  # the direct paths were not needed


def test_interaction_weight_option(tmp_path, tiny_ce_dir, capsys):
    from mechir_nig.experiments.interaction import InteractionResult

    out = tmp_path / "o"
    common = ["--model", str(tiny_ce_dir), "--collection", "embedded", "--out", str(out), "--no-progress"]
    common += ["--steps", "interaction", "--interactions", "query:doc", "--layers", "0", "--depth", "4"]
    assert main(["circuits", *common, "--interaction-weight", "-1"]) == 2
    assert "must be a finite number >= 0" in capsys.readouterr().err
    assert main(["circuits", *common, "--interaction-weight", "0.5"]) == 0
    res = InteractionResult.load(out / CIRCUIT_FILES["interaction"])
    assert res.weight == 0.5 and res.action == "re-weighted by 0.5" and res.layers == [0]
    printed = capsys.readouterr().out
    assert (
        "1 (interaction, layer) re-weightings (x0.5) change nDCG@10" in printed and "Blocking" not in printed
    )


def test_explicit_receivers_are_named_as_given(tmp_path, tiny_ce2_dir, capsys):
    """The command says which inputs it path-patched into: the receivers given (it said "the queries, keys
    and values of L1H1, L2H0" for --receivers v:1.1,q:2.0)."""
    out = tmp_path / "o"
    args = ["circuits", "--model", str(tiny_ce2_dir), "--collection", "embedded", "--out", str(out)]
    args += "--no-progress --max-pairs 2 --steps path_patching_heads --receivers v:1.1,q:2.0".split()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "path patched every earlier head into v:L1H1, q:L2H0 (q, k, v:" in printed
    assert "queries, keys and values of" not in printed


def test_interaction_weight_without_the_interaction_step_is_refused(tmp_path, tiny_ce_dir, capsys):
    """--interaction-weight with --steps leaving the interaction study out is refused before any work (it
    was ignored silently), as --receivers without its step."""
    out = tmp_path / "o"
    args = ["circuits", "--model", str(tiny_ce_dir), "--collection", "embedded", "--out", str(out)]
    args += ["--no-progress", "--steps", "attention_groups", "--interaction-weight", "0.5"]
    assert main(args) == 2
    assert (
        "--interaction-weight 0.5 is for the interaction step, which --steps leaves out"
        in capsys.readouterr().err
    )
    assert not out.exists() or not any(out.iterdir())


def test_interaction_weight_minus_zero_is_zero():
    """``--interaction-weight -0`` is the plain 0 (blocking), not -0.0 (recorded and shown as "-0.0")."""
    import math

    from mechir_nig.cli.circuits import attention_weight

    value = attention_weight("-0")
    assert value == 0 and math.copysign(1.0, value) == 1.0


def test_more_receiver_heads_than_the_layers_have_is_refused(tmp_path, tiny_ce2_dir, capsys):
    """--receiver-heads above the heads of layers >= 1 among --layers is refused before any work (the step
    took fewer heads silently)."""
    out = tmp_path / "o"
    args = ["circuits", "--model", str(tiny_ce2_dir), "--collection", "embedded", "--out", str(out)]
    args += "--no-progress --max-pairs 2 --steps path_patching_heads --layers 0,1 --receiver-heads 5".split()
    assert main(args) == 2
    assert (
        "--receiver-heads 5: there are 4 heads of layer >= 1 to choose from (layers 1, 4 heads each); give at most 4"
        in capsys.readouterr().err
    )
    assert not (out / CIRCUIT_FILES["path_patching_heads"]).exists()


def test_direct_path_findings_name_the_path(ran):
    """The path_patching step's sentences say they measure the direct path into the score (they read as an
    ordinary patch of the heads' outputs, "heads: restoring the clean activations ...")."""
    from mechir_nig.findings import folder_findings

    _, out, _ = ran
    sentences = [s for key, s in folder_findings(out) if key == "path_patching"]
    assert sentences[0].startswith("The perturbation changes the score by")
    assert len(sentences) > 1
    assert all(s.startswith("Path patching, direct path into the score: ") for s in sentences[1:])
    assert any("Path patching, direct path into the score: heads: " in s for s in sentences)


def test_a_layer_0_receiver_is_refused_for_what_it_is(tmp_path, tiny_ce2_dir, capsys):
    """--receivers v:0.1 is refused as a head with no earlier head (it said "layer 0 is out of range; the
    model's layers are 0..2")."""
    out = tmp_path / "o"
    args = ["circuits", "--model", str(tiny_ce2_dir), "--collection", "embedded", "--out", str(out)]
    args += "--no-progress --max-pairs 2 --steps path_patching_heads --receivers v:0.1".split()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "--receivers v:0.1: a head of layer 0 has no earlier head to receive from; give a layer in 1..2"
        in err
    )
    assert "out of range" not in err
