"""Pruning study: per-evaluation checkpoints and resume (an exception after k evaluations, a real SIGKILL),
progress per forward batch, and the clean / baseline passes reused across conditions and calls."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch

from mechir_nig.data import bm25_candidates, load_collection
from mechir_nig.errors import InputError
from mechir_nig.experiments.pruning import PruningCache, PruningCheckpoint, pruning_study

KW = dict(
    fractions=(0.05,),
    seeds=2,
    modes=("zero", "baseline"),
    conditions=("nig_top", "random"),
    batch_size=4,
    progress=False,
)
N_EVALUATIONS = 1 + 3 * 2  # unpruned + (nig_top + 2 random) x 2 modes


@pytest.fixture(scope="module")
def col():
    return load_collection("embedded")


@pytest.fixture(scope="module")
def cands(col):
    return bm25_candidates(col, k=5)


def ranking_of(model):
    return torch.randn(model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def full(tiny_ce, col, cands):
    return pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), **KW)


def assert_same_study(a, b):
    assert a.runs == b.runs
    assert a.per_query == b.per_query
    assert a.moved == b.moved
    assert a.sets == b.sets
    assert (a.select_queries, a.eval_queries, a.settings) == (b.select_queries, b.eval_queries, b.settings)


class Stop(Exception):
    pass


def test_exception_after_k_evaluations_then_resume_equals_one_run(tiny_ce, col, cands, full, tmp_path):
    ckpt = tmp_path / "pruning.ckpt.json"
    seen = []

    def crash(run):
        seen.append(run)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), checkpoint=ckpt, on_evaluation=crash, **KW)
    state = PruningCheckpoint.load(ckpt)
    assert sorted(state.done, key=int) == ["0", "1", "2"]  # each evaluation saved as it finished
    assert [state.done[k]["run"] for k in ("0", "1", "2")] == full.runs[:3]
    with pytest.raises(InputError, match="pass resume=True"):
        pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), checkpoint=ckpt, **KW)
    again = []
    resumed = pruning_study(
        tiny_ce,
        col,
        cands,
        ranking_of(tiny_ce),
        checkpoint=ckpt,
        resume=True,
        on_evaluation=again.append,
        **KW,
    )
    assert len(again) == N_EVALUATIONS - 3  # only the evaluations not done
    assert_same_study(resumed, full)
    assert resumed.timings["resumed_evaluations"] == 3.0
    assert resumed.seconds[:3] == [state.done[k]["seconds"] for k in ("0", "1", "2")]
    assert len(resumed.seconds) == len(resumed.runs) == N_EVALUATIONS
    # a checkpoint of another study is refused, naming what differs
    with pytest.raises(InputError, match="another study"):
        pruning_study(
            tiny_ce, col, cands, ranking_of(tiny_ce), checkpoint=ckpt, resume=True, **(KW | {"seeds": 3})
        )
    with pytest.raises(InputError, match="needs checkpoint"):
        pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), resume=True, **KW)


CHILD = r"""
import sys, time
import torch
torch.set_num_threads(1)
from mechir_nig import HookedCrossEncoder
from mechir_nig.data import bm25_candidates, load_collection
from mechir_nig.experiments.pruning import pruning_study

