"""Distributed collection attribution: 2 real gloo ranks under torchrun equal one process; a killed 2-rank
run resumes on 1 rank; sharding by token count; the manifest and parts.

The torchrun tests launch ``python -m torch.distributed.run --nproc-per-node 2`` on a script written to
``tmp_path`` that loads the tiny seeded cross-encoder (saved by the ``tiny_ce_dir`` fixture) and runs
``attribute_collection`` on 10 embedded pairs with a checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import free_port, one_thread, torchrun, torchrun_cmd, torchrun_env

from mechir_nig import CheckpointError, InputError
from mechir_nig.attribution.stats import CollectionAttribution
from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
from mechir_nig.errors import DistributedError
from mechir_nig.experiments.attribute import attribute_collection
from mechir_nig.experiments.pruning import pruning_study
from mechir_nig.runtime import shards
from mechir_nig.runtime.distributed import SINGLE, Context, context, launch_info, shard_by_cost
from mechir_nig.sets import select_top

KW = dict(n_steps=4, batch_size=2, progress=False)

SCRIPT = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
from mechir_nig import HookedCrossEncoder
from mechir_nig.data import bm25_candidates, judged_pairs, load_collection
from mechir_nig.experiments.attribute import attribute_collection
from mechir_nig.experiments.pruning import pruning_study
from mechir_nig.runtime import distributed

model_dir, ckpt, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
ps = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1)
pairs = type(ps)(ps[:10], ps.report)
model = HookedCrossEncoder.from_pretrained(model_dir, device=distributed.local_device())
held = []

def say(line):  # one write() of a short line: atomic on a pipe, so the two ranks' lines never interleave
    os.write(1, (line + "\n").encode())

def on_batch(n):
    held.append(n)
    if pause_at and n >= pause_at:  # after this rank's first checkpoint: wait to be killed
        say(f"PAUSED {distributed.rank()} {os.getpid()}")
        time.sleep(150)  # bounded: the test kills it long before, its watchdog at 120 s

stats = attribute_collection(model, pairs, n_steps=4, batch_size=2, checkpoint=ckpt, checkpoint_every=2,
                             progress=False, on_batch=on_batch)
r = distributed.rank()
out = os.path.dirname(ckpt)
stats.save(os.path.join(out, f"returned{r}.safetensors"))
from mechir_nig.data import bm25_candidates
from mechir_nig.experiments.pruning import pruning_study
col = load_collection("embedded")
study = pruning_study(model, col, bm25_candidates(col, k=5), stats, fractions=(0.05,), seeds=2, modes=("zero",),
                      progress=False)  # its 6 evaluations sharded over the 2 ranks, gathered on each
with open(os.path.join(out, f"pruning{r}.json"), "w") as f:
    f.write(json.dumps({"runs": study.runs, "per_query": study.per_query, "sets": study.sets}))
say(f"DONE {r} {distributed.world_size()} {held[-1] if held else 0}")
"""


def make_pairs():
    ps = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1)
    return type(ps)(ps[:10], ps.report)


@pytest.fixture(scope="module")
def pairs():
    return make_pairs()


