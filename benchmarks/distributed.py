"""One process vs N gloo ranks under torchrun on the CPU: wall time of the same CLI commands, alternated.

Usage: ``python benchmarks/distributed.py [--nproc 2] [--model all-MiniLM-L6-v2] [--collection embedded]
[--repeats 3] [--warmup 1] [--commands attribute,patch] [--smoke]``

Each configuration runs ``python -m mechir_nig <command> ...`` in a fresh subprocess (model loading and
imports included, as a user would see it) on the bundled MiniLM and the embedded collection:

* ``1 proc x N thr``: the plain command, torch using N threads (``OMP_NUM_THREADS=N``);
* ``N ranks x 1 thr``: ``torchrun --nproc-per-node N`` (gloo), each rank one thread.

Commands: ``attribute`` (NIG at 16 steps of 2 relevant + 2 non-relevant judged pairs per query, sharded
by token count, statistics all-reduced) and ``patch`` (a TFC1 patching pass of 16 BM25 pairs, 2 per
query, sites ``resid_pre,heads``, pairs sharded by cost). Per command the two configurations run
alternately (one proc, ranks, one proc, ranks, ...: ``_common.alternate``) ``--repeats`` rounds (default
3) after ``--warmup`` untimed rounds (default 1: it fills the page cache with torch, transformers, the
model and the collection for both launchers, so the first timed run is not the only cold one; it costs
one more round, about a quarter of the run). A time is the subprocess's wall time (``Seconds``),
launcher and model loading included.

Prints: a header (date, machine, load average, torch, threads), each round's two times, then per command
the median [min - max] of each configuration and ``ratio N ranks x 1 thr / 1 proc x N thr`` = the ratio
of the medians with the range of the per-round ratios (below 1: sharding over processes beats torch's
intra-op threads on this machine). The outputs of every timed run are checked equal to the first
single-process run (attribution sums to 1e-5 relative, patched scores to 1e-5 absolute) and the largest
difference is printed, so a speed-up is never bought with a different answer.

``--smoke`` shrinks the commands (2 steps, 1 + 1 judged pairs per query; 2 BM25 pairs, 1 per query,
``resid_pre`` only) to check the script (about 3 minutes with ``--repeats 3`` on the shared 2-core
machine: imports, model loading and BM25 indexing dominate); its times are not figures for the docs.
Full size (the default commands) takes about 6 minutes at ``--repeats 3 --warmup 1`` on a quiet 2-core
machine (estimate: 4 rounds of about 10 + 11 s for ``attribute`` and 32 + 31 s for ``patch``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _common import Seconds, alternate, header, print_times  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(cmd: list[str], threads: int) -> Seconds:
    """Wall seconds of ``cmd`` in a fresh subprocess with ``OMP_NUM_THREADS=threads``; exits on failure."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(threads))
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return Seconds(time.perf_counter() - t)


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    common = ["--model", args.model, "--collection", args.collection, "--no-progress"]
    steps, per_label = ("2", "1") if args.smoke else ("16", "2")
    max_pairs, per_query, sites = ("2", "1", "resid_pre") if args.smoke else ("16", "2", "resid_pre,heads")
    return {
        "attribute": [
            "attribute",
            *common,
            "--n-steps",
            steps,
            "--max-relevant",
            per_label,
            "--max-nonrelevant",
            per_label,
        ],
        "patch": [
            "patch",
            *common,
            "--max-pairs",
            max_pairs,
            "--sites",
            sites,
            "--pairs",
            "bm25",
            "--per-query",
            per_query,
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--collection", default="embedded")
    ap.add_argument("--repeats", type=int, default=3, help="alternated timed rounds per command (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (default 1)")
    ap.add_argument("--commands", default="attribute,patch", help="comma-separated: attribute, patch")
    ap.add_argument("--smoke", action="store_true", help="tiny commands: checks the script, not docs figures")
    args = ap.parse_args()
    n = args.nproc
    argvs = commands(args)
    chosen = [c for c in args.commands.split(",") if c]
    root = Path(tempfile.mkdtemp(prefix="mechir_nig_dist_"))
    one_name, many_name = f"1 proc x {n} thr", f"{n} ranks x 1 thr"
    header("benchmarks/distributed.py: one process vs gloo ranks under torchrun, the same CLI commands")
    print(
        f"  torch threads: one process {n}, ranks 1 each; per command the two alternated, median [min - max] "
        f"of {args.repeats} rounds after {args.warmup} warm-up round(s); subprocess wall time, model loading "
        "included" + ("; --smoke: tiny commands, not figures for the docs" if args.smoke else ""),
        flush=True,
    )
    if args.repeats < 3:
        print(f"  (only {args.repeats} repeat(s): the project's figures need at least 3)", flush=True)
    outs: dict[str, dict[str, list[Path]]] = {}
    for name in chosen:
        argv = argvs[name]
        counter = itertools.count()
        outs[name] = {one_name: [], many_name: []}

        def one(argv: list[str] = argv, name: str = name, counter=counter) -> Seconds:
            out = root / f"{name}_one_{next(counter)}"
            outs[name][one_name].append(out)
            return run([sys.executable, "-m", "mechir_nig", *argv, "--out", str(out)], n)

        def many(argv: list[str] = argv, name: str = name, counter=counter) -> Seconds:
            out = root / f"{name}_ranks_{next(counter)}"
            outs[name][many_name].append(out)
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
            return run([*launch, "-m", "mechir_nig", *argv, "--out", str(out)], 1)

        print(f"\n{name}: python -m mechir_nig {' '.join(argv)}", flush=True)
        times = alternate({one_name: one, many_name: many}, repeats=args.repeats, warmup=args.warmup)
        print_times(times, one_name)
        for config in (one_name, many_name):  # the timed runs only
            outs[name][config] = outs[name][config][args.warmup :]
        check(name, outs[name][one_name][0], [*outs[name][one_name][1:], *outs[name][many_name]])
    shutil.rmtree(root, ignore_errors=True)


def check(name: str, ref: Path, others: list[Path]) -> None:
    """Assert every run's result equals the first single-process run's; print the largest difference."""
    import torch

    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.interventions.patching import PatchingResult

    diff, scale = 0.0, 0.0
    if name == "attribute":
        a = CollectionAttribution.load(ref / "attribution.safetensors")
        for path in others:
            b = CollectionAttribution.load(path / "attribution.safetensors")
            assert a.counts == b.counts and a.n_done == b.n_done, (path, a.counts, b.counts)
            for label in a.sums:
                torch.testing.assert_close(b.sums[label], a.sums[label], rtol=1e-5, atol=1e-6)
                diff = max(diff, (b.sums[label].double() - a.sums[label].double()).abs().max().item())
                scale = max(scale, a.sums[label].double().abs().max().item())
        what = "attribution sums (checked to 1e-5 relative)"
    else:
        pa = PatchingResult.load(ref / "patching.safetensors")
        for path in others:
            pb = PatchingResult.load(path / "patching.safetensors")
            for site in pa.patched:
                torch.testing.assert_close(pb.patched[site], pa.patched[site], rtol=0, atol=1e-5)
                diff = max(diff, (pb.patched[site].double() - pa.patched[site].double()).abs().max().item())
                scale = max(scale, pa.patched[site].double().abs().max().item())
        what = "patched scores (checked to 1e-5)"
    print(
        f"  values: {len(others)} runs equal the first single-process run: max |difference| of the {what} "
        f"= {diff:.2e} (largest |value| {scale:.2e}, relative {diff / max(scale, 1e-30):.1e})"
    )


if __name__ == "__main__":
    main()
