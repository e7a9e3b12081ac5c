"""Griffe extension used by the docs build only (``mkdocs.yml``): reads this package's docstrings as written.

The package's docstrings are Google style with two habits that griffe's Google parser reads otherwise:

* a singular ``Example:`` section (what Napoleon accepts). Griffe knows only ``Examples:`` and would
  render ``Example:`` as an admonition of Markdown, turning ``>>>`` lines into nested quotes; it is
  renamed so the doctest lines render as a Python console block.
* Sphinx roles (``:class:`~mechir_nig.data.collection.Collection```, ``:func:`load_collection```).
  Markdown has no roles; they are rendered as inline code of the name as it would display in Sphinx
  (``~`` keeps the last component).
* reStructuredText simple tables (``====  ====`` borders around a header row and body rows). Markdown
  would read a border as a heading underline; they are rewritten as Markdown tables.

Nothing here touches the package: only the copy of each docstring that the docs build renders.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|exc|obj|const):`(~?)([^`<>]+?)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    target = target.strip()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


_BORDER = re.compile(r"^( *)=+(?: +=+)+ *$")


def _cells(line: str, starts: list[int]) -> list[str]:
    # a cell runs from its column's start to the next column's start (text may overflow into the gap)
    ends = [*starts[1:], None]
    return [line[a:b].strip().replace("|", "\\|") for a, b in zip(starts, ends)]


def _rows(lines: list[str], starts: list[int]) -> list[list[str]]:
    rows: list[list[str]] = []
    for line in lines:
        cells = _cells(line, starts)
        if rows and not cells[0]:  # an empty first column continues the previous row
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    return rows


def _rst_tables(text: str) -> str:
    """Rewrite reStructuredText simple tables with a header (three borders) as Markdown tables."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _BORDER.match(lines[i])
        borders = [i]
        j = i + 1
        while match and j < len(lines) and lines[j].strip() and len(borders) < 3:
            if lines[j].strip() and set(lines[j].strip()) <= {"=", " "}:
                borders.append(j)
            j += 1
        if not match or len(borders) < 3:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match.group(1))
        border = lines[i]
        starts = [m.start() for m in re.finditer(r"=+", border)]
        header = _rows(lines[borders[0] + 1 : borders[1]], starts)
        body = _rows(lines[borders[1] + 1 : borders[2]], starts)
        pad = " " * indent
        table = [pad + "| " + " | ".join(r) + " |" for r in header[:1]]
        table.append(pad + "|" + " --- |" * len(starts))
        table += [pad + "| " + " | ".join(r) + " |" for r in body]
        out += ["", *table, ""]
        i = borders[2] + 1
    return "\n".join(out)


class DocstringCompat(griffe.Extension):
    """Rename ``Example:`` sections, render Sphinx roles as inline code, turn RST tables into Markdown."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is None:
            return
        value = _EXAMPLE.sub(r"\1Examples:", docstring.value)
        value = _ROLE.sub(_role, value)
        docstring.value = _rst_tables(value) if "==" in value else value
