"""The command line: help texts, one-line errors with exit codes, and runs end to end on the embedded
collection (in-process through ``main`` and as a real ``python -m mechir_nig`` subprocess)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from mechir_nig.cli import COMMANDS, build_parser, main
from mechir_nig.cli._common import HelpFormatter

MINILM = "all-MiniLM-L6-v2"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _squash(text: str) -> str:
    return "".join(text.split())  # help is wrapped (also at hyphens): compare without whitespace


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_option_with_its_default_and_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    flat = _squash(out)
    parser = _subparsers()[command]
    fmt = HelpFormatter(prog="x")
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        for flag in action.option_strings:
            assert flag in out, f"{command} --help does not list {flag}"
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        text = fmt._get_help_string(action) or ""
        assert "default:" in text, f"{command} {action.option_strings[0]} states no default"
        assert _squash(text.split("default:")[-1]) in flat
    assert "example:" in out and f"mechir-nig {command}" in out


def test_option_choices_are_the_libraries(tmp_path):
    from mechir_nig.attribution.baselines import BASELINES
    from mechir_nig.attribution.rules import RULES
    from mechir_nig.attribution.stats import SCHEMES
    from mechir_nig.cli import _common
    from mechir_nig.experiments import pruning
    from mechir_nig.interventions.patching import SITES

    assert _common.BASELINES == BASELINES and _common.RULES == RULES and _common.SCHEMES == SCHEMES
    assert set(_common.ABLATION_MODES) == set(pruning._MODES) and _common.CONDITIONS == pruning.CONDITIONS
    assert set(_common.PATCH_SITES) == set(SITES) - {"neuron_set"}


def test_help_imports_no_torch():
    code = "import sys; from mechir_nig.cli import main; main(['attribute', '--help']); assert 'torch' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_top_level_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    assert "run.json" in out and "attribution.safetensors" in out
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mechir-nig 0.") and "torch" in out and "transformers" in out


def _one_line_error(capsys, argv: list[str], code: int, command: str) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"mechir-nig {command}: error: "), err
    return err


def test_bad_collection_path(tmp_path, capsys):
    err = _one_line_error(
        capsys, ["attribute", "--collection", str(tmp_path / "nope"), "--out", str(tmp_path)], 2, "attribute"
    )
    assert "--collection" in err and "no such folder" in err


def test_bad_model_path(tmp_path, capsys):
    err = _one_line_error(
        capsys, ["prune", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)], 2, "prune"
    )
    assert "--model" in err and "no such folder" in err


def test_model_folder_without_config_is_a_failure(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _one_line_error(
        capsys, ["rerank", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], 1, "rerank"
    )
    assert "config.json" in err


def test_no_pairs_speaks_in_flags(tmp_path, capsys):
    err = _one_line_error(
        capsys,
        ["attribute", "--max-relevant", "0", "--max-nonrelevant", "0", "--out", str(tmp_path)],
        2,
        "attribute",
    )
    assert "--max-relevant" in err and "--max-nonrelevant" in err
    assert "max_relevant_per_query" not in err and "judged_pairs" not in err


def test_unknown_perturbation(tmp_path, capsys):
    err = _one_line_error(capsys, ["patch", "--perturbation", "swap", "--out", str(tmp_path)], 2, "patch")
    assert "--perturbation" in err and "tfc1" in err


@pytest.mark.parametrize(
    "value", [["--fractions", "-0.1"], ["--fractions=-0.01,0.05"], ["--fractions", "1.5"]]
)
def test_bad_fractions(tmp_path, capsys, value):
    err = _one_line_error(capsys, ["prune", *value, "--out", str(tmp_path)], 2, "prune")
    assert "--fractions" in err and "[0, 1]" in err


def test_missing_attribution(tmp_path, capsys):
    err = _one_line_error(capsys, ["prune", "--out", str(tmp_path)], 2, "prune")
    assert "mechir-nig attribute" in err
    err = _one_line_error(capsys, ["prune", "--attribution", str(tmp_path / "x.safetensors")], 2, "prune")
    assert "--attribution" in err


def test_library_messages_are_translated_to_flags():
    from mechir_nig.cli._common import cli_terms

    msg = cli_terms("checkpoint a.st exists; pass resume=True to continue it, or remove it")
    assert msg == "checkpoint a.st exists; pass --resume to continue it, or remove it"
    assert "--out" in cli_terms("checkpoint a.st was made with other pairs or settings {}; use another file")
    msg = cli_terms(
        "max_relevant_per_query must be None (no cap) or an integer >= 0; n_steps too; batch_size"
    )
    assert msg.startswith("--max-relevant must") and "--n-steps" in msg and msg.endswith("--batch-size")
    assert "internal_batch_size" not in cli_terms("internal_batch_size must be >= 1")


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = ["attribute", "--max-relevant", "0", "--max-nonrelevant", "0", "--out", str(tmp_path), "--debug"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("mechir-nig attribute: error: --max-relevant 0")
    assert main(["--debug", "patch", "--perturbation", "swap"]) == 2  # before the command too
    assert "Traceback" in capsys.readouterr().err


def test_report_calls_report_build(tmp_path, capsys, monkeypatch):
    assert main(["report", str(tmp_path)]) == 2
    assert "has no run.json" in capsys.readouterr().err
    (tmp_path / "run.json").write_text("{}")
    calls = []

    def build(results_dir, out_path):
        calls.append((Path(results_dir), Path(out_path)))
        Path(out_path).write_text("<html></html>")
        return out_path

    monkeypatch.setitem(sys.modules, "mechir_nig.report", types.SimpleNamespace(build=build))
    assert main(["report", str(tmp_path)]) == 0
    assert calls == [(tmp_path, tmp_path / "report.html")]
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "report.html")
    assert main(["report", "--out", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 0
    assert calls[-1] == (tmp_path, tmp_path / "r.html")


# -- end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from mechir_nig.models import load_model

    return load_model(MINILM)


@pytest.fixture(scope="module")
def col():
    from mechir_nig.data import load_collection

    return load_collection("embedded")


@pytest.mark.slow
def test_attribute_prune_patch_end_to_end(tmp_path, capsys, minilm, col):
    from mechir_nig.attribution.settings import model_fingerprint
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import bm25_candidates, judged_pairs
    from mechir_nig.evaluation import evaluate, rerank
    from mechir_nig.experiments.pruning import split_queries
    from mechir_nig.interventions.patching import PatchingResult

    out = tmp_path / "results"
    argv = ["attribute", "--model", MINILM, "--collection", "embedded", "--out", str(out), "--no-progress"]
    assert main([*argv, "--max-relevant", "1", "--max-nonrelevant", "1", "--n-steps", "4"]) == 0
    # the attribution: the judged pairs of the selection half of the queries
    sel, ev = split_queries(col, seed=0)
    pairs = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1, query_ids=sel)
    stats = CollectionAttribution.load(out / "attribution.safetensors")
    assert (out / "attribution.safetensors.json").is_file()
    assert stats.counts == {
        "relevant": sum(p.label == "relevant" for p in pairs),
        "nonrelevant": sum(p.label == "nonrelevant" for p in pairs),
    }
    assert stats.n_done == len(pairs) == 14
    assert stats.meta["n_steps"] == 4 and stats.meta["query_ids"] == sel
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "attribute" and run["layout"] == 1
    assert run["model"]["fingerprint"] == model_fingerprint(minilm) == stats.meta["model"]
    assert run["collection"]["name"] == "embedded"
    assert set(run["versions"]) >= {"mechir_nig", "torch", "transformers", "python"}
    assert run["timings"]["attribute"] > 0 and run["started"] <= run["finished"]
    # a second run refuses to overwrite it, in flags
    assert main([*argv, "--max-relevant", "1", "--max-nonrelevant", "1", "--n-steps", "4"]) == 2
    assert "--resume" in capsys.readouterr().err

    # prune: model and collection come from run.json; evaluated on the other half of the queries
    assert (
        main(
            [
                "prune",
                "--out",
                str(out),
                "--fractions",
                "0.01",
                "--seeds",
                "1",
                "--modes",
                "zero",
                "--k",
                "10",
                "--no-progress",
            ]
        )
        == 0
    )
    result = json.loads((out / "pruning.json").read_text())
    assert result["select_queries"] == sel and result["eval_queries"] == ev
    unpruned = next(r for r in result["runs"] if r["condition"] == "unpruned")
    cands = bm25_candidates(col, k=10, query_ids=ev)
    expected = evaluate(rerank(minilm, col, cands), col, ["nDCG@10", "RR@10"], query_ids=ev)
    assert unpruned["nDCG@10"] == pytest.approx(expected["nDCG@10"], abs=1e-9)
    assert unpruned["RR@10"] == pytest.approx(expected["RR@10"], abs=1e-9)
    top = next(r for r in result["runs"] if r["condition"] == "nig_top")
    assert top["n_neurons"] == round(0.01 * 6 * 1536)
    assert result["settings"]["fractions"] == [0.01] and result["settings"]["modes"] == ["zero"]

    # patch, as a real subprocess
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mechir_nig", "patch", "--out", str(out), "--max-pairs", "2"]
    cmd += ["--sites", "resid_pre,heads", "--layers", "4,5", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("wrote ")
    res = PatchingResult.load(out / "patching.safetensors")
    n_pos = res.base_mask.shape[1]
    assert res.values["resid_pre"].shape == (2, 2, n_pos)  # [pairs, layers, positions]
    assert res.values["heads"].shape == (2, 2, 12)
    assert res.layers == [4, 5] and res.direction == "denoise" and res.metric == "recovery"
    assert len(res.meta["pairs"]) == 2 and res.meta["perturbation"] == "tfc1"
    with torch.no_grad():  # the scores in the file are the model's scores of the clean and perturbed pairs
        clean = minilm.score(res.meta["queries"], [col.docs[p["doc_id"]] for p in res.meta["pairs"]])
        pert = minilm.score(res.meta["queries"], res.meta["perturbed_docs"])
    torch.testing.assert_close(res.clean_scores, clean.float().cpu(), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.corrupted_scores, pert.float().cpu(), atol=1e-5, rtol=0)
    run = json.loads((out / "run.json").read_text())
    assert [h["command"] for h in run["history"]] == ["attribute", "prune", "patch"]
    assert run["command"] == "patch" and run["settings"]["layers"] == [4, 5]


@pytest.mark.slow
def test_rerank_faithfulness_stability_on_a_cross_encoder_folder(tmp_path, tiny_ce_dir, col):
    out = tmp_path / "ce"
    common = ["--model", str(tiny_ce_dir), "--collection", "embedded", "--out", str(out), "--no-progress"]
    assert main(["rerank", *common, "--k", "5"]) == 0
    study = json.loads((out / "rerank.json").read_text())
    assert study["k"] == 5 and set(study["reranked"]) == {"nDCG@10", "RR@10"}
    assert (
        main(
            ["faithfulness", *common, "--max-pairs", "2", "--neurons", "3", "--curve-k", "2", "--seeds", "1"]
            + ["--interventions", "zero,mean", "--n-steps", "2"]
        )
        == 0
    )
    faith = json.loads((out / "faithfulness.json").read_text())
    assert set(faith["spearman"]) == {"zero", "mean"} and len(faith["pairs"]) == 2
    assert len(faith["curve"]["zero"]["nig"]) == 2 and len(faith["drops"]["mean"][0]) == 3
    assert main(["stability", *common, "--max-relevant", "1", "--n-steps", "2", "--fraction", "0.05"]) == 0
    stab = json.loads((out / "stability.json").read_text())
    assert len(stab["halves"]) == 2 and 0 <= stab["overlap"]["jaccard"] <= 1
    run = json.loads((out / "run.json").read_text())
    assert [h["command"] for h in run["history"]] == ["rerank", "faithfulness", "stability"]
    assert run["model"]["class"] == "HookedCrossEncoder" and run["model"]["spec"] == str(
        tiny_ce_dir.resolve()
    )


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_the_report_path_last(tmp_path, tiny_ce_dir, capsys, monkeypatch):
    def build(results_dir, out_path):
        Path(out_path).write_text("<html></html>")
        return out_path

    monkeypatch.setitem(sys.modules, "mechir_nig.report", types.SimpleNamespace(build=build))
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny_ce_dir), "--out", str(out), "--no-progress", "--n-steps", "2"]
    argv += ["--max-relevant", "1", "--max-nonrelevant", "1", "--fractions", "0.05", "--seeds", "1"]
    argv += ["--modes", "zero", "--max-pairs", "1", "--sites", "heads", "--k", "5"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.html")
    for name in ("attribution.safetensors", "pruning.json", "patching.safetensors", "report.html"):
        assert (out / name).is_file()
    run = json.loads((out / "run.json").read_text())
    assert [h["command"] for h in run["history"]] == ["attribute", "prune", "patch", "demo"]
    assert run["command"] == "demo" and set(run["timings"]) == {"attribute", "prune", "patch"}
    assert run["history"][1]["argv"][:2] == ["prune", "--model"]  # each stage's equivalent command
    assert main(argv) == 0  # a rerun resumes the attribution


def test_patch_skip_reasons_leave_the_texts_out():
    from mechir_nig.cli.patch import _reason

    a = _reason("term 'x' does not occur in the document \"The Moon's phases\"; nothing to remove")
    b = _reason("term 'x' does not occur in the document 'Kneading develops gluten'; nothing to remove")
    assert a == b == "term ... does not occur in the document ..."
    msg = "pair 0 (query 'what'): the perturbed document has the same tokens as the clean one; it changes nothing"
    assert _reason(msg) == "the perturbed document has the same tokens as the clean one"


def test_unsharded_command_under_a_multi_rank_launch_is_refused(monkeypatch, capsys):
    """torchrun with 2 ranks: 'report' (not sharded) is a usage error, not twice the work and two writers."""
    from mechir_nig.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    assert main(["report", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not shard" in err[0] and "attribute, prune" in err[0]


def test_attribute_window_padding_changes_only_the_cost(tmp_path, capsys, minilm, col):
    """``--window-padding`` reaches NIG: the statistics equal a run without it up to float32 round-off."""
    from mechir_nig.attribution.stats import CollectionAttribution

    base = ["attribute", "--model", MINILM, "--collection", "embedded", "--no-progress", "--n-steps", "4"]
    base += ["--max-relevant", "1", "--max-nonrelevant", "1"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "cut"), "--window-padding", "0.125"]) == 0
    plain = CollectionAttribution.load(tmp_path / "plain" / "attribution.safetensors")
    cut = CollectionAttribution.load(tmp_path / "cut" / "attribution.safetensors")
    for label in ("relevant", "nonrelevant"):
        a, b = cut.mean(label), plain.mean(label)
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--window-padding", "1.5"]) == 2
    assert "--window-padding: must be a number in [0, 1), e.g. 0.125; got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before any work
