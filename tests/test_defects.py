"""The defects of issue 15 found by the reliability probe, each fixed with a test that failed before the fix:
a stopped ``attribute`` taken downstream as complete (1), output folders found unwritable only after the
work (3), and the minor ones of the command line and of loading. Tiny models and the embedded collection."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_cli import _one_line_error

from mechir_nig.cli import main
from mechir_nig.cli._common import Session

RERANK_JSON = {
    "collection": "embedded",
    "queries": 15,
    "k": 10,
    "bm25": {"nDCG@10": 0.8, "RR@10": 0.9},
    "reranked": {"nDCG@10": 0.95, "RR@10": 1.0},
    "seconds": {"bm25": 0.1, "rerank": 1.0},
}


class Killed(BaseException):
    """Stands for a SIGKILL: nothing of ``main`` runs after it (only ``finally`` blocks)."""


def _stop_after(monkeypatch, n_batches: int) -> None:
    """``attribute`` dies in its batch ``n_batches + 1``, after checkpointing the ones before."""
    from mechir_nig.experiments import attribute as experiment

    real, calls = experiment._nig_into, []

    def nig_into(*args, **kwargs):
        if len(calls) == n_batches:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment, "_nig_into", nig_into)


def _collection_folder(folder: Path) -> Path:
    """The embedded collection written out as a folder (docs.tsv, queries.tsv, qrels)."""
    from mechir_nig.data import load_collection

    col = load_collection("embedded")
    folder.mkdir()
    (folder / "docs.tsv").write_text("".join(f"{d}\t{t}\n" for d, t in col.docs.items()))
    (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in col.queries.items()))
    binary = [(r, int(r.relevance >= col.relevance_threshold)) for r in col.qrels]
    (folder / "qrels").write_text("".join(f"{r.query_id} 0 {r.doc_id} {g}\n" for r, g in binary))
    return folder


ATTRIBUTE = ["--max-relevant", "1", "--max-nonrelevant", "1", "--n-steps", "2", "--batch-size", "1"]
ATTRIBUTE += ["--checkpoint-every", "1", "--no-progress"]
PRUNE = ["--fractions", "0.05", "--seeds", "1", "--modes", "zero", "--conditions", "nig_top", "--k", "5"]
PRUNE += ["--no-progress"]


# -- 1. a stopped attribute ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_stopped_attribute_is_refused_downstream_unless_allowed_and_then_flagged(
    tmp_path, tiny_ce_dir, capsys, monkeypatch
):
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import load_collection
    from mechir_nig.experiments.pruning import split_queries

    col_dir = _collection_folder(tmp_path / "collection")
    out = tmp_path / "results"
    _stop_after(monkeypatch, 2)
    with pytest.raises(Killed):
        main(
            [
                "attribute",
                "--model",
                str(tiny_ce_dir),
                "--collection",
                str(col_dir),
                "--out",
                str(out),
                *ATTRIBUTE,
            ]
        )
    monkeypatch.undo()
    # the checkpoint records the plan: the pairs and the queries they come from
    stats = CollectionAttribution.load(out / "attribution.safetensors")
    sel, _ = split_queries(load_collection(str(col_dir)), seed=0)
    assert stats.n_done == 2 and stats.meta["n_pairs"] == 14
    assert sum(stats.meta["planned"].values()) == 14 and stats.meta["query_ids"] == sel
    # run.json names the run's inputs although the run never finished
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "running" and run["command"] == "attribute"
    assert run["collection"]["spec"] == str(col_dir.resolve())
    assert run["model"]["spec"] == str(tiny_ce_dir.resolve())
    capsys.readouterr()

    # prune and report refuse it, saying what it holds and what to do
    err = _one_line_error(capsys, ["prune", "--out", str(out), *PRUNE], 1, "prune")
    assert "incomplete" in err and "2 of 14 planned pairs" in err
    assert "attribute --resume" in err and "--allow-incomplete" in err
    assert not (out / "pruning.json").exists()
    err = _one_line_error(capsys, ["report", str(out)], 1, "report")
    assert "incomplete" in err and "--allow-incomplete" in err and "allow_incomplete=True" not in err
    assert not (out / "report.html").exists()

    # with --allow-incomplete they run and say so, in the output, pruning.json and the report
    assert main(["prune", "--out", str(out), "--allow-incomplete", *PRUNE]) == 0
    said = capsys.readouterr().out
    assert "--allow-incomplete" in said and "2 of 14 planned pairs" in said
    assert "assuming the selection half" not in said
    result = json.loads((out / "pruning.json").read_text())
    assert result["settings"]["attribution_incomplete"].startswith("2 of 14 planned pairs")
    assert result["select_queries"] == sel
    assert main(["report", str(out), "--allow-incomplete"]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "The attribution is incomplete: it holds 2 of 14 planned pairs" in page
    assert "selected its neurons from an incomplete attribution" in page

    # --resume with other options names the command that started the run (not "another --out")
    err = _one_line_error(capsys, ["attribute", "--out", str(out), "--resume"], 1, "attribute")
    assert "It was started as: mechir-nig attribute --model" in err and "another --out" not in err
    # --resume without --model and --collection continues it on the recorded ones
    assert main(["attribute", "--out", str(out), "--resume", *ATTRIBUTE]) == 0
    stats = CollectionAttribution.load(out / "attribution.safetensors")
    assert stats.n_done == 14 and sum(stats.counts.values()) == 14
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["collection"]["spec"] == str(col_dir.resolve())
    assert [h["command"] for h in run["history"]] == ["attribute", "prune", "attribute"]


@pytest.mark.slow
def test_a_stopped_attribution_of_all_queries_is_not_taken_for_the_selection_half(
    tmp_path, tiny_ce_dir, capsys, monkeypatch
):
    out = tmp_path / "all"
    _stop_after(monkeypatch, 1)
    with pytest.raises(Killed):
        main(["attribute", "--model", str(tiny_ce_dir), "--out", str(out), "--queries", "all", *ATTRIBUTE])
    monkeypatch.undo()
    capsys.readouterr()
    err = _one_line_error(capsys, ["prune", "--out", str(out), "--allow-incomplete", *PRUNE], 1, "prune")
    assert "every judged query" in err
    assert "assuming the selection half" not in capsys.readouterr().out


def test_a_sharded_run_that_was_stopped_is_named(tmp_path, capsys):
    (tmp_path / "attribution.safetensors.manifest.json").write_text("{}")
    (tmp_path / "run.json").write_text(json.dumps({"layout": 1, "model": {"spec": "all-MiniLM-L6-v2"}}))
    err = _one_line_error(capsys, ["prune", "--out", str(tmp_path)], 1, "prune")
    assert "sharded" in err and "attribute --resume" in err


# -- 3. an unwritable --out is found before any work ------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Loading the model or the collection, or building a report, is work: fail loudly if it starts."""

    def work(*args, **kwargs):
        raise RuntimeError("work started")

    monkeypatch.setattr(Session, "model", work)
    monkeypatch.setattr(Session, "collection", work)
    monkeypatch.setattr("mechir_nig.report.build", work)


