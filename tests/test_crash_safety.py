"""Crash safety of collection attribution: real SIGKILLs, corrupt/foreign checkpoints, the output lock.

A child process (``python -c CHILD``) attributes the embedded pairs with a checkpoint and pauses at a
chosen moment, printing a marker line; the test waits for the marker, checks that a second writer is
refused while the child is alive, kills the child with SIGKILL, resumes in-process and compares the
statistics with an uninterrupted run.
"""

from __future__ import annotations

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

from mechir_nig import CheckpointError, CheckpointLockedError, InputError
from mechir_nig._io import OutputLock
from mechir_nig.attribution.stats import CollectionAttribution
from mechir_nig.data import judged_pairs, load_collection
from mechir_nig.experiments.attribute import attribute_collection

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork semantics are POSIX")

KW = dict(n_steps=4, batch_size=2, progress=False)
EVERY = 4  # 10 pairs, 2 per batch: checkpoints at 4, 8 and 10 pairs


def make_pairs():
    ps = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1)
    return type(ps)(ps[:10], ps.report)


CHILD = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
import mechir_nig._io as io
from mechir_nig import HookedCrossEncoder
from mechir_nig.data import judged_pairs, load_collection
from mechir_nig.experiments.attribute import attribute_collection

model_dir, ckpt, mode, stop_at, every = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
say = lambda msg: print(msg, flush=True)
ps = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1)
pairs = type(ps)(ps[:10], ps.report)
model = HookedCrossEncoder.from_pretrained(model_dir)

