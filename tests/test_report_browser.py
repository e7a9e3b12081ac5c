"""The HTML report of a real small run, opened in headless Chromium: every figure renders (one plotly graph
with SVG content per figure the report counts), the console has no error, the page fetches nothing from
the network, and a screenshot shows the figures.

The results come from the command line on the bundled all-MiniLM-L6-v2 and the embedded collection
(``attribute`` -> ``prune`` -> ``patch`` -> ``faithfulness`` -> ``rerank`` -> ``stability`` -> ``report``),
with settings small enough for a couple of minutes on two cores.

Chromium and its driver are the Debian packages ``chromium`` and ``chromium-driver``; when they are
missing the test installs them with apt-get (as ``make test`` does first), and skips, saying why, only
where apt-get is unavailable or the installation fails.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from browser import DRAWN_JS, chromium, wait_for_fit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A report built by the command line from a real small run of MiniLM on the embedded collection."""
    from mechir_nig.cli import main

    out = tmp_path_factory.mktemp("run")
    common = ["--out", str(out), "--no-progress"]
    commands = [
        ["attribute", *common, "--n-steps", "2", "--max-relevant", "1", "--max-nonrelevant", "1"]
        + ["--negatives-from-bm25", "--k", "5"],
        ["prune", *common, "--fractions", "0.01", "--seeds", "2", "--modes", "zero", "--k", "5"],
        ["patch", *common, "--max-pairs", "2", "--sites", "resid_pre,heads"],
        ["faithfulness", *common, "--max-pairs", "1", "--neurons", "3", "--curve-k", "2", "--seeds", "2"]
        + ["--interventions", "zero", "--n-steps", "2"],
        ["rerank", *common, "--k", "5"],
        ["stability", *common, "--max-relevant", "1", "--n-steps", "2"],
        ["report", str(out), "--no-progress"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    path = out / "report.html"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _pixels(png: bytes) -> np.ndarray:
    """The ``[n, 3]`` RGB pixels of a PNG: with PIL when installed, else decoded from the raw bytes (8-bit
    RGB/RGBA, non-interlaced: what Chromium writes)."""
    try:
        from PIL import Image
    except ImportError:
        return _pixels_raw(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)


def _pixels_raw(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(png):
        n = int.from_bytes(png[pos : pos + 4], "big")
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8] == 8 and body[12] == 0, "8-bit non-interlaced PNG expected"
            channels = {2: 3, 6: 4}[body[9]]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride = zlib.decompress(idat), width * channels
    prev, rows = bytearray(stride), []
    for y in range(height):  # undo the row filters (PNG specification, section 9)
        f, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                row[i] = (row[i] + a) & 255
            elif f == 2:
                row[i] = (row[i] + b) & 255
            elif f == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(row))
        prev = row
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, channels)[:, :3]


def _check_not_blank(png: bytes, what: str) -> None:
    """More than a few distinct colours, and pixels of saturated (trace) colours: not the white, greys
    and slate text of an empty page or an empty plot."""
    pixels = _pixels(png).astype(np.int64)
    colours = len(np.unique(pixels[:, 0] * 65536 + pixels[:, 1] * 256 + pixels[:, 2]))
    coloured = int(((pixels.max(1) - pixels.min(1)) > 80).sum())
    assert colours > 10 and coloured > 50, (
        f"{what} looks blank: {colours} colours, {coloured} coloured pixels"
    )


