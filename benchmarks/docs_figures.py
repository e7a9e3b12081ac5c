"""Render the how-to pages' figures (docs/img/*.png) from a real run, with headless Chromium.

Usage (after `mechir-nig demo --out DIR`):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/docs_figures.py DIR

Figures: NIG of one pair per token (all-MiniLM-L6-v2, embedded collection), the collection neuron heatmap
and top neurons, the overlap of the relevant and non-relevant top-1 % sets vs chance, the pruning curves,
a patching heatmap; each written with plotly (plotly.js inlined) and screenshotted by
`chromium --headless --screenshot`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def shoot(fig, name: str, width: int = 1100, height: int = 520) -> Path:
    fig.update_layout(width=width, height=height)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / f"{name}.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
        out = IMG / f"{name}.png"
        cmd = [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ]
        cmd += [f"--window-size={width + 20},{height + 20}", "--virtual-time-budget=10000"]
        cmd += [f"--screenshot={out}", html.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    results = Path(argv[0])
    from mechir_nig import neuron_integrated_gradients
    from mechir_nig.attribution.stats import CollectionAttribution
    from mechir_nig.data import load_collection
    from mechir_nig.interventions.patching import PatchingResult
    from mechir_nig.models import load_model
    from mechir_nig.plotting import (
        neuron_heatmap,
        overlap_bars,
        patching_heatmap,
        pruning_curves,
        token_heatmap,
        top_neurons_bar,
    )
    from mechir_nig.sets import select_top

    IMG.mkdir(parents=True, exist_ok=True)
    model = load_model("all-MiniLM-L6-v2")
    col = load_collection("embedded")
    q = next(iter(col.queries))
    d = next(r.doc_id for r in col.qrels if r.query_id == q and r.relevance > 0)
    attr = neuron_integrated_gradients(
        model, [col.queries[q]], [col.docs[d][:300]], n_steps=16, reduce="token"
    )
    shoot(token_heatmap(attr, 0), "howto_token_heatmap", height=420)
    stats = CollectionAttribution.load(results / "attribution.safetensors")
    heatmap = neuron_heatmap(stats)  # each layer's 20 strongest neurons, labelled
    shoot(heatmap, "howto_neuron_heatmap", height=heatmap.layout.height)
    shoot(top_neurons_bar(stats, k=20, scheme="difference"), "howto_top_neurons", height=420)
    rel = select_top(stats.scheme_scores("relevant"), fraction=0.01, layers=stats.layers, name="relevant")
    non = select_top(
        stats.scheme_scores("nonrelevant"), fraction=0.01, layers=stats.layers, name="nonrelevant"
    )
    shoot(overlap_bars([rel, non]), "howto_overlap", width=700, height=420)
    shoot(
        pruning_curves(json.loads((results / "pruning.json").read_text())), "howto_pruning_curves", height=480
    )
    shoot(
        patching_heatmap(PatchingResult.load(results / "patching.safetensors"), "resid_pre"), "howto_patching"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