if mode == "in_write":  # the checkpoint at stop_at pairs: its temp file half-written, never renamed
    real_commit, state = io._commit, {}

    def commit(tmp, target):
        if target.name == os.path.basename(ckpt) and state.get("n") == stop_at:
            data = tmp.read_bytes()
            tmp.write_bytes(data[: len(data) // 2])
            say(f"PAUSED {tmp}")
            time.sleep(300)
        real_commit(tmp, target)

    io._commit = commit

def on_batch(n):
    if mode != "in_write" and n == stop_at:
        say(f"PAUSED {n}")
        time.sleep(300)

import mechir_nig.attribution.stats as st
real_save = st.CollectionAttribution.save
def save(self, path):
    state["n"] = self.n_done
    return real_save(self, path)
if mode == "in_write":
    st.CollectionAttribution.save = save

say("STARTED")
attribute_collection(model, pairs, n_steps=4, batch_size=2, checkpoint=ckpt, checkpoint_every=every,
                     progress=False, on_batch=on_batch)
say("DONE")
"""


class Child:
    """A collection attribution in a real subprocess, paused at a marker."""

    def __init__(self, model_dir: Path, ckpt: Path, mode: str, stop_at: int, every: int = EVERY) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
        self.err = ckpt.with_name("child.stderr")
        self._err = self.err.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(model_dir), str(ckpt), mode, str(stop_at), str(every)],
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            env=env,
        )
        self.watchdog = threading.Timer(90, self.proc.kill)  # never hang the suite
        self.watchdog.start()

    def wait_for(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line.strip()
        self.proc.wait()
        raise AssertionError(f"child ended without {prefix!r}: {self.err.read_text()[-3000:]}")

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL
        self.watchdog.cancel()
        self._err.close()


@pytest.fixture(scope="module")
def pairs():
    return make_pairs()


@pytest.fixture(scope="module")
def full(tiny_ce, pairs):
    return attribute_collection(tiny_ce, pairs, **KW)


def assert_same_statistics(a: CollectionAttribution, b: CollectionAttribution) -> None:
    assert a.counts == b.counts and a.n_done == b.n_done  # no pair lost or counted twice
    for label in ("relevant", "nonrelevant"):
        for table in ("sums", "sums_sq", "sums_abs"):
            # float32 NIG of one pair may differ in the last bit between processes (thread counts);
            # a pair lost or counted twice moves a sum by a whole pair's NIG
            torch.testing.assert_close(
                getattr(a, table)[label], getattr(b, table)[label], rtol=1e-5, atol=1e-6
            )


def leftovers(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.parent.iterdir() if p.name.endswith((".tmp", ".lock", ".stale")))


@pytest.mark.parametrize(
    "moment,mode,stop_at,n_checkpointed",
    [
        ("before the first checkpoint", "after_batch", 2, None),
        ("during a checkpoint write", "in_write", 8, 4),
        ("after a checkpoint", "after_batch", 4, 4),
    ],
)
def test_sigkill_then_resume_equals_uninterrupted(
    tiny_ce, tiny_ce_dir, pairs, full, tmp_path, moment, mode, stop_at, n_checkpointed
):
    ckpt = tmp_path / "nig.safetensors"
    child = Child(tiny_ce_dir, ckpt, mode, stop_at)
    try:
        marker = child.wait_for("PAUSED")
        # while the child is alive a second writer of the same output is refused, before any work
        with pytest.raises(
            CheckpointLockedError, match=rf"process {child.proc.pid} on .*delete .*nig\.safetensors\.lock"
        ):
            attribute_collection(tiny_ce, pairs, checkpoint=ckpt, resume=True, **KW)
    finally:
        child.sigkill()
    assert (tmp_path / "nig.safetensors.lock").exists()  # left behind by the killed child
    if mode == "in_write":
        assert Path(marker.split()[1]).exists()  # the half-written temp file of the killed write
    if n_checkpointed is None:
        assert not ckpt.exists()
    else:
        assert CollectionAttribution.load(ckpt).n_done == n_checkpointed  # the last complete checkpoint
    seen: list[int] = []
    resumed = attribute_collection(
        tiny_ce, pairs, checkpoint=ckpt, checkpoint_every=EVERY, resume=True, on_batch=seen.append, **KW
    )
    assert seen[0] == (n_checkpointed or 0) + 2  # continued right after the last checkpoint
    assert_same_statistics(resumed, full)
    assert_same_statistics(CollectionAttribution.load(ckpt), full)
    assert leftovers(ckpt) == []  # stale lock taken over and released, dead writer's temp file removed


# -- defect 1: an unwritable checkpoint fails before any work ------------------------------------------


@pytest.fixture
def no_nig(monkeypatch):
    import mechir_nig.attribution.nig as nig

    def fail(*args, **kwargs):
        raise AssertionError("NIG ran before the checkpoint path was checked")

    monkeypatch.setattr(nig, "neuron_integrated_gradients", fail)


def test_checkpoint_under_a_file_fails_before_any_work(tiny_ce, pairs, tmp_path, no_nig):
    (tmp_path / "file").write_text("not a folder")
    ckpt = tmp_path / "file" / "sub" / "out.safetensors"
    with pytest.raises(
        CheckpointError, match=r"cannot write the checkpoint .*file/sub/out\.safetensors.*writable"
    ):
        attribute_collection(tiny_ce, pairs, checkpoint=ckpt, **KW)


def test_checkpoint_that_is_a_folder_fails_before_any_work(tiny_ce, pairs, tmp_path, no_nig):
    with pytest.raises(CheckpointError, match=r"is a folder; pass a file path"):
        attribute_collection(tiny_ce, pairs, checkpoint=tmp_path, **KW)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root writes into a 0o500 folder; the path-under-a-file test covers the unwritable path",
)
def test_checkpoint_in_a_read_only_folder_fails_before_any_work(tiny_ce, pairs, tmp_path, no_nig):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(
            CheckpointError, match=r"cannot write the checkpoint .*ro/out\.safetensors.*Permission"
        ):
            attribute_collection(tiny_ce, pairs, checkpoint=folder / "out.safetensors", **KW)
    finally:
        folder.chmod(0o700)


# -- defects 2 and 3: truncated, random, foreign and corrupted checkpoints are refused ----------------


@pytest.fixture(scope="module")
def saved(tiny_ce, pairs, tmp_path_factory) -> bytes:
    ckpt = tmp_path_factory.mktemp("saved") / "nig.safetensors"
    attribute_collection(tiny_ce, pairs[:4], checkpoint=ckpt, **KW)
    return ckpt.read_bytes()


def zero_data(data: bytes) -> bytes:
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header, data
    return data[:start] + bytes(len(data) - start)


def foreign(tmp_path: Path, metadata: dict[str, str] | None) -> bytes:
    from safetensors.torch import save_file

    save_file({"weight": torch.randn(3, 4)}, str(tmp_path / "foreign"), metadata=metadata)
    return (tmp_path / "foreign").read_bytes()


def tamper_n_done(data: bytes) -> bytes:
    assert b'\\"n_done\\": 4' in data
    return data.replace(b'\\"n_done\\": 4', b'\\"n_done\\": 2')  # same length: a valid header


@pytest.mark.parametrize(
    "case,make,why",
    [
        ("truncated", lambda d, p: d[: len(d) // 2], "truncated or corrupt"),
        ("truncated header", lambda d, p: d[:5], "truncated or corrupt"),
        ("empty", lambda d, p: b"", "truncated or corrupt"),
        ("random bytes", lambda d, p: os.urandom(len(d)), "truncated or corrupt"),
        ("foreign", lambda d, p: foreign(p, None), "without mechir_nig metadata"),
        ("foreign with metadata", lambda d, p: foreign(p, {"format": "pt"}), "without mechir_nig metadata"),
        ("zeroed data region", lambda d, p: zero_data(d), "checksum does not match"),
        ("edited metadata", lambda d, p: tamper_n_done(d), "checksum does not match"),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_file(tiny_ce, pairs, saved, tmp_path, case, make, why):
    ckpt = tmp_path / "nig.safetensors"
    ckpt.write_bytes(make(saved, tmp_path))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(ckpt))}.*{why}.*delete it"):
        CollectionAttribution.load(ckpt)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(ckpt))}.*{why}"):
        attribute_collection(tiny_ce, pairs[:4], checkpoint=ckpt, resume=True, **KW)
    assert not (tmp_path / "nig.safetensors.lock").exists()  # released on the error


def test_intact_checkpoint_loads_and_an_unverifiable_one_warns(saved, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = tmp_path / "nig.safetensors"
    ckpt.write_bytes(saved)
    assert CollectionAttribution.load(ckpt).n_done == 4
    with safe_open(str(ckpt), framework="pt") as f:  # as written before checksums existed
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != "sha256"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(ckpt), metadata=meta)
    with pytest.warns(UserWarning, match="no checksum"):
        assert CollectionAttribution.load(ckpt).n_done == 4


# -- defect 4: per-process temporary names and the lock ------------------------------------------------


def test_concurrent_saves_of_one_output_never_collide(tmp_path):
    stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=8)
    stats.update("relevant", torch.randn(3, 2, 4, 8))
    path = tmp_path / "out.safetensors"
    errors: list[BaseException] = []

    def writer():
        try:
            for _ in range(15):
                stats.save(path)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert torch.equal(CollectionAttribution.load(path).sums["relevant"], stats.sums["relevant"])
    assert leftovers(path) == []


def test_lock_is_released_on_exceptions_and_on_return(tiny_ce, pairs, tmp_path):
    ckpt = tmp_path / "nig.safetensors"
    lock = tmp_path / "nig.safetensors.lock"

    def crash(n_done):
        assert lock.exists() and json.loads(lock.read_text())["pid"] == os.getpid()
        if n_done == 4:  # after the final checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attribute_collection(tiny_ce, pairs[:4], checkpoint=ckpt, on_batch=crash, **KW)
    assert not lock.exists()
    with pytest.raises(InputError, match="resume=True"):
        attribute_collection(tiny_ce, pairs[:4], checkpoint=ckpt, **KW)
    assert not lock.exists()
    attribute_collection(tiny_ce, pairs[:4], checkpoint=ckpt, resume=True, **KW)
    assert leftovers(ckpt) == []


def test_locks_that_cannot_be_checked_are_not_taken_over(tmp_path):
    target = tmp_path / "nig.safetensors"
    lock = tmp_path / "nig.safetensors.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "another-machine", "created": "yesterday"}))
    with pytest.raises(CheckpointLockedError, match=r"process 1 on another-machine .*delete .*\.lock"):
        OutputLock(target).acquire()
    lock.write_text("garbage")
    with pytest.raises(CheckpointLockedError, match="names no owner"):
        OutputLock(target).acquire()
    lock.unlink()
    with OutputLock(target) as held:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(CheckpointLockedError, match=rf"process {os.getpid()}"):
            OutputLock(target).acquire()  # one process, two writers: refused too
        assert held.path == lock
    assert not lock.exists()