def test_the_report_renders_in_chromium(report, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report.as_uri())
    stated = int(browser.find_element(By.ID, "figure-count").text)
    assert stated == int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-figures"))
    assert stated >= 14, "attribution 5, pruning 3, patching 3, faithfulness 2, stability 2 figures expected"
    WebDriverWait(browser, 120, poll_frequency=0.5).until(lambda d: d.execute_script(DRAWN_JS) >= stated)
    graphs = browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
    assert len(graphs) == stated == len(browser.find_elements(By.CSS_SELECTOR, "div.plotly-graph-div"))
    for g in graphs:
        assert g.find_elements(By.CSS_SELECTOR, "svg.main-svg"), g.get_attribute("id")
        traces = browser.execute_script("return arguments[0]._fullData.length", g)
        drawn = g.find_elements(By.CSS_SELECTOR, "g.trace, g.hm image, g.heatmaplayer image")
        assert traces > 0 and drawn, f"{g.get_attribute('id')}: no trace drawn"

    # no console error (plotly reports failures there), no request leaves the file
    time.sleep(0.5)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    external = [u for u in urls if not re.match(r"(file|data|blob|about):", u)]
    assert urls and not external, external

    # the screenshot: the window at the first figure; then every figure on its own
    browser.set_window_size(1400, 1000)
    browser.execute_script("arguments[0].scrollIntoView()", graphs[0])
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    _check_not_blank(shot.read_bytes(), f"the screenshot {shot}")
    target = os.environ.get("MECHIR_NIG_SCREENSHOTS")  # keep the screenshots there, to look at them
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / "report.png")
    for i, g in enumerate(graphs):
        browser.execute_script("arguments[0].scrollIntoView()", g)
        png = g.screenshot_as_png
        _check_not_blank(png, f"figure {i + 1} ({g.get_attribute('id')})")
        if target:
            (Path(target) / f"figure-{i + 1:02d}.png").write_bytes(png)


def test_the_findings_section_comes_first_and_links_to_its_sections(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    assert browser.execute_script("return document.querySelector('main > section').id") == "findings"
    items = browser.find_elements(By.CSS_SELECTOR, "#findings ul.findings li")
    texts = [li.text for li in items]
    assert any(t.startswith("Zeroing the top 1 % NIG neurons (") for t in texts), texts  # prune --modes zero
    assert any(t.startswith("The perturbation changes the score by") for t in texts), texts  # patch
    assert any(t.startswith("Under zero ablation, NIG ranks each pair's 3 neurons") for t in texts), texts
    link = browser.find_element(By.CSS_SELECTOR, '#findings a[href="#pruning"]')
    assert link.is_displayed()
    link.click()
    time.sleep(0.3)
    assert browser.execute_script("return location.hash") == "#pruning"
    top = browser.execute_script("return document.getElementById('pruning').getBoundingClientRect().top")
    assert 0 <= top < 200, top  # the section is scrolled to (below the sticky navigation)
    # the statistics next to the tables: the pruning study's intervals, the label sets' overlap p-value
    pruning = browser.find_element(By.ID, "pruning").text
    assert "Statistics over the held-out queries" in pruning and "95 % CI" in pruning
    attribution = browser.find_element(By.ID, "attribution").text
    assert "Overlap of the top 1% relevant and non-relevant neurons vs chance" in attribution
    assert "p_value" in attribution


@pytest.mark.parametrize("reload", [True, False], ids=["loaded", "resized"])
def test_no_figure_is_wider_than_the_page(report, browser, reload):
    """At 1024 and 390 px wide windows no figure reaches past the page's right edge and the page has no
    horizontal scroll; ``resized``: loaded at 1400 px, then the window narrowed (the figures follow it)."""
    from selenium.webdriver.support.ui import WebDriverWait

    if not reload:
        browser.set_window_size(1400, 1000)
        browser.get(report.as_uri())
    for width in (1024, 390):
        browser.set_window_size(width, 900)
        if reload:
            browser.get(report.as_uri())
        stated = int(browser.execute_script("return document.body.dataset.figures"))
        WebDriverWait(browser, 120, poll_frequency=0.5).until(
            lambda d, n=stated: d.execute_script(DRAWN_JS) >= n
        )
        m = wait_for_fit(browser)
        assert m["n"] == stated >= 14, m
        assert m["client"] <= width, f"the window is {m['client']} px wide, not {width} px or less"
        assert not m["wide"], (
            f"at {width} px (client {m['client']} px) figures reach past the page: {m['wide']}"
        )
        assert m["scroll"] <= m["client"] + 1, (
            f"at {width} px the page scrolls sideways: scrollWidth {m['scroll']} > clientWidth {m['client']}"
        )
