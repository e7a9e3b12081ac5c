"""The package now against an earlier commit of it: collection-scale attribution throughput, side by side.

Usage: ``python benchmarks/versions.py [--against db7b163] [--collection ../shared/data/vaswani]
[--pairs 48] [--steps 32] [--repeats 3]``

``git archive`` writes the package as it was at ``--against`` (default ``db7b163``, the commit issue 15
was filed against) to a temporary folder; the two versions then alternate (earlier, now, earlier, now,
...) ``--repeats`` rounds, each run a fresh subprocess with that version first on ``PYTHONPATH`` that
loads the all-MiniLM-L6-v2 bi-encoder, attributes 4 pairs as a warm-up, then times
``attribute_collection`` of the first ``--pairs`` judged pairs (1 relevant + 1 BM25 non-relevant per
query, document side, all layers, ``batch_size=8``) and reports its own time (``Seconds``: imports and
loading are not timed). Prints median [min - max] per version, the ratio of the medians with the
per-round range, and the largest difference between the two versions' per-neuron sums (a speed-up of
a different answer is no speed-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import SHARED, Seconds, alternate, header, print_diff, print_times, repeats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time, torch
sys.path.insert(0, sys.argv[5])  # benchmarks/: judged_sample imports whichever mechir_nig is first
from _common import judged_sample
from mechir_nig import HookedBiEncoder
from mechir_nig.data import load_collection
from mechir_nig.experiments.attribute import attribute_collection
from mechir_nig.testing import minilm_path
collection, n_pairs, n_steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pairs = judged_sample(load_collection(collection), n_pairs)
model = HookedBiEncoder.from_pretrained(minilm_path())
attribute_collection(model, pairs[:4], n_steps=n_steps, batch_size=8, progress=False)  # warm-up
t0 = time.perf_counter()
res = attribute_collection(model, pairs, n_steps=n_steps, batch_size=8, progress=False)
sec = time.perf_counter() - t0
torch.save({label: res.sums[label] for label in ("relevant", "nonrelevant")}, out)
print(json.dumps({"seconds": sec}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default="db7b163", help="the earlier commit (default: issue 15's filing)")
    ap.add_argument("--collection", default=str(SHARED / "data" / "vaswani"))
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=repeats, default=3)
    args = ap.parse_args()
    if not Path(args.collection).exists():
        raise SystemExit(f"{args.collection} is absent: give --collection a local collection folder")
    tmp = Path(tempfile.mkdtemp(prefix="mechir_nig_versions_"))
    earlier = tmp / "earlier"
    earlier.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", args.against, "mechir_nig"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(earlier)], input=archive.stdout, check=True)
    roots = {f"at {args.against}": earlier, "now": ROOT}
    outs = {name: tmp / f"{i}.pt" for i, name in enumerate(roots)}

    def run(name: str) -> Seconds:
        env = dict(
            os.environ, PYTHONPATH=str(roots[name]), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error"
        )
        argv = [args.collection, str(args.pairs), str(args.steps), str(outs[name]), str(ROOT / "benchmarks")]
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, cwd=tmp
        )
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        return Seconds(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])

    header(
        f"attribute_collection, {args.pairs} pairs, {args.steps} steps, all-MiniLM-L6-v2 (doc side): "
        f"the package at {args.against} vs now"
    )
    times = alternate({name: (lambda name=name: run(name)) for name in roots}, repeats=args.repeats, warmup=0)
    print_times(times, "now")
    a, b = (torch.load(outs[name]) for name in roots)
    for label in a:
        print_diff(f"now - at {args.against}, {label} sums", b[label], a[label])


if __name__ == "__main__":
    main()
