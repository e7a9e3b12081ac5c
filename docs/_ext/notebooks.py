"""mkdocs hook: the executed tutorial notebooks as pages of the site, their plotly figures drawn.

``tests/test_notebooks.py`` (run by ``make test`` before the site is built) executes ``demos/*.ipynb`` and
writes each executed copy, with its outputs, to ``docs/notebooks/`` (ignored by git; the notebooks in git
carry no outputs). This hook

- adds each executed notebook found there to the "Notebooks" section of the navigation (rendered by the
  ``mkdocs-jupyter`` plugin, ``execute: false``), and lists them on ``notebooks/index.md``; on a fresh
  clone, where none has been executed yet, that page says so and the build stays warning-free;
- copies plotly.js (the copy bundled with the installed ``plotly``, so the site needs no network) once into
  the site, and loads it in the ``<head>`` of each notebook page: each figure's output holds a ``div`` and
  a script drawing it with ``Plotly.newPlot`` (``mechir_nig.plotting._common.figure_html``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mkdocs.utils import get_relative_url

FOLDER = "notebooks"  # under docs_dir
INDEX = f"{FOLDER}/index.md"
MARKER = "<!-- executed notebooks -->"
PLOTLY_JS = "assets/javascripts/plotly.min.js"  # in the site
STUB = (
    '!!! note "No executed notebook yet"\n'
    "    The executed notebooks appear here after `make test` (it runs `tests/test_notebooks.py`, which\n"
    "    writes them to `docs/notebooks/`, before building this site). Their sources, without outputs,\n"
    "    are in `demos/`.\n"
)


def _executed(config: Any) -> list[Path]:
    return sorted((Path(config["docs_dir"]) / FOLDER).glob("*.ipynb"))


def _section(nav: list[Any]) -> list[Any] | None:
    """The navigation list that holds ``notebooks/index.md``."""
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            if INDEX in value:
                return value
            found = _section(value)
            if found is not None:
                return found
    return None


def on_config(config: Any) -> Any:
    section = _section(config["nav"] or [])
    if section is None:
        raise ValueError(f"mkdocs.yml: the nav has no section holding {INDEX}")
    section[:] = [INDEX] + [f"{FOLDER}/{p.name}" for p in _executed(config)]
    return config


def _title(path: Path) -> str:
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != INDEX:
        return markdown
    found = _executed(config)
    listing = "\n".join(f"- [{_title(p)}]({p.name})" for p in found) + "\n" if found else STUB
    return markdown.replace(MARKER, listing)


def on_post_page(output: str, page: Any, config: Any) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return output
    src = get_relative_url(PLOTLY_JS, page.url)
    return output.replace("</head>", f'<script src="{src}"></script>\n</head>', 1)


def on_post_build(config: Any) -> None:
    if not _executed(config):
        return
    import plotly

    target = Path(config["site_dir"]) / PLOTLY_JS
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", target)
