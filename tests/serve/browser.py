"""Headless Chromium for the web page's tests, driven by selenium through Debian's chromedriver.

No browser is downloaded: the tests use the system's `chromium` and `chromedriver`
(`apt-get install -y chromium chromium-driver`, which `.ci/run` does). Without them the
tests fail and say how to install them; a web page nobody tested must not pass quietly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

INSTALL = ("install Debian's headless Chromium and its driver: `apt-get install -y chromium chromium-driver` "
           "(.ci/run does it), and the Python driver: `pip install -e '.[dev]'` (selenium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "reports" / "web"  # /reports/ is ignored by git


def find(names: list[str], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def launch_chromium():
    """A selenium WebDriver on a fresh headless Chromium profile; fails the test when there is none."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: {INSTALL}", pytrace=False)
    binary = find(["chromium", "chromium-browser", "google-chrome"], "EMBER_CHROMIUM")
    driver_path = find(["chromedriver"], "EMBER_CHROMEDRIVER")
    if binary is None or driver_path is None:
        missing = " and ".join(n for n, p in (("chromium", binary), ("chromedriver", driver_path)) if p is None)
        pytest.fail(f"no {missing} on PATH: {INSTALL}", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="ember-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})  # console errors, for page_errors
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except Exception as exc:  # selenium's errors carry the browser's own words
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"headless Chromium ({binary}, driver {driver_path}) did not start: {exc}\n{INSTALL}",
                    pytrace=False)
    driver.profile_dir = profile
    return driver


def close_chromium(driver) -> None:
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def wait_until(predicate, timeout: float = 30.0, what: str = "the page"):
    """Polls `predicate` until it returns something truthy, and returns that. An element the
    page has not rendered yet (the dashboard fills in after its first poll) counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
