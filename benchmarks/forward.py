"""Forward-pass speed: HookedCrossEncoder vs Hugging Face eager on the same batch, side by side.

Usage: ``python benchmarks/forward.py [--pairs 32] [--tokens 128] [--repeats 9]``
Prints the median time of each and the ratio (target: ours / HF <= 1.15).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved_times, minilm_cross_encoder_dir, synthetic_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    from transformers import BertForSequenceClassification

    from mechir_nig import HookedCrossEncoder

    folder = minilm_cross_encoder_dir()
    ours = HookedCrossEncoder.from_pretrained(folder)
    hf = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    q, d = synthetic_pairs(args.pairs, args.tokens)
    batch = ours.tokenize(q, d)
    assert batch.input_ids.shape == (args.pairs, args.tokens), batch.input_ids.shape
    kw = dict(
        input_ids=batch.input_ids, token_type_ids=batch.token_type_ids, attention_mask=batch.attention_mask
    )

    def run_ours():
        with torch.inference_mode():
            return ours(batch)

    def run_hf():
        with torch.inference_mode():
            return hf(**kw).logits

    diff = (run_ours() - run_hf()[:, 0]).abs().max().item()
    t = interleaved_times({"hooked": run_ours, "hf_eager": run_hf}, repeats=args.repeats)
    print(
        f"MiniLM-L6 cross-encoder, {args.pairs} pairs x {args.tokens} tokens, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; max |score diff| = {diff:.2e}"
    )
    print(f"hooked   {t['hooked'] * 1e3:8.1f} ms")
    print(f"hf eager {t['hf_eager'] * 1e3:8.1f} ms")
    print(f"ratio hooked / hf_eager = {t['hooked'] / t['hf_eager']:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