model_dir, ckpt, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = HookedCrossEncoder.from_pretrained(model_dir)
col = load_collection("embedded")
ranking = torch.randn(model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
done = []

def pause(run):
    done.append(run)
    if len(done) == stop_at:
        print(f"PAUSED {len(done)}", flush=True)
        time.sleep(300)

print("STARTED", flush=True)
pruning_study(model, col, bm25_candidates(col, k=5), ranking, fractions=(0.05,), seeds=2,
              modes=("zero", "baseline"), conditions=("nig_top", "random"), batch_size=4, progress=False,
              checkpoint=ckpt, on_evaluation=pause)
print("DONE", flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_study_then_resume_equals_one_run(tiny_ce_dir, tiny_ce, col, cands, full, tmp_path):
    ckpt = tmp_path / "pruning.ckpt.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    err = (tmp_path / "child.stderr").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tiny_ce_dir), str(ckpt), "4"],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(120, proc.kill)  # never hang the suite
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = ""
        for line in proc.stdout:
            if line.startswith("PAUSED"):
                break
        assert line.strip() == "PAUSED 4", (tmp_path / "child.stderr").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        err.close()
    assert len(PruningCheckpoint.load(ckpt).done) == 4
    again = []
    resumed = pruning_study(
        tiny_ce,
        col,
        cands,
        ranking_of(tiny_ce),
        checkpoint=ckpt,
        resume=True,
        on_evaluation=again.append,
        **KW,
    )
    assert len(again) == N_EVALUATIONS - 4
    assert_same_study(resumed, full)


def test_progress_advances_per_forward_batch(tiny_ce, col, cands, full):
    ticks = []
    study = pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), on_batch=ticks.append, **KW)
    n_pairs = study.settings["pairs"]
    per_evaluation = -(-n_pairs // KW["batch_size"])  # the cross-encoder scores every pair, 4 per forward
    assert n_pairs > KW["batch_size"]
    assert ticks == list(range(1, (N_EVALUATIONS - 1) * per_evaluation + 1))  # one call per batch
    assert study.runs == full.runs


def test_clean_and_baseline_passes_are_reused_and_change_nothing(tiny_ce, col, cands, full):
    from mechir_nig.interventions.ablation import ablate
    from mechir_nig.sets import ComponentSet

    cache = PruningCache()
    first = pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), cache=cache, **KW)
    assert cache.hits == 0 and len(cache) == 1
    second = pruning_study(tiny_ce, col, cands, ranking_of(tiny_ce), cache=cache, **KW)
    assert cache.hits == 1  # the clean pass of the second call came from the cache
    assert first.runs == second.runs == full.runs
    assert cache.baseline(tiny_ce)._rows  # the baseline rows kept for the next condition
    # the shared baseline value scores exactly as a fresh ablate(mode="baseline") of the same set
    pairs = [(q, d) for q in first.eval_queries for d in cands[q]]
    docs = col.get_docs(d for _, d in pairs)
    qs, ds = [col.queries[q] for q, _ in pairs], [docs[d] for _, d in pairs]
    top = ComponentSet.from_json(first.sets["nig_top|0.05|0"])
    with ablate(tiny_ce, top, mode="baseline"):
        fresh = tiny_ce.score(qs, ds, batch_size=4).double()
    i = next(i for i, r in enumerate(first.runs) if r["condition"] == "nig_top" and r["mode"] == "baseline")
    from mechir_nig.evaluation import evaluate

    run: dict = {}
    for (q, d), v in zip(pairs, fresh.tolist(), strict=True):
        run.setdefault(q, {})[d] = v
    res = evaluate(run, col, list(first.measures), per_query=True, query_ids=first.eval_queries)
    assert res.per_query == first.per_query[i]


@pytest.mark.slow
def test_cli_prune_resumes_a_stopped_study(tiny_ce_dir, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    import mechir_nig.experiments.pruning as pruning
    from mechir_nig.cli import main

    out = tmp_path / "a"
    common = ["--model", str(tiny_ce_dir), "--collection", "embedded", "--no-progress"]
    assert (
        main(
            ["attribute", *common, "--out", str(out), "--max-relevant", "1", "--max-nonrelevant", "1"]
            + ["--n-steps", "2"]
        )
        == 0
    )
    shutil.copytree(out, tmp_path / "b")
    prune = ["prune", *common, "--fractions", "0.05", "--seeds", "2", "--modes", "zero,baseline", "--k", "5"]
    prune += ["--conditions", "nig_top,random", "--batch-size", "4"]
    real = pruning.pruning_study
    n = []

    def stop_after_three(*args, **kwargs):
        def crash(run):
            n.append(run)
            if len(n) == 3:
                raise KeyboardInterrupt

        return real(*args, **kwargs, on_evaluation=crash)

    monkeypatch.setattr(pruning, "pruning_study", stop_after_three)
    assert main([*prune, "--out", str(out)]) == 130  # interrupted after three evaluations
    assert "prune --resume continues" in capsys.readouterr().err
    monkeypatch.setattr(pruning, "pruning_study", real)
    assert len(PruningCheckpoint.load(out / "pruning.ckpt.json").done) == 3
    assert main([*prune, "--out", str(out)]) == 2  # a stopped study is not started over silently
    assert "--resume" in capsys.readouterr().err
    assert main([*prune, "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "resumed 3 of 7 evaluations" in said
    assert re.search(
        r"nig_top at fraction 0.05 \(the relevant scheme\): 6 neurons, \d of 6 active on the NIG", said
    )
    assert not (out / "pruning.ckpt.json").exists()  # removed once pruning.json is written
    assert main([*prune, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((d / "pruning.json").read_text()) for d in (out, tmp_path / "b"))
    for key in ("runs", "per_query", "moved", "sets", "eval_queries"):
        assert a[key] == b[key]


def test_faithfulness_progress_advances_per_forward_batch(tiny_ce):
    from conftest import DOCS, QUERIES

    from mechir_nig.experiments.faithfulness import faithfulness

    qs, ds = QUERIES[:3], DOCS[:3]
    ticks: list[int] = []
    kw = dict(k=3, curve_k=2, seeds=1, n_steps=2, chunk_size=4, interventions=("zero", "baseline"))
    res = faithfulness(tiny_ce, qs, ds, on_batch=ticks.append, **kw)
    # act x grad (1), then per intervention: the clean pass and ceil(3 pairs x 3 neurons / 4) = 3 chunks
    # of single-neuron rows, the curve's clean pass and ceil(3 x 2 k x (1 + 1 seed) / 4) = 3 chunks
    assert ticks == list(range(1, 1 + 2 * (1 + 3 + 1 + 3) + 1))
    again = faithfulness(tiny_ce, qs, ds, **kw)  # counting changes nothing
    torch.testing.assert_close(again.drops["baseline"], res.drops["baseline"], atol=0, rtol=0)
