"""Strip outputs, execution counts and run metadata from the tutorial notebooks, as they are committed.

Usage::

    python demos/strip_outputs.py            # every demos/*.ipynb, rewritten in place where needed
    python demos/strip_outputs.py A.ipynb    # only these
    python demos/strip_outputs.py --check    # change nothing; exit 1 and name the notebooks with outputs

``tests/test_notebooks.py`` checks that the committed notebooks are stripped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

DEMOS = Path(__file__).resolve().parent
CELL_KEYS = ("execution", "ExecuteTime", "collapsed", "scrolled")  # per-cell run state a front end adds


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` without outputs, execution counts, per-cell run state, widget state or interpreter details."""
    for cell in nb.cells:
        for key in CELL_KEYS:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    if "language_info" in nb.metadata:
        nb.metadata["language_info"] = {"name": nb.metadata["language_info"].get("name", "python")}
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: demos/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only report notebooks that are not stripped")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(DEMOS.glob("*.ipynb"))
    dirty = []
    for path in paths:
        before = nbformat.read(path, as_version=4)
        after = strip(nbformat.read(path, as_version=4))
        if after != before:
            dirty.append(path)
            if not args.check:
                nbformat.write(after, path)
    for path in dirty:
        print(f"{'not stripped' if args.check else 'stripped'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