@pytest.mark.parametrize("command", ["attribute", "prune", "patch", "faithfulness", "rerank", "stability"])
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys, no_work, command):
    from mechir_nig.attribution.stats import CollectionAttribution

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = [command, "--out", str(blocker / "results")]
    if command == "prune":
        att = CollectionAttribution(layers=[0], n_layers=1, d_mlp=4).save(tmp_path / "a.safetensors")
        argv += ["--attribution", str(att)]
    err = _one_line_error(capsys, argv, 1, command)
    assert f"--out {blocker / 'results'}: cannot write there" in err and "nothing was run" in err
    assert "work started" not in err


def test_report_probes_its_file_before_building(tmp_path, capsys, no_work):
    (tmp_path / "run.json").write_text("{}")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = _one_line_error(capsys, ["report", str(tmp_path), "-o", str(blocker / "r.html")], 1, "report")
    assert "cannot write there" in err and "work started" not in err
    # -o a folder: refused at once, not after building on an internal temporary name
    err = _one_line_error(capsys, ["report", str(tmp_path), "-o", str(tmp_path)], 2, "report")
    assert "a folder" in err and "report.html" in err and ".tmp" not in err


def test_build_refuses_a_folder_as_its_output_before_any_work(tmp_path, monkeypatch):
    from mechir_nig import report
    from mechir_nig.errors import InputError

    (tmp_path / "rerank.json").write_text(json.dumps(RERANK_JSON))
    monkeypatch.setattr(report, "_loaders", lambda: pytest.fail("work started"))
    with pytest.raises(InputError, match="is a folder; pass the HTML file"):
        report.build(tmp_path, tmp_path)


def test_out_empty_or_a_file_is_a_usage_error(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, ["rerank", "--out", ""], 2, "rerank")
    assert "--out is empty" in err
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder
    (tmp_path / "f").write_text("x")
    err = _one_line_error(capsys, ["rerank", "--out", str(tmp_path / "f")], 2, "rerank")
    assert "a file, not a folder" in err and "Errno" not in err


def test_failed_commands_leave_no_empty_output_folders(tmp_path, tiny_ce_dir, capsys):
    out = tmp_path / "new" / "results"
    argv = ["attribute", "--model", str(tiny_ce_dir), "--out", str(out), "--layers", "9", "--no-progress"]
    err = _one_line_error(capsys, argv, 2, "attribute")  # fails after the model is loaded
    assert "--layers 9" in err
    _one_line_error(capsys, ["prune", "--out", str(out), "--attribution", str(tmp_path / "x")], 2, "prune")
    _one_line_error(capsys, ["rerank", "--out", str(out), "--measures", "NoSuchMeasure@3"], 1, "rerank")
    assert list(tmp_path.iterdir()) == []
    # a folder that existed stays, and its run.json is put back as it was
    out.mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"layout": 1, "command": "rerank"}))
    before = (out / "run.json").read_text()
    _one_line_error(capsys, ["rerank", "--out", str(out), "--measures", "NoSuchMeasure@3"], 1, "rerank")
    assert (out / "run.json").read_text() == before and sorted(p.name for p in out.iterdir()) == ["run.json"]


