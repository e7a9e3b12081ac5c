"""MechIR 0.2.0's side of ``benchmarks/patching.py``, run by the interpreter of MechIR's own virtual
environment (it imports MechIR, never ``mechir_nig``).

Usage (by ``patching.py``): ``python _mechir_child.py MODEL_FOLDER PAIRS.safetensors``, then one command
a line on stdin: ``resid`` or ``heads`` (one sweep: its seconds are printed, its patched scores saved to
``PAIRS.<command>.safetensors``) or ``quit``. Answers are stdout lines starting with ``RESULT `` (a JSON
object); everything else on stdout is MechIR's own output.

The sweeps are MechIR's public ``Cat.patch``: ``patch_type="block_all"`` with its component list cut to
``("resid_pre",)`` (MechIR's own loop, one patched (layer, position) per forward of the batch) and
``patch_type="head_all"`` (one (layer, head) per forward). ``sequences`` is the clean batch (the run),
``sequences_p`` the perturbed one (the cache patched in). The metric is MechIR's ``linear_rank_function``
((patched - clean) / (perturbed - clean), batch mean), wrapped to also keep each run's per-pair patched
score, so the values can be compared with ours pair by pair.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    import mechir
    import mechir.modelling.patched as patched
    from mechir import Cat
    from mechir.util import linear_rank_function

    folder, pairs = sys.argv[1], sys.argv[2]
    t = load_file(pairs)
    clean = {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    perturbed = {**clean, "input_ids": t["perturbed_input_ids"]}
    model = Cat(folder, num_labels=1)
    print(
        "RESULT " + json.dumps({"ready": True, "mechir": mechir.__version__, "torch": torch.__version__}),
        flush=True,
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        kept: list[torch.Tensor] = []

        def metric(score, scores, scores_p, kept=kept):
            kept.append(score.detach().clone())
            return linear_rank_function(score, scores, scores_p)

        if cmd == "resid":
            patched.BLOCK_COMPONENTS = ("resid_pre",)
            patch_type = "block_all"
        elif cmd == "heads":
            patch_type = "head_all"
        else:
            print("RESULT " + json.dumps({"error": f"unknown command {cmd!r}"}), flush=True)
            continue
        t0 = time.perf_counter()
        out, _ = model.patch(clean, perturbed, patch_type=patch_type, patching_metric=metric)
        seconds = time.perf_counter() - t0
        n_layers = model._model.cfg.n_layers
        scores = torch.stack(kept).reshape(n_layers, -1, len(clean["input_ids"])).permute(2, 0, 1)
        path = pairs.replace(".safetensors", f".{cmd}.safetensors")
        save_file({"patched": scores.contiguous(), "metric": out.reshape(n_layers, -1).contiguous()}, path)
        print("RESULT " + json.dumps({"seconds": seconds, "path": path}), flush=True)


if __name__ == "__main__":
    main()
