"""Multi-node collection attribution through torchrun's c10d rendezvous, on one machine.

Two separate torchrun agents (two "nodes", one rank each) meet at a c10d rendezvous endpoint on
127.0.0.1, as two machines would at ``host0:PORT``:

    python -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d \
        --rdzv-endpoint 127.0.0.1:PORT --rdzv-id mechir-nig-HEX \
        --rdzv-conf is_host=1,join_timeout=60 (is_host=0 for the second) --local-addr 127.0.0.1 \
        --max-restarts 0 --monitor-interval 0.5 script.py MODEL_DIR CHECKPOINT PIDS_DIR

The rendezvous assigns the node ranks (``--node-rank`` is ignored by c10d). ``is_host`` says which agent
serves the rendezvous store: on two machines torchrun infers it from the endpoint's hostname, here both
agents would match 127.0.0.1 (the second then falls back to a client), so the test states it. Each rank
has ``LOCAL_RANK=0`` and ``LOCAL_WORLD_SIZE=1`` but global ranks 0 and 1, which a single-node launch never
shows. The two ranks run ``attribute_collection`` on the 10 embedded pairs of ``test_distributed`` and
must equal the single process to 1e-6.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import free_port, one_thread
from test_distributed import KW, assert_same, make_pairs

from mechir_nig.attribution.stats import CollectionAttribution
from mechir_nig.experiments.attribute import attribute_collection

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, Linux")

TIMEOUT_S = 120  # for the whole launch (about 10 s), then every process of it is killed

SCRIPT = r"""
import os, sys
import torch
torch.set_num_threads(1)
from mechir_nig import HookedCrossEncoder
from mechir_nig.data import judged_pairs, load_collection
from mechir_nig.experiments.attribute import attribute_collection
from mechir_nig.runtime import distributed

model_dir, ckpt, pids = sys.argv[1], sys.argv[2], sys.argv[3]
open(os.path.join(pids, str(os.getpid())), "w").close()  # torchrun starts each worker in its own session
ps = judged_pairs(load_collection("embedded"), max_relevant_per_query=1, max_nonrelevant_per_query=1)
pairs = type(ps)(ps[:10], ps.report)
model = HookedCrossEncoder.from_pretrained(model_dir, device=distributed.local_device())
held = []
stats = attribute_collection(model, pairs, n_steps=4, batch_size=2, checkpoint=ckpt, checkpoint_every=2,
                             progress=False, on_batch=held.append)
launch = distributed.launch_info()
line = (f"DONE {distributed.rank()} {distributed.world_size()} {held[-1] if held else 0} "
        f"{launch.local_rank} {launch.local_world_size} {os.environ['GROUP_RANK']} {stats.n_done}\n")
os.write(1, line.encode())  # one write() of a short line: the two agents' outputs never interleave
"""


@pytest.fixture(scope="module")
def single(tiny_ce):
    """The single-process result, on one thread as in the ranks."""
    return one_thread(attribute_collection, tiny_ce, make_pairs(), **KW)


class Agent:
    """One torchrun agent (one node) of a ``--nnodes 2`` c10d rendezvous, in its own process group."""

    def __init__(self, tmp_path: Path, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.out_path, self.err_path = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)

    def tail(self) -> str:
        return self.err_path.read_text()[-3000:]


def kill_all(agents: list[Agent], pids: Path, script: Path) -> None:
    """SIGKILL every agent still running (its process group) and every worker of ``script`` still alive
    (each is the leader of its own session, named by its pid file), then reap the agents."""
    for agent in agents:
        if agent.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.proc.pid, signal.SIGKILL)
    for pid_file in pids.iterdir():
        with contextlib.suppress(OSError, ValueError):
            if str(script) in Path(f"/proc/{pid_file.name}/cmdline").read_bytes().decode(errors="replace"):
                os.killpg(int(pid_file.name), signal.SIGKILL)
    for agent in agents:
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.wait(timeout=30)


def run_agents(agents: list[Agent], timeout_s: float) -> bool:
    """Wait until every agent has exited (True), or one failed or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        codes = [agent.proc.poll() for agent in agents]
        if all(c == 0 for c in codes):
            return True
        if any(c not in (None, 0) for c in codes):
            return False
        time.sleep(0.2)
    return False


def test_two_torchrun_agents_meet_at_c10d_rendezvous(tiny_ce_dir, single, tmp_path):
    script = tmp_path / "multinode_script.py"
    script.write_text(SCRIPT)
    ckpt, pids = tmp_path / "out" / "nig.safetensors", tmp_path / "pids"
    ckpt.parent.mkdir()
    pids.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
        and not k.startswith(("MASTER_", "TORCHELASTIC_"))
    }
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    endpoint, rdzv_id = f"127.0.0.1:{free_port()}", f"mechir-nig-{uuid.uuid4().hex[:12]}"
    agents: list[Agent] = []
    clean = False
    try:
        for node, is_host in (("node0", 1), ("node1", 0)):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
            cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id]
            cmd += ["--rdzv-conf", f"is_host={is_host},join_timeout=60", "--local-addr", "127.0.0.1"]
            cmd += ["--max-restarts", "0", "--monitor-interval", "0.5"]
            cmd += [str(script), str(tiny_ce_dir), str(ckpt), str(pids)]
            agents.append(Agent(tmp_path, node, cmd, env))
        clean = run_agents(agents, TIMEOUT_S)  # never hangs the suite: bounded, then killed below
    finally:
        if not clean:
            kill_all(agents, pids, script)

    for agent in agents:  # -9: killed after a failure of the other agent or at TIMEOUT_S
        assert agent.proc.returncode == 0, (agent.proc.returncode, agent.tail())
    done = []
    for agent in agents:  # each agent started one worker: exactly one DONE record in its stdout
        records = re.findall(r"DONE(?: \d+){7}", agent.out_path.read_text())
        assert len(records) == 1, (agent.out_path.read_text(), agent.tail())
        done.append([int(x) for x in records[0].split()[1:]])
    by_rank = {d[0]: d for d in done}
    assert sorted(by_rank) == [0, 1]  # the rendezvous gave the two nodes global ranks 0 and 1
    for r, (_, world, held, local_rank, local_world, group_rank, n_done) in by_rank.items():
        assert world == 2 and local_rank == 0 and local_world == 1 and group_rank == r
        assert held > 0 and n_done == 10  # both ranks worked; each returns the all-reduced statistics
    assert by_rank[0][2] + by_rank[1][2] == 10  # the two ranks held all 10 pairs, none twice

    result = CollectionAttribution.load(ckpt)  # written by global rank 0
    assert_same(result, single)
    assert result.meta["distributed"]["world_size"] == 2
    names = {p.name for p in ckpt.parent.iterdir()}
    assert not [n for n in names if n.endswith((".lock", ".tmp")) or ".rank" in n or "manifest" in n], names
