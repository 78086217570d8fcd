"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, and where test artefacts go."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, in_ci

#: Pixels; the page is screenshotted whole, up to this height.
WINDOW_WIDTH, MAX_HEIGHT = 1280, 12000


def chromium_or_skip():  # noqa: ANN201 - selenium.webdriver.Chrome
    """A headless Chromium with its console log recorded; skipped without one on a laptop, failed in CI."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    problem = (
        None if binary and driver else "chromium or chromedriver not on PATH (apt install chromium chromium-driver)"
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        problem = "selenium is not installed (pip install -r requirements.txt)"
    if problem:
        if in_ci():
            pytest.fail(f"a headless browser is required in CI: {problem}")
        pytest.skip(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WINDOW_WIDTH},900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    return webdriver.Chrome(service=Service(driver), options=options)


def full_page_screenshot(browser, target: Path) -> Path:  # noqa: ANN001 - selenium.webdriver.Chrome
    """Resize the window to the page's height and save a PNG of all of it."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WINDOW_WIDTH, min(int(height) + 40, MAX_HEIGHT))
    target.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(target))
    return target


def keep_artefact(path: Path) -> Path:
    """Copy a file into $VIDPIPE_ARTEFACTS (default test-artefacts/ in the checkout, ignored by git)."""
    folder = Path(os.environ.get("VIDPIPE_ARTEFACTS") or REPO / "test-artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(path, folder / path.name))
