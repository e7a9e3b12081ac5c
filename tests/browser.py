"""Headless Chromium for the browser tests (the HTML report, the docs site's notebook pages).

Chromium and its driver are the Debian packages ``chromium`` and ``chromium-driver``; when they are
missing :func:`ensure_chromium` installs them with apt-get (as ``make test`` does first), and skips the
test, saying why, only where apt-get is unavailable or the installation fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT = "apt-get update && apt-get install -y chromium chromium-driver"

# every figure's box and its plotly SVG, and the page's scroll width, against the window's client width
WIDTHS_JS = """
const w = document.documentElement.clientWidth;
const boxes = Array.from(document.querySelectorAll('.js-plotly-plot, .js-plotly-plot svg.main-svg'));
return {
  client: w,
  scroll: document.documentElement.scrollWidth,
  n: document.querySelectorAll('.js-plotly-plot').length,
  wide: boxes.filter(e => e.getBoundingClientRect().right > w + 1)
             .map(e => [e.closest('.js-plotly-plot').id, Math.round(e.getBoundingClientRect().right)]),
};
"""
DRAWN_JS = (  # plotly graphs with their SVG and at least one trace laid out
    "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
    ".filter(e => e.querySelector('svg.main-svg') && e._fullData && e._fullData.length > 0).length"
)


def ensure_chromium() -> None:
    """Install chromium and chromium-driver with apt-get when missing; skip only where that cannot be done."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(
            f"{CHROMIUM} or {CHROMEDRIVER} is missing and apt-get is unavailable to install them ({APT})"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and shutil.which("sudo") is None:
        pytest.skip(
            f"{CHROMIUM} is missing and installing it needs root (not root, no sudo): run `{APT}` as root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        done = subprocess.run(sudo + cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            pytest.skip(f"chromium cannot be installed: `{' '.join(cmd)}` failed: {' | '.join(tail)}")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"apt-get installed chromium but {CHROMIUM} or {CHROMEDRIVER} is still missing")


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driver (browser console and network logs recorded), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_fit(driver: Any, seconds: float = 10) -> dict[str, Any]:
    """:data:`WIDTHS_JS` measured once the page fits its window (plotly relayouts a responsive figure
    shortly after a resize), or after ``seconds``, as it is then."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def fits(d: Any) -> Any:
        m = d.execute_script(WIDTHS_JS)
        return m if not m["wide"] and m["scroll"] <= m["client"] + 1 else False

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.25).until(fits)
    except TimeoutException:
        return driver.execute_script(WIDTHS_JS)
