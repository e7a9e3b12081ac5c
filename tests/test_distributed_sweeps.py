"""faithfulness, rerank and split_half_stability sharded over 2 real gloo ranks under torchrun equal one
process; the `faithfulness` command under torchrun writes what the plain command writes, once.

The launch runs ``python -m torch.distributed.run --nproc-per-node 2`` on a script written to
``tmp_path`` that loads the tiny seeded cross-encoder (the ``tiny_ce_dir`` fixture) and runs the three
functions with ``distributed="auto"`` (``rerank`` through ``experiments.rerank_sharded``); each rank saves what it returned and counts the pairs it worked on.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import one_thread, torchrun

from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
from mechir_nig.evaluation import rerank
from mechir_nig.experiments import split_half_stability
from mechir_nig.experiments.faithfulness import faithfulness

FAITH = dict(k=3, curve_k=2, seeds=2, interventions=("baseline", "zero", "mean"), n_steps=2, chunk_size=5)
STABILITY = dict(fraction=0.05, max_relevant_per_query=1, n_steps=2, batch_size=2, progress=False)
RERANK_K = 5

SCRIPT = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from mechir_nig import HookedCrossEncoder
from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
from mechir_nig.experiments import attribute as attribute_module, rerank_sharded, split_half_stability
from mechir_nig.experiments import faithfulness as faith_module
from mechir_nig.runtime import distributed

model_dir, out = sys.argv[1], sys.argv[2]
FAITH, STABILITY, RERANK_K = json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
FAITH["interventions"] = tuple(FAITH["interventions"])
col = load_collection("embedded")
model = HookedCrossEncoder.from_pretrained(model_dir, device=distributed.local_device())
counts = {"faithfulness": 0, "rerank": 0, "stability": 0}

def counting(key, fn, n):  # wrap fn, adding the pairs it was given to counts[key]
    def wrapped(*args, **kwargs):
        counts[key] += n(*args)
        return fn(*args, **kwargs)
    return wrapped

faith_module.single_neuron_effects = counting(  # once per intervention: the pairs of this rank
    "faithfulness", faith_module.single_neuron_effects, lambda m, b, o, neurons: len(neurons)
)
model.score = counting("rerank", model.score, lambda q, d: len(q))
attribute_module._nig_into = counting("stability", attribute_module._nig_into, lambda m, s, f, idx, kw: len(idx))

pairs = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1)[:4]
faith = faith_module.faithfulness(model, [p.query for p in pairs], [p.doc for p in pairs], **FAITH)
run = rerank_sharded(model, col, bm25_candidates(col, k=RERANK_K), batch_size=4)
study = split_half_stability(model, col, checkpoint_dir=os.path.join(out, "ckpt"), **STABILITY)
r = distributed.rank()
result = {
    "faithfulness": faith.to_dict() | {"drops": {m: v.tolist() for m, v in faith.drops.items()},
                                       "neurons": faith.neurons.tolist()},
    "rerank": run,
    "stability": study,
}
with open(os.path.join(out, f"rank{r}.json"), "w") as f:
    f.write(json.dumps(result))
line = f"DONE {r} {distributed.world_size()} {counts['faithfulness']} {counts['rerank']} {counts['stability']}\n"
os.write(1, line.encode())  # one write() of a short line: the two ranks' lines never interleave
"""


