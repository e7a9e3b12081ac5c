"""Forward-pass speed: HookedCrossEncoder vs Hugging Face on the same batch, runs alternated.

Usage: ``python benchmarks/forward.py [--pairs 32] [--tokens 128] [--repeats 9]``

HF is run as a user loads it (``from_pretrained``: SDPA attention) and with ``attn_implementation="eager"``;
prints the median and spread of each, the ratios of medians and the largest score difference.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import alternate, header, minilm_cross_encoder_dir, print_times, synthetic_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()

    from transformers import BertForSequenceClassification

    from mechir_nig import HookedCrossEncoder

    header(
        f"Forward pass, MiniLM-L6 cross-encoder, {args.pairs} pairs x {args.tokens} tokens, inference mode"
    )
    folder = minilm_cross_encoder_dir()
    ours = HookedCrossEncoder.from_pretrained(folder)
    hf = BertForSequenceClassification.from_pretrained(str(folder)).eval()
    hf_eager = BertForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager").eval()
    q, d = synthetic_pairs(args.pairs, args.tokens)
    batch = ours.tokenize(q, d)
    if batch.input_ids.shape != (args.pairs, args.tokens):
        raise SystemExit(f"tokenized to {tuple(batch.input_ids.shape)}, not {(args.pairs, args.tokens)}")
    kw = dict(
        input_ids=batch.input_ids, token_type_ids=batch.token_type_ids, attention_mask=batch.attention_mask
    )

    def run(fn):
        def timed():
            with torch.inference_mode():
                return fn()

        return timed

    fns = {
        "hooked": run(lambda: ours(batch)),
        f"hf_{hf.config._attn_implementation}": run(lambda: hf(**kw).logits[:, 0]),
        "hf_eager": run(lambda: hf_eager(**kw).logits[:, 0]),
    }
    ref = fns["hooked"]()
    for name, fn in fns.items():
        if name != "hooked":
            print(f"  max |hooked - {name}| score = {(ref - fn()).abs().max().item():.2e}")
    print_times(alternate(fns, repeats=args.repeats, warmup=2, quiet=True), "hooked")


if __name__ == "__main__":
    main()
