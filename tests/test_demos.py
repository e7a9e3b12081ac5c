"""The tutorials run: the notebook's code cells execute in order, and the quickstart script runs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

DEMOS = Path(__file__).resolve().parents[1] / "demos"


@pytest.mark.slow
def test_notebook_tutorial_runs():
    nb = json.loads((DEMOS / "tutorial_nig.ipynb").read_text())
    namespace: dict = {}
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 5
    for cell in cells:
        exec(compile("".join(cell["source"]), "tutorial_nig.ipynb", "exec"), namespace)
    assert len(namespace["relevant"]) == 92  # 1% of 6 x 1536 neurons
    assert namespace["attr"].values.shape[:2] == (1, 6)
    assert (namespace["ablated"] - namespace["clean"]).abs().max() > 0  # zeroing neurons changes scores


def test_quickstart_runs(capsys):
    runpy.run_path(str(DEMOS / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "Ranking (cosine similarity):" in out
    first = out.split("Ranking (cosine similarity):")[1].splitlines()[1]
    assert "Neurons pass electrical signals" in first  # the relevant document is ranked first
    assert out.count("layer ") >= 6
