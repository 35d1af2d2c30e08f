"""The HTML report in a real browser: Debian's headless Chromium, driven by Selenium through chromedriver.

Builds the report from test_report's synthetic scores and checks what a reader would see at 1280×900:
the page renders, every image loads and is shown at (nearly) its drawn size, every relative link
resolves, nothing overflows horizontally. A full-page screenshot is kept in test-artifacts/report.png.
Chromium missing is a failure, not a skip: `bash scripts/setup.sh test` installs it.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from test_report import REPO, params, run_stage, write_scores  # noqa: F401  (params is a fixture)

from cmml.pipeline.plan import find, plan
from cmml.report import index as index_module

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The network is closed: no first-run, sync, component or background traffic; a fresh profile per run.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
VIEWPORT = (1280, 900)
SCREENSHOT = REPO / "test-artifacts" / "report.png"


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a ``VIEWPORT``-sized viewport and a fresh user-data-dir."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: run `bash scripts/setup.sh test` (Debian packages chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        set_viewport(driver, *VIEWPORT)
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: webdriver.Chrome, width: int, height: int) -> None:
    """Make the page's viewport exactly ``width`` × ``height`` CSS pixels."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def broken_links(driver: webdriver.Chrome, page: Path) -> list[str]:
    """Every link of the page that is absolute, or whose file or in-page anchor does not exist."""
    broken = []
    for href in driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))"):
        url = urlsplit(href)
        if url.scheme or url.netloc:
            broken.append(href)
        elif url.path and not (page.parent / unquote(url.path)).exists():
            broken.append(href)
        elif not url.path and not driver.execute_script("return document.getElementById(arguments[0]) !== null", unquote(url.fragment)):
            broken.append(href)
    return broken


def full_page_screenshot(driver: webdriver.Chrome, path: Path) -> None:
    """Save the whole page, at the viewport's width, as a PNG."""
    set_viewport(driver, VIEWPORT[0], driver.execute_script("return document.documentElement.scrollHeight"))
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    set_viewport(driver, *VIEWPORT)


def check_page(driver: webdriver.Chrome, page: Path, title: str) -> list[list[Any]]:
    """Load ``page`` and assert what a reader needs; returns the images as [src, natural width, shown width]."""
    driver.get(page.as_uri())
    assert driver.title == title
    assert driver.execute_script("return document.querySelector('h1').textContent") == title
    images = driver.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0, i.naturalWidth, i.width])")
    assert [src for src, ok, *_ in images if not ok] == [], "images that did not load"
    # drawn at their displayed size: a figure shrunk by the browser would shrink its text
    assert [src for src, _, natural, shown in images if shown < 0.95 * natural] == [], "images shrunk to fit"
    assert broken_links(driver, page) == []
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), "horizontal overflow"
    return [[src, natural, shown] for src, _, natural, shown in images]


def test_report_renders_in_chromium(params: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    write_scores(params)
    run_stage(params, "aggregate")
    run_stage(params, "report")
    index_module.run(find(plan(params), "index"), params)
    page = Path("results/cmml/report/index.html").resolve()

    with chromium(tmp_path / "chromium-profile") as driver:
        images = check_page(driver, page, params["report"]["title"])
        full_page_screenshot(driver, SCREENSHOT)
        # the results index: renders, links every family's report page, which exists
        assert check_page(driver, Path("results/index.html").resolve(), params["report"]["title"]) == []
        hrefs = driver.execute_script("return [...document.links].map(a => a.getAttribute('href'))")
        assert hrefs == ["cmml/report/index.html"]

    assert sorted(src for src, *_ in images) == sorted([
        "ap.png", "curves/both70__seen.png", "curves/both70__tasks.png",
        "heatmaps/both70__finetune_head__seed0.png", "heatmaps/both70__joint__seed0.png"])
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
