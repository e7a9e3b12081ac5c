"""Patching sweeps sharded over 2 real gloo ranks under torchrun equal one process.

``patch_study(..., distributed="auto")`` (``mechir_nig.experiments.patching``) shards the aligned pairs across the ranks by cost (span squared), each
rank sweeps its pairs and every rank assembles the whole result in the original pair order. The script
below runs in each rank; the test compares what every rank returns, and what ``torchrun -m mechir_nig
patch`` writes, with the single-process results.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from conftest import one_thread, torchrun

from mechir_nig.interventions.patching import PatchingResult, patch
from mechir_nig.runtime.distributed import shard_by_cost

SCRIPT = r"""
import os, sys
import torch
torch.set_num_threads(1)
from mechir_nig import HookedBiEncoder, HookedCrossEncoder
from mechir_nig.experiments.patching import patch_study
from mechir_nig.interventions import patching
from mechir_nig.runtime import distributed
sys.path.insert(0, os.path.dirname(__file__))
from patch_inputs import aligned, head_set, neuron_set

model_dir, out = sys.argv[1], sys.argv[2]
swept = []
real = patching._sweep

def counted(model, base, source, q_emb, **kw):
    swept.append(len(base))
    return real(model, base, source, q_emb, **kw)

patching._sweep = counted
ce = HookedCrossEncoder.from_pretrained(model_dir)
res = patch_study(ce, aligned(ce), sites=["resid_pre", neuron_set(ce), "heads", "head_pos"], joint=True)
r = distributed.rank()  # the process group exists from the first sharded call on
assert r == int(os.environ["RANK"])
res.save(os.path.join(out, f"ce{r}.safetensors"))
res = patch_study(ce, aligned(ce), sites=[head_set(ce)], joint=True)  # a head set: members and jointly
res.save(os.path.join(out, f"hs{r}.safetensors"))
be = HookedBiEncoder.from_pretrained(model_dir, ignore_head=True)
res = patch_study(be, aligned(be), sites=["mlp_out", "neurons"], direction="noise", metric="raw")
res.save(os.path.join(out, f"be{r}.safetensors"))
os.write(1, f"SWEPT {r} {distributed.world_size()} {' '.join(map(str, swept))}\n".encode())
"""

INPUTS = r'''
"""The aligned inputs both the ranks and the test build (pairs of different spans; injections at the
start, middle and end)."""
from mechir_nig.data import bm25_candidates, load_collection
from mechir_nig.interventions import perturb
from mechir_nig.sets import ComponentSet, NeuronSet

WHERE = ("start", "middle", "end")


def pairs():
    col = load_collection("embedded")
    run = bm25_candidates(col, k=2)
    out = []
    for qid in sorted(run)[:5]:
        for did in list(run[qid])[:1]:
            out.append((col.queries[qid], col.docs[did]))
    return out


def aligned(model):
    ps = pairs()
    edits = [perturb.tfc1(q, d, where=WHERE[i % 3]) for i, (q, d) in enumerate(ps)]
    return perturb.align(model, [q for q, _ in ps], [d for _, d in ps], edits)


def neuron_set(model):
    d = model.cfg.d_mlp
    return NeuronSet([(0, 1), (0, d - 1), (1, 3)], n_layers=model.cfg.n_layers, d_mlp=d)


def head_set(model):
    return ComponentSet([(0, 1), (1, 0)], kind="head", n_layers=model.cfg.n_layers, width=model.cfg.n_heads)
'''


def _inputs(tmp_path: Path):
    (tmp_path / "patch_inputs.py").write_text(INPUTS)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import patch_inputs

        return importlib.reload(patch_inputs)
    finally:
        sys.path.remove(str(tmp_path))


def assert_same(a: PatchingResult, b: PatchingResult, atol: float = 1e-6) -> None:
    assert list(a.values) == list(b.values) and list(a.patched) == list(b.patched)  # same sites, same order
    for site in b.values:
        assert a.values[site].shape == b.values[site].shape, site
        torch.testing.assert_close(a.patched[site], b.patched[site], rtol=0, atol=atol, equal_nan=True)
        va, vb = a.values[site], b.values[site]
        if b.metric == "recovery":  # (patched - base) / (source - base): compare in score units (a pair
            # whose perturbation moves the score by 1e-3 turns float32 rounding of 1e-7 into 1e-4 recovery)
            shape = (-1, *[1] * (vb.dim() - 1))
            va = va * (a.source_scores - a.base_scores).reshape(shape)
            vb = vb * (b.source_scores - b.base_scores).reshape(shape)
        torch.testing.assert_close(va, vb, rtol=0, atol=2 * atol, equal_nan=True)
    torch.testing.assert_close(a.clean_scores, b.clean_scores, rtol=0, atol=atol)
    torch.testing.assert_close(a.corrupted_scores, b.corrupted_scores, rtol=0, atol=atol)
    assert a.layers == b.layers and a.members == b.members


def test_two_gloo_ranks_patch_like_one_process(tiny_ce, tiny_ce_dir, tmp_path):
    from mechir_nig import HookedBiEncoder

    inputs = _inputs(tmp_path)
    (tmp_path / "patch_script.py").write_text(SCRIPT)
    done = torchrun(str(tmp_path / "patch_script.py"), str(tiny_ce_dir), str(tmp_path), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    swept = {
        int(m[1]): (int(m[2]), [int(x) for x in m[3].split()])
        for m in re.finditer(r"SWEPT (\d) (\d) ([\d ]+)", done.stdout)
    }
    assert sorted(swept) == [0, 1] and {w for w, _ in swept.values()} == {2}, done.stdout
    al = inputs.aligned(tiny_ce)
    spans = al.perturbed.lengths.double() ** 2
    shards = shard_by_cost(spans.tolist(), 2)
    # each rank swept its own pairs (cross-encoder call, then bi-encoder call), no pair twice
    assert [swept[r][1][0] for r in (0, 1)] == [len(s) for s in shards] and all(len(s) for s in shards)
    assert sum(swept[0][1]) + sum(swept[1][1]) == 3 * len(al.clean)
    want = one_thread(
        patch,
        tiny_ce,
        al,
        sites=["resid_pre", inputs.neuron_set(tiny_ce), "heads", "head_pos"],
        joint=True,
    )
    want_hs = one_thread(patch, tiny_ce, al, sites=[inputs.head_set(tiny_ce)], joint=True)
    be = HookedBiEncoder.from_pretrained(tiny_ce_dir, ignore_head=True)
    want_be = one_thread(
        patch, be, inputs.aligned(be), sites=["mlp_out", "neurons"], direction="noise", metric="raw"
    )
    assert torch.isfinite(want.values["resid_pre"]).any() and (want.values["heads"].nan_to_num() != 0).any()
    for r in (0, 1):  # every rank returns the whole result
        assert_same(PatchingResult.load(tmp_path / f"ce{r}.safetensors"), want)
        assert_same(PatchingResult.load(tmp_path / f"hs{r}.safetensors"), want_hs)
        assert_same(PatchingResult.load(tmp_path / f"be{r}.safetensors"), want_be)


MISMATCH = r"""
import os, sys
import torch
torch.set_num_threads(1)
from mechir_nig import HookedCrossEncoder
from mechir_nig.data import bm25_candidates, load_collection
from mechir_nig.errors import DistributedError
from mechir_nig.experiments.collection import rerank_sharded
from mechir_nig.experiments.patching import patch_study
from mechir_nig.interventions import perturb
from mechir_nig.runtime import distributed