def assert_close_tree(a: Any, b: Any, tol: float = 1e-6, path: str = "") -> None:
    """Equal JSON-like trees, floats within ``tol``."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), path
        for k in b:
            assert_close_tree(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(b, list | tuple):
        assert isinstance(a, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_tree(x, y, tol, f"{path}[{i}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, abs=tol, nan_ok=True), path
    else:
        assert a == b, path


def as_json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def test_faithfulness_rerank_stability_on_two_gloo_ranks_equal_one_process(tiny_ce, tiny_ce_dir, tmp_path):
    col = load_collection("embedded")
    script = tmp_path / "sweeps.py"
    script.write_text(SCRIPT)
    args = [str(script), str(tiny_ce_dir), str(tmp_path), json.dumps(FAITH), json.dumps(STABILITY)]
    done = torchrun(*args, str(RERANK_K))
    assert done.returncode == 0, done.stderr[-4000:]
    lines = sorted(m.group().split() for m in re.finditer(r"DONE(?: \d+)+", done.stdout))
    assert [(int(d[1]), int(d[2])) for d in lines] == [(0, 2), (1, 2)], done.stdout

    # the single-process results, computed here
    pairs = judged_pairs(col, max_relevant_per_query=1, max_nonrelevant_per_query=1)[:4]
    faith = one_thread(faithfulness, tiny_ce, [p.query for p in pairs], [p.doc for p in pairs], **FAITH)
    cands = bm25_candidates(col, k=RERANK_K)
    run = one_thread(rerank, tiny_ce, col, cands, batch_size=4)
    study = one_thread(split_half_stability, tiny_ce, col, **STABILITY)

    # each rank did a part of the work, and no pair twice
    counts = {int(d[1]): [int(x) for x in d[3:]] for d in lines}
    n_faith = len(pairs) * len(FAITH["interventions"])
    n_rerank = sum(len(docs) for docs in cands.values())
    n_stability = sum(h["pairs"] for h in study["halves"])
    for i, total in enumerate((n_faith, n_rerank, n_stability)):
        assert counts[0][i] > 0 and counts[1][i] > 0 and counts[0][i] + counts[1][i] == total, (i, counts)

    for r in (0, 1):  # every rank returns the single-process result
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        want_faith = faith.to_dict() | {
            "drops": {m: v.tolist() for m, v in faith.drops.items()},
            "neurons": faith.neurons.tolist(),
        }
        assert_close_tree(got["faithfulness"], as_json(want_faith), path="faithfulness")
        assert_close_tree(got["rerank"], run, path="rerank")
        assert [list(docs) for docs in got["rerank"].values()] == [list(docs) for docs in run.values()]
        halves = got["stability"].pop("halves")
        want = as_json(study)
        want_halves = want.pop("halves")
        assert_close_tree(got["stability"], want, path="stability")
        for h, w in zip(halves, want_halves, strict=True):
            assert h["pairs_attributed"] == w["pairs"] and h["pairs_resumed"] == 0
            assert {k: h[k] for k in ("queries", "pairs", "set_size")} == {
                k: w[k] for k in ("queries", "pairs", "set_size")
            }
    # the halves' checkpoints: written once each by rank 0, no part, manifest, lock or temporary left
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["half0.ckpt", "half0.ckpt.json", "half1.ckpt", "half1.ckpt.json"], names


@pytest.mark.slow
def test_cli_faithfulness_under_torchrun_equals_one_process(tmp_path, tiny_ce_dir):
    """`torchrun --nproc-per-node 2 -m mechir_nig faithfulness ...` writes (rank 0, once) what the plain
    command writes."""
    from mechir_nig.cli import main

    args = ["faithfulness", "--model", str(tiny_ce_dir), "--collection", "embedded", "--no-progress"]
    args += ["--max-pairs", "4", "--neurons", "3", "--curve-k", "2", "--seeds", "2", "--n-steps", "2"]
    assert one_thread(main, [*args, "--out", str(tmp_path / "one")]) == 0
    done = torchrun("-m", "mechir_nig", *args, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 is silent
    one = json.loads((tmp_path / "one" / "faithfulness.json").read_text())
    two = json.loads((tmp_path / "two" / "faithfulness.json").read_text())
    # the files' own integrity records (kind, version, sha256 over the exact bytes) differ when the values
    # differ within the tolerance; each file's checksum is verified by loading it
    from mechir_nig.experiments.faithfulness import FaithfulnessResult

    for folder in ("one", "two"):
        FaithfulnessResult.load(tmp_path / folder / "faithfulness.json")
    integrity = [d.pop("mechir_nig") for d in (one, two)]
    assert integrity[0]["type"] == integrity[1]["type"] == "FaithfulnessResult"
    assert_close_tree(two, one)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert len(run["history"]) == 1 and run["summary"]["pairs"] == 4
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["faithfulness.json", "run.json"]


def test_split_half_counts_the_pairs_a_sharded_run_left(tmp_path):
    """``pairs_resumed`` of a half whose sharded run stopped: the pairs its parts hold (no ``halfN.ckpt`` yet)."""
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.experiments.collection import _pairs_done
    from mechir_nig.runtime import shards

    ckpt = tmp_path / "half0.ckpt"
    assert _pairs_done(ckpt, 10) == 0
    parts = []
    for r, held in enumerate(([0, 1, 2], [5, 6])):
        path = shards.part_path(ckpt, r, 2, 0)
        stats = CollectionAttribution(layers=[0], n_layers=1, d_mlp=4)
        shards.save_part(stats, path, rank=r, world_size=2, generation=0, held=held, n_pairs=10)
        parts.append({"rank": r, "file": path.name, "carried": 0})
    parts.append({"rank": 2, "file": shards.part_path(ckpt, 2, 3, 0).name, "carried": 0})  # not written yet
    shards.manifest_path(ckpt).write_text(json.dumps({"parts": parts}))
    assert _pairs_done(ckpt, 10) == 5
    shards.manifest_path(ckpt).write_text("{not json")  # attribute_collection refuses it, naming it
    assert _pairs_done(ckpt, 10) == 0
    complete = CollectionAttribution(layers=[0], n_layers=1, d_mlp=4)
    complete.n_done = 10
    complete.save(ckpt)  # a complete result wins over leftovers
    assert _pairs_done(ckpt, 10) == 10