@pytest.fixture(scope="module")
def single(tiny_ce, pairs):
    """The single-process result (one thread, as in the ranks: the float32 NIG then agrees bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return attribute_collection(tiny_ce, pairs, **KW)
    finally:
        torch.set_num_threads(threads)


def assert_same(a: CollectionAttribution, b: CollectionAttribution) -> None:
    assert a.counts == b.counts and a.n_done == b.n_done  # no pair lost or counted twice
    for label in ("relevant", "nonrelevant"):
        for table in ("sums", "sums_sq", "sums_abs"):
            torch.testing.assert_close(getattr(a, table)[label], getattr(b, table)[label], rtol=0, atol=1e-6)
    for scheme in ("relevant", "nonrelevant", "difference", "mean_abs"):
        for k in (5, 20):
            top_a = select_top(a.scheme_scores(scheme), k=k, layers=a.layers)
            top_b = select_top(b.scheme_scores(scheme), k=k, layers=b.layers)
            assert sorted(top_a) == sorted(top_b), (scheme, k)


class Launch:
    """``torchrun --nproc-per-node 2`` on SCRIPT, its stdout read line by line."""

    def __init__(self, tmp_path: Path, model_dir: Path, ckpt: Path, pause_at: int = 0) -> None:
        script = tmp_path / "attribute_script.py"
        script.write_text(SCRIPT)
        self.err_path = tmp_path / "torchrun.stderr"
        self._err = self.err_path.open("w")
        cmd = torchrun_cmd(str(script), str(model_dir), str(ckpt), str(pause_at))
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=torchrun_env(),
            start_new_session=True,
        )
        self.watchdog = threading.Timer(120, self.kill_all)  # never hang the suite
        self.watchdog.start()
        self.worker_pids: list[int] = []

    def lines(self, prefix: str, n: int) -> list[list[str]]:
        assert self.proc.stdout is not None
        found: list[list[str]] = []
        pattern = re.compile(rf"{prefix}(?: \d+)+")  # whole records, even if a stray write split a line
        for line in self.proc.stdout:
            for match in pattern.finditer(line):
                found.append(match.group().split())
                if len(found) == n:
                    return found
        self.proc.wait()
        raise AssertionError(
            f"torchrun ended without {n} {prefix!r} lines: {self.err_path.read_text()[-4000:]}"
        )

    def kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self.worker_pids:  # torchrun starts each worker in its own session
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        self.watchdog.cancel()
        self.proc.wait(timeout=60)
        self._err.close()


def test_two_gloo_ranks_equal_one_process(tiny_ce, tiny_ce_dir, single, tmp_path):
    ckpt = tmp_path / "nig.safetensors"
    run = Launch(tmp_path, tiny_ce_dir, ckpt)
    try:
        done = run.lines("DONE", 2)
    finally:
        run.close()
    assert run.proc.returncode == 0, run.err_path.read_text()[-4000:]
    assert sorted(int(d[1]) for d in done) == [0, 1] and {d[2] for d in done} == {"2"}
    held = {int(d[1]): int(d[3]) for d in done}
    assert held[0] > 0 and held[1] > 0 and held[0] + held[1] == 10  # both ranks worked, no pair twice
    result = CollectionAttribution.load(ckpt)  # written by rank 0
    assert_same(result, single)
    assert result.meta["distributed"] == {"world_size": 2, "generation": 0}
    for r in (0, 1):  # every rank returns the all-reduced statistics
        assert_same(CollectionAttribution.load(tmp_path / f"returned{r}.safetensors"), single)
    names = {p.name for p in tmp_path.iterdir()}
    assert not [n for n in names if n.endswith((".lock", ".tmp")) or ".rank" in n or "manifest" in n], names
    # the pruning study of the same script: its evaluations sharded over the ranks, gathered on each
    col = load_collection("embedded")
    want = one_thread(
        pruning_study,
        tiny_ce,
        col,
        bm25_candidates(col, k=5),
        single,
        fractions=(0.05,),
        seeds=2,
        modes=("zero",),
        progress=False,
    )
    for r in (0, 1):
        got = json.loads((tmp_path / f"pruning{r}.json").read_text())
        assert_close_tree(got["sets"], json.loads(json.dumps(want.sets)), tol=1e-6)  # same neurons
        assert_close_tree(got["runs"], want.runs)
        assert_close_tree(got["per_query"], want.per_query)


def assert_close_tree(a, b, tol: float = 1e-9) -> None:
    """Equal JSON-like trees, floats within ``tol``."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b)
        for k in b:
            assert_close_tree(a[k], b[k], tol)
    elif isinstance(b, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close_tree(x, y, tol)
    elif isinstance(b, float):
        assert a == pytest.approx(b, abs=tol)
    else:
        assert a == b


def _subreaper(on: bool) -> None:
    """Make this process the reaper of orphaned descendants (Linux), so killed ranks can be waited for."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL of a torchrun job, Linux semantics")
def test_killed_two_rank_run_resumes_on_one_rank(tiny_ce, tiny_ce_dir, pairs, single, tmp_path):
    ckpt = tmp_path / "nig.safetensors"
    _subreaper(True)
    try:
        run = Launch(tmp_path, tiny_ce_dir, ckpt, pause_at=2)
        try:
            paused = run.lines("PAUSED", 2)  # both ranks wrote their first part (2 pairs each)
            run.worker_pids = [int(p[2]) for p in paused]
            parts = sorted(p.name for p in tmp_path.glob("nig.safetensors.rank*"))
            assert parts == [
                "nig.safetensors.rank0of2.g0.safetensors",
                "nig.safetensors.rank0of2.g0.safetensors.json",
                "nig.safetensors.rank1of2.g0.safetensors",
                "nig.safetensors.rank1of2.g0.safetensors.json",
            ]
        finally:
            run.kill_all()  # SIGKILL: the torchrun agent's process group and each rank's
            run.close()
            for pid in run.worker_pids:  # reparented to this process once torchrun died: reap them
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
    finally:
        _subreaper(False)
    assert (tmp_path / "nig.safetensors.lock").exists() and not ckpt.exists()
    manifest = shards.read_manifest(shards.manifest_path(ckpt), 10)
    assert manifest["world_size"] == 2 and manifest["generation"] == 0
    seen: list[int] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one plain process: the 4 pairs the two parts hold are merged and skipped, 6 are attributed
        resumed = attribute_collection(
            tiny_ce, pairs, checkpoint=ckpt, checkpoint_every=2, resume=True, on_batch=seen.append, **KW
        )
    finally:
        torch.set_num_threads(threads)
    assert seen == [6, 8, 10]
    assert_same(resumed, single)
    assert_same(CollectionAttribution.load(ckpt), single)
    names = {p.name for p in tmp_path.iterdir()}
    assert not [n for n in names if n.endswith((".lock", ".tmp")) or ".rank" in n or "manifest" in n], names


# -- in one process -------------------------------------------------------------------------------------


def test_shard_by_cost_is_balanced_deterministic_and_complete():
    g = torch.Generator().manual_seed(0)
    costs = torch.randint(10, 512, (200,), generator=g).tolist()
    for w in (1, 2, 3, 8):
        parts = shard_by_cost(costs, w)
        assert parts == shard_by_cost(costs, w)  # every rank computes the same assignment
        assert sorted(i for p in parts for i in p) == list(range(200))
        loads = [sum(costs[i] for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(costs)  # balanced by cost, not by count
        for p in parts:  # longest first within a rank
            assert [costs[i] for i in p] == sorted((costs[i] for i in p), reverse=True)
    assert shard_by_cost([100, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]  # by tokens, not pair count
    assert shard_by_cost([], 3) == [[], [], []]
    with pytest.raises(InputError, match="world_size"):
        shard_by_cost([1], 0)
    with pytest.raises(InputError, match="costs"):
        shard_by_cost([1, -1], 2)


class FakeRank(Context):
    """A rank of a fake world of threads: ``all_gather`` through a shared table and a barrier (the
    collectives ``agree``, ``collective`` and ``map`` use only ``all_gather``)."""

    def __init__(self, rank: int, world_size: int, table: list, barrier: threading.Barrier) -> None:
        super().__init__(rank=rank, world_size=world_size, grouped=True)
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "sync", barrier)

    def all_gather(self, obj):
        self.table[self.rank] = obj
        self.sync.wait()
        out = list(self.table)
        self.sync.wait()  # nobody overwrites the table before every rank has read it
        return out


def fake_world(world_size: int, body):
    """``body(ctx)`` on ``world_size`` fake ranks (threads); every rank's return value or exception."""
    table, barrier = [None] * world_size, threading.Barrier(world_size, timeout=30)
    got: list = [None] * world_size

    def run(r):
        try:
            got[r] = body(FakeRank(r, world_size, table, barrier))
        except Exception as exc:  # noqa: BLE001 - returned to the test
            got[r] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_context_map_restores_order_and_shards_by_cost():
    items = [f"item{i}" for i in range(7)]
    costs = [5, 1, 4, 2, 3, 9, 1]
    calls: list = []

    def fn(share):
        calls.append(list(share))
        return [x.upper() for x in share]

    # one process: fn once on every item, in input order
    assert SINGLE.map(items, fn, cost=costs, what="testing") == [x.upper() for x in items]
    assert calls == [items]
    assert SINGLE.map([], fn, what="testing") == [] and len(calls) == 1  # no work: fn is not called

    # a fake world of 3 ranks: each rank gets its cost shard (in input order), every rank every result
    calls.clear()
    for r, got in enumerate(fake_world(3, lambda ctx: ctx.map(items, fn, cost=costs, what="testing"))):
        assert got == [x.upper() for x in items], r
    want = [sorted(p) for p in shard_by_cost(costs, 3)]
    assert sorted(calls) == sorted([[items[i] for i in p] for p in want])

    # ranks given other items are refused on every rank; a failing rank fails every rank
    got = fake_world(2, lambda ctx: ctx.map(items[ctx.rank :], fn, what="testing"))
    assert all(isinstance(e, DistributedError) and "other inputs than rank 0" in str(e) for e in got), got

    def failing(ctx):
        def fn(share):
            if ctx.rank == 1:
                raise InputError("injected")
            return share

        return ctx.map(items, fn, what="testing")

    got = fake_world(2, failing)
    assert [type(e) for e in got] == [InputError, InputError]
    assert str(got[0]) == "rank 1 failed while testing: injected" and str(got[1]) == "injected"
    with pytest.raises(InputError, match="2 results for 3 items"):
        SINGLE.map([1, 2, 3], lambda share: share[:2], what="testing")
    with pytest.raises(InputError, match="one cost per item"):
        SINGLE.map([1, 2, 3], fn, cost=[1], what="testing")


def test_launch_detection_and_single_process_context(monkeypatch):
    assert launch_info({}) is None
    info = launch_info(
        {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    )
    assert (info.rank, info.world_size, info.local_rank, info.master) == (1, 4, 1, "h:1")
    with pytest.raises(DistributedError, match="WORLD_SIZE not set"):
        launch_info({"RANK": "0"})
    with pytest.raises(DistributedError, match="inconsistent"):
        launch_info({"RANK": "2", "WORLD_SIZE": "2"})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert context("auto") is SINGLE and context(False) is SINGLE
    with pytest.raises(DistributedError, match="torchrun"):
        context(True)
    with pytest.raises(InputError, match="distributed must be"):
        context("yes")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert context("auto") is SINGLE  # a launch of one process is the single-process run


def test_positions_bitmap_roundtrip():
    for n in (1, 7, 8, 9, 1000):
        pos = list(range(0, n, 3))
        assert shards.decode_positions(shards.encode_positions(pos, n), n) == pos
    with pytest.raises(ValueError):
        shards.decode_positions(shards.encode_positions([1], 9), 20)


@pytest.fixture
def group_of_one(monkeypatch):
    """A real gloo process group of one rank in this process (what ``torchrun --nproc-per-node 1``
    gives), destroyed afterwards."""
    import torch.distributed as dist

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class Stop(Exception):
    pass


def stop_at(k):
    def on_batch(n):
        if n >= k:
            raise Stop

    return on_batch


def test_single_process_checkpoint_continues_as_a_sharded_run(tiny_ce, pairs, single, tmp_path, group_of_one):
    ckpt = tmp_path / "nig.safetensors"
    with pytest.raises(Stop):
        attribute_collection(tiny_ce, pairs, checkpoint=ckpt, checkpoint_every=2, on_batch=stop_at(4), **KW)
    assert CollectionAttribution.load(ckpt).n_done == 4 and not shards.manifest_path(ckpt).exists()
    seen: list[int] = []  # distributed=True: the sharded path on a group of one (gloo collectives)
    resumed = one_thread(
        attribute_collection,
        tiny_ce,
        pairs,
        checkpoint=ckpt,
        resume=True,
        on_batch=seen.append,
        distributed=True,
        **KW,
    )
    assert seen == [6, 8, 10]  # the single-process checkpoint's 4 pairs were carried, not redone
    assert_same(resumed, single)
    assert CollectionAttribution.load(ckpt).meta["distributed"] == {"world_size": 1, "generation": 0}
    assert not shards.manifest_path(ckpt).exists() and not list(tmp_path.glob("*.rank*"))


def test_sharded_resume_refuses_other_pairs_and_bad_parts(tiny_ce, pairs, tmp_path, group_of_one):
    ckpt = tmp_path / "nig.safetensors"
    with pytest.raises(Stop):  # a sharded run of one rank stopped after its first part (2 pairs)
        attribute_collection(
            tiny_ce, pairs, checkpoint=ckpt, checkpoint_every=2, on_batch=stop_at(2), distributed=True, **KW
        )
    assert shards.part_path(ckpt, 0, 1, 0).exists() and shards.manifest_path(ckpt).exists()
    assert not ckpt.exists()
    # plain single-process calls from here: the manifest sends them down the sharded path
    with pytest.raises(InputError, match=r"manifest\.json .*exists; pass resume=True"):
        attribute_collection(tiny_ce, pairs, checkpoint=ckpt, **KW)
    with pytest.raises(InputError, match="other pairs or settings"):
        attribute_collection(tiny_ce, pairs[:6], checkpoint=ckpt, resume=True, **KW)
    with pytest.raises(Stop):  # resumed: generation 1, its part carries the 2 pairs, stopped at 4
        attribute_collection(
            tiny_ce, pairs, checkpoint=ckpt, checkpoint_every=2, resume=True, on_batch=stop_at(4), **KW
        )
    part = shards.part_path(ckpt, 0, 1, 1)
    assert not shards.part_path(ckpt, 0, 1, 0).exists()  # folded into generation 1, then removed
    manifest = shards.read_manifest(shards.manifest_path(ckpt), 10)
    assert manifest["generation"] == 1 and manifest["parts"][0]["carried"] == 2
    assert CollectionAttribution.load(part).n_done == 4
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"rank0of1\.g1\.safetensors.*truncated or corrupt"):
        attribute_collection(tiny_ce, pairs, checkpoint=ckpt, resume=True, **KW)
    part.unlink()
    with pytest.raises(CheckpointError, match=r"rank0of1\.g1\.safetensors.*is missing; it held 2 pairs"):
        attribute_collection(tiny_ce, pairs, checkpoint=ckpt, resume=True, **KW)
    assert not (tmp_path / "nig.safetensors.lock").exists()  # released on every error


@pytest.mark.slow
def test_cli_attribute_under_torchrun_equals_one_process(tmp_path, tiny_ce_dir):
    """`torchrun --nproc-per-node 2 -m mechir_nig attribute ...` writes (rank 0) what the plain command writes."""
    from mechir_nig.cli import main

    args = ["--model", str(tiny_ce_dir), "--collection", "embedded", "--queries", "all", "--no-progress"]
    args += ["--max-relevant", "1", "--max-nonrelevant", "1", "--n-steps", "2", "--batch-size", "2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["attribute", *args, "--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    done = torchrun("-m", "mechir_nig", "attribute", *args, "--out", str(tmp_path / "two"), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 is silent
    one = CollectionAttribution.load(tmp_path / "one" / "attribution.safetensors")
    two = CollectionAttribution.load(tmp_path / "two" / "attribution.safetensors")
    assert_same(one, two)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert len(run["history"]) == 1 and run["summary"]["n_pairs"] == one.n_done
    assert not list((tmp_path / "two").glob("*.rank*")) and not list((tmp_path / "two").glob("*.lock"))


def test_remove_run_clears_result_manifest_and_parts_only(tmp_path):
    """Starting again (`attribute --overwrite`) removes every file of the old run and nothing else."""
    ckpt = tmp_path / "attribution.safetensors"
    old = [ckpt, tmp_path / "attribution.safetensors.json", shards.manifest_path(ckpt)]
    for r in range(2):
        part = shards.part_path(ckpt, r, 2, 1)
        old += [part, part.with_name(part.name + ".json")]
    keep = [
        tmp_path / "pruning.json",
        tmp_path / "attribution.safetensors.rank0.notes",
        tmp_path / "other.safetensors",
    ]
    for f in old + keep:
        f.write_text("x")
    shards.remove_run(ckpt)
    assert [f for f in old if f.exists()] == []
    assert all(f.exists() for f in keep)