# -- minor ones ---------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_says_what_to_do(tmp_path, capsys, no_work):
    err = _one_line_error(capsys, ["rerank", "--device", "cuda", "--out", str(tmp_path)], 2, "rerank")
    assert "CUDA is not available" in err and "--device cpu" in err
    assert "unexpected" not in err and "please report" not in err
    err = _one_line_error(capsys, ["rerank", "--device", "gpu", "--out", str(tmp_path)], 2, "rerank")
    assert "not a torch device" in err


def test_a_full_disk_says_what_happened_and_what_to_do(tmp_path, tiny_ce_dir, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    argv = ["attribute", "--model", str(tiny_ce_dir), "--out", str(tmp_path / "o"), "--no-progress"]
    argv += ["--max-relevant", "1", "--max-nonrelevant", "0", "--n-steps", "1", "--queries", "all"]
    err = _one_line_error(capsys, argv, 1, "attribute")
    assert "the disk is full" in err and "another disk" in err
    assert "unexpected" not in err and "please report" not in err
    from mechir_nig.cli._common import explain_failure

    assert "disk is full" in explain_failure(OSError(errno.ENOSPC, "No space left on device", "x.json"))
    assert explain_failure(ValueError("something else")) is None


def test_patch_term_empty_is_a_usage_error(tmp_path, capsys, no_work):
    err = _one_line_error(capsys, ["patch", "--term", "", "--out", str(tmp_path)], 2, "patch")
    assert "--term" in err and "empty" in err and "changes none" not in err


def test_option_prefixes_are_not_accepted(tmp_path, capsys):
    err = _one_line_error(capsys, ["attribute", "--n-step", "4", "--out", str(tmp_path)], 2, "attribute")
    assert "--n-step" in err and "unrecognized" in err


def test_report_flags_results_of_different_models_and_collections(tmp_path):
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.report import build

    stats = CollectionAttribution(layers=[0], n_layers=1, d_mlp=4)
    stats.update("relevant", torch.randn(2, 1, 4, 4))
    stats.save(tmp_path / "attribution.safetensors")
    (tmp_path / "rerank.json").write_text(json.dumps(RERANK_JSON))
    a = {
        "command": "attribute",
        "model": {"spec": "model-A", "fingerprint": "aaaa1111"},
        "collection": {"spec": "irds:vaswani", "name": "vaswani"},
        "outputs": ["attribution.safetensors"],
    }
    b = {
        "command": "rerank",
        "model": {"spec": "model-B", "fingerprint": "bbbb2222"},
        "collection": {"spec": "embedded", "name": "embedded"},
        "outputs": ["rerank.json"],
    }
    (tmp_path / "run.json").write_text(json.dumps({"layout": 1, **b, "history": [a, b]}))
    page = build(tmp_path).read_text(encoding="utf-8")
    assert "computed with 2 models" in page and "2 collections" in page
    assert "attribution.safetensors: made by attribute (command #1) with model model-A" in page
    assert "rerank.json: made by rerank (command #2) with model model-B" in page
    assert "on collection embedded" in page and "on collection irds:vaswani" in page


def test_run_json_of_an_unknown_layout_is_refused(tmp_path, capsys):
    from mechir_nig.errors import InputError
    from mechir_nig.report import build

    (tmp_path / "rerank.json").write_text(json.dumps(RERANK_JSON))
    (tmp_path / "run.json").write_text(json.dumps({"layout": 99, "history": []}))
    with pytest.raises(InputError, match="layout version 99"):
        build(tmp_path)
    err = _one_line_error(capsys, ["rerank", "--out", str(tmp_path)], 1, "rerank")
    assert "layout version 99" in err


def test_load_model_none_says_what_to_pass():
    from mechir_nig.errors import InputError
    from mechir_nig.models import load_model

    for bad in (None, "", "  "):
        with pytest.raises(InputError, match="hub id"):
            load_model(bad)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_bin_holding_code_is_refused_as_code_without_torchs_advice(tmp_path, tiny_ce_dir, capsys):
    from mechir_nig.errors import ModelLoadError
    from mechir_nig.models import load_model

    folder = tmp_path / "evil"
    shutil.copytree(tiny_ce_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"w": _Evil(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    text = str(info.value)
    assert "holds Python code" in text and "posix.system" in text and "refused" in text
    assert "weights_only" not in text and "likely succeed" not in text and "corrupt" not in text
    assert info.value.__cause__ is None and not marker.exists()
    err = _one_line_error(
        capsys, ["rerank", "--model", str(folder), "--out", str(tmp_path / "o")], 1, "rerank"
    )
    assert "holds Python code" in err and "weights_only" not in err


def test_the_report_shows_unfinished_commands():
    """A command that was stopped (or failed after writing) is marked in the report's command table."""
    from mechir_nig.report import _Doc, _run_section

    doc = _Doc()
    rec = {"command": "attribute", "status": "running", "argv": ["attribute"]}
    _run_section(doc, {"layout": 1, **rec, "history": [rec]})
    assert "attribute (running)" in "".join(doc.sections[0][2])
