"""The quickstart script runs (the notebook tutorials are executed by tests/test_notebooks.py)."""

from __future__ import annotations

import runpy
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def test_quickstart_runs(capsys):
    runpy.run_path(str(DEMOS / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "Ranking (cosine similarity):" in out
    first = out.split("Ranking (cosine similarity):")[1].splitlines()[1]
    assert "Neurons pass electrical signals" in first  # the relevant document is ranked first
    assert out.count("layer ") >= 6
