"""Headless Chromium for the browser tests (the cockpit, the OGC API pages): Debian's `chromium` and
`chromium-driver`, driven by `selenium`; without them those tests skip with the reason. One way to start it, so that
every page is tried in the same browser."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def need_browser() -> None:
    """Skip the test, with the reason, when there is no browser to run it in."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")


def chrome(width: int, height: int, phone: bool = False) -> Any:
    """Headless Chromium with a window of `width` × `height` (a phone's screen with `phone`), its console kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    need_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # MapLibre draws with WebGL: SwiftShader's is there without a GPU
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run",
                "--enable-unsafe-swiftshader", "--use-angle=swiftshader", f"--window-size={width},{height}"):
        options.add_argument(arg)
    if phone:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height,
                                                                              "pixelRatio": 2}})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def severe(driver: Any) -> list[str]:
    """The console's errors since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
