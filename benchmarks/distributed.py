"""One process vs N gloo ranks under torchrun on the CPU: wall time of the same CLI commands, side by side.

Usage: ``python benchmarks/distributed.py [--nproc 2] [--model all-MiniLM-L6-v2] [--collection embedded]
[--repeats 2]``

Each configuration runs ``python -m mechir_nig <command> ...`` in a fresh subprocess (model loading and
imports included, as a user would see it) on the bundled MiniLM and the embedded collection:

* ``1 proc x N threads``: the plain command, torch using every core;
* ``N ranks x 1 thread``: ``torchrun --nproc-per-node N`` (gloo), each rank one thread.

Commands: ``attribute`` (NIG of the judged pairs, sharded by token count, statistics all-reduced) and
``patch`` (a TFC1 patching pass, pairs sharded by cost). The ratio printed is time(ranks) / time(one
process): below 1, sharding over processes beats torch's intra-op threads on this machine. The results
are checked equal (attribution statistics to 1e-5 relative, patched scores to 1e-5) so a speed-up is
never bought with a different answer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], threads: int) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(threads))
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--collection", default="embedded")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    n = args.nproc
    common = ["--model", args.model, "--collection", args.collection, "--no-progress"]
    commands = {
        "attribute": [
            "attribute",
            *common,
            "--n-steps",
            "16",
            "--max-relevant",
            "2",
            "--max-nonrelevant",
            "2",
        ],
        "patch": [
            "patch",
            *common,
            "--max-pairs",
            "16",
            "--sites",
            "resid_pre,heads",
            "--pairs",
            "bm25",
            "--per-query",
            "2",
        ],
    }
    root = Path(tempfile.mkdtemp(prefix="mechir_nig_dist_"))
    print(f"{os.cpu_count()} cores; torch threads: one process {n}, ranks 1 each; best of {args.repeats}")
    print(
        f"{'command':10s} {'1 proc x ' + str(n) + ' thr (s)':>20s} {str(n) + ' ranks x 1 thr (s)':>20s} {'ratio':>7s}"
    )
    outs: dict[str, tuple[Path, Path]] = {}
    for name, argv in commands.items():
        one, many = [], []
        for r in range(args.repeats):  # interleaved, so that drift of the machine hits both alike
            a, b = root / f"{name}_one_{r}", root / f"{name}_ranks_{r}"
            one.append(run([sys.executable, "-m", "mechir_nig", *argv, "--out", str(a)], n))
            launch = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "1",
                "--nproc-per-node",
                str(n),
            ]
            launch += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
            many.append(run([*launch, "-m", "mechir_nig", *argv, "--out", str(b)], 1))
            outs[name] = (a, b)
        print(f"{name:10s} {min(one):20.1f} {min(many):20.1f} {min(many) / min(one):7.2f}")
    check(outs)
    shutil.rmtree(root, ignore_errors=True)


def check(outs: dict[str, tuple[Path, Path]]) -> None:
    import torch

    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.interventions.patching import PatchingResult

    a, b = (CollectionAttribution.load(p / "attribution.safetensors") for p in outs["attribute"])
    assert a.counts == b.counts and a.n_done == b.n_done
    for label in a.sums:
        torch.testing.assert_close(a.sums[label], b.sums[label], rtol=1e-5, atol=1e-6)
    pa, pb = (PatchingResult.load(p / "patching.safetensors") for p in outs["patch"])
    for site in pa.patched:
        torch.testing.assert_close(pa.patched[site], pb.patched[site], rtol=0, atol=1e-5)
    print("results equal (attribution sums 1e-5 relative, patched scores 1e-5)")


if __name__ == "__main__":
    main()