r = int(os.environ["RANK"])
ce = HookedCrossEncoder.from_pretrained(sys.argv[1])
q, d = ["what is a neuron", "how do rivers form"], ["a neuron is a cell", "rivers form from rain"]
al = perturb.align(ce, q[r:], d[r:], [perturb.tfc1(a, b) for a, b in zip(q[r:], d[r:])])  # rank 1: fewer pairs
col = load_collection("embedded")
cands = bm25_candidates(col, k=2 + r)  # rank 1: deeper candidates
for name, call in (("patch", lambda: patch_study(ce, al)), ("rerank", lambda: rerank_sharded(ce, col, cands))):
    try:
        call()
        os.write(1, f"RAN {name} {r}\n".encode())
    except DistributedError as exc:
        os.write(1, f"REFUSED {name} {r} {'other inputs than rank 0' in str(exc)}\n".encode())
"""


def test_ranks_given_different_inputs_are_refused_on_every_rank(tiny_ce_dir, tmp_path):
    """A sharded call fills each rank's result with the other ranks' parts by position: ranks given other
    pairs (e.g. a call inside a user's own per-rank loop) must fail on every rank, not mix or hang."""
    (tmp_path / "mismatch.py").write_text(MISMATCH)
    done = torchrun(str(tmp_path / "mismatch.py"), str(tiny_ce_dir), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = sorted(re.findall(r"(?:RAN|REFUSED) \w+ \d(?: \w+)?", done.stdout))
    assert lines == [f"REFUSED {n} {r} True" for n in ("patch", "rerank") for r in (0, 1)], done.stdout


FAILING = r"""
import os, sys
import torch
torch.set_num_threads(1)
from mechir_nig import HookedCrossEncoder
from mechir_nig.errors import InputError
from mechir_nig.experiments.patching import patch_study
from mechir_nig.interventions import patching, perturb

r = int(os.environ["RANK"])
real = patching._sweep

def sweep(*args, **kw):  # rank 1 fails in the middle of its share (e.g. out of memory on its GPU)
    if r == 1:
        raise InputError("injected failure on this rank")
    return real(*args, **kw)

patching._sweep = sweep
ce = HookedCrossEncoder.from_pretrained(sys.argv[1])
q, d = ["what is a neuron", "how do rivers form"], ["a neuron is a cell", "rivers form from rain"]
try:
    patch_study(ce, perturb.align(ce, q, d, [perturb.tfc1(a, b) for a, b in zip(q, d)]))
    os.write(1, f"RAN {r}\n".encode())
except InputError as exc:
    os.write(1, f"FAILED {r} {str(exc).replace(chr(10), ' ')}\n".encode())
"""


def test_a_rank_failing_inside_patch_fails_every_rank(tiny_ce_dir, tmp_path):
    """One rank's error inside its share reaches every rank (same error class, naming the rank) instead
    of leaving the others waiting in the gather."""
    (tmp_path / "failing.py").write_text(FAILING)
    done = torchrun(str(tmp_path / "failing.py"), str(tiny_ce_dir), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = sorted(re.findall(r"(?:RAN|FAILED) \d.*", done.stdout))
    assert len(lines) == 2, done.stdout
    assert lines[0] == "FAILED 0 rank 1 failed while patching: injected failure on this rank"
    assert lines[1] == "FAILED 1 injected failure on this rank"


def test_cli_patch_under_torchrun_equals_one_process(tmp_path, tiny_ce_dir):
    """`torchrun --nproc-per-node 2 -m mechir_nig patch ...` writes (rank 0, once) what the plain command writes."""
    from mechir_nig.cli import main

    args = ["--model", str(tiny_ce_dir), "--collection", "embedded", "--no-progress", "--pairs", "bm25"]
    args += ["--max-pairs", "3", "--sites", "resid_pre,heads", "--where", "middle"]
    assert one_thread(main, ["patch", *args, "--out", str(tmp_path / "one")]) == 0
    done = torchrun("-m", "mechir_nig", "patch", *args, "--out", str(tmp_path / "two"), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 is silent
    one = PatchingResult.load(tmp_path / "one" / "patching.safetensors")
    two = PatchingResult.load(tmp_path / "two" / "patching.safetensors")
    assert len(one.clean_scores) == 3
    assert_same(two, one)
    assert one.meta["pairs"] == two.meta["pairs"]


def test_assembly_pads_a_ranks_shorter_rows_with_the_base_score(tiny_ce, tmp_path):
    """The merge used across ranks, in one process: sweeping the pairs in two cost shards (each trimmed
    to its own longest pair) and assembling them gives the one-sweep result."""
    from mechir_nig.interventions import patching

    inputs = _inputs(tmp_path)
    al = inputs.aligned(tiny_ce)
    base, source = al.perturbed, al.clean
    assert len(set(base.lengths.tolist())) > 1  # spans differ: a shard is trimmed shorter than the batch
    sites = patching._check_sites(tiny_ce, ["resid_pre", "head_pos", inputs.neuron_set(tiny_ce)])
    layers = list(range(tiny_ce.cfg.n_layers))
    members, member_idx = patching._members(tiny_ce, sites, layers)
    kw = dict(site_list=sites, layer_list=layers, member_idx=member_idx, chunk_size=None)
    kw |= dict(skip_unchanged=True, joint=True)
    whole = patching._sweep(tiny_ce, base, source, None, **kw)
    parts, widths = [], []
    for idx in shard_by_cost((base.lengths.double() ** 2).tolist(), 2):
        idx = sorted(idx)
        n_pos = int(torch.maximum(base.lengths, source.lengths)[idx].max())
        widths.append(n_pos)
        parts.append(
            (idx, patching._sweep(tiny_ce, base.select(idx, n_pos), source.select(idx, n_pos), None, **kw))
        )
    assert min(widths) < base.input_ids.shape[1]  # one shard is narrower than the batch: padded back
    parts.append(([], None))  # a rank with no pair
    got = patching._assemble(parts, sites, tiny_ce.cfg, len(base), len(layers), base, len(members))
    for a, b in zip(got[:2], whole[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert list(got[2]) == list(whole[2]) == ["resid_pre", "head_pos", "neuron_set", "neuron_set_joint"]
    for key in whole[2]:
        torch.testing.assert_close(got[2][key], whole[2][key], rtol=0, atol=1e-6)
