"""Every ```python block of README.md and docs/**/*.md runs as written.

The blocks of one page run in order in one namespace that starts empty (as a reader pasting them one
after the other), in a temporary working directory, so every name a block uses must be defined on its
page. Two stand-ins keep it offline: the hub id of the cross-encoder the docs use is loaded from
all-MiniLM-L6-v2's real body under a seeded relevance head (same architecture: 6 layers, 384 wide, 1536
MLP neurons), and ``../shared/`` is the collections folder next to the checkout. A block preceded by
``<!-- no-run: REASON -->`` is not run (it needs something this machine lacks); those are counted and
their reasons must be one of :data:`NO_RUN_REASONS`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
HUB_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
NO_RUN_REASONS = {
    "needs a GPU",
    "needs torchrun",
    "needs the collection's files",
    "needs ir_datasets downloads",
}
# the blocks not run today, by page: a new one must be added here deliberately
EXPECTED_NO_RUN = {"docs/howto/collection.md": 1, "docs/models.md": 1}

_BLOCK = re.compile(r"(?:<!--\s*no-run:\s*(?P<reason>[^>]*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks(page: Path) -> list[tuple[int, str | None, str]]:
    text = page.read_text()
    return [
        (text[: m.start("code")].count("\n"), m.group("reason"), m.group("code"))
        for m in _BLOCK.finditer(text)
    ]


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES_WITH_CODE = [p for p in PAGES if _blocks(p)]


def test_no_run_blocks_are_marked_counted_and_explained():
    counts: dict[str, int] = {}
    for page in PAGES:
        for line, reason, _ in _blocks(page):
            if reason is not None:
                assert reason in NO_RUN_REASONS, f"{_rel(page)}:{line}: unknown no-run reason {reason!r}"
                counts[_rel(page)] = counts.get(_rel(page), 0) + 1
    assert counts == EXPECTED_NO_RUN
    # the test sees every block: README and the docs have code, and most of it runs
    n_run = sum(1 for p in PAGES for _, r, _ in _blocks(p) if r is None)
    assert n_run >= 18


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_rel)
def test_page_blocks_run(page, tmp_path, monkeypatch, minilm_ce_dir):
    blocks = [(line, code) for line, reason, code in _blocks(page) if reason is None]
    if any("../shared/" in code for _, code in blocks) and not SHARED.is_dir():
        pytest.skip("../shared (the real collections) is not present next to the checkout")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code in blocks:
        src = code.replace(HUB_CROSS_ENCODER, str(minilm_ce_dir)).replace("../shared/", f"{SHARED}/")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(src, f"{_rel(page)}:{line}", "exec"), namespace)
            except Exception as err:  # the page and line of the failing block, then the error
                raise AssertionError(f"{_rel(page)} block at line {line} failed: {err!r}") from err
