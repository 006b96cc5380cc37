"""A real Chromium driven by selenium, for the console's end-to-end tests.

Selenium blocks, and the console, the worker and the simulator run in the test's event
loop: every browser call runs in a thread (``await page.call(...)``) so they keep
serving while the browser waits. Screenshots go to ``test-artifacts/console/`` (or
``$EXPORT_WORKER_ARTIFACTS/console``), kept for a human to look at, never committed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

ARTIFACTS = Path(os.environ.get("EXPORT_WORKER_ARTIFACTS", "test-artifacts")) / "console"
WAIT_S = 30.0


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when this machine has no browser."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


class Page:
    """One browser tab on the console at ``base``."""

    def __init__(self, driver: Any, base: str) -> None:
        self.driver = driver
        self.base = base

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def open(self, path: str) -> None:
        await self.call(self.driver.get, self.base + path)

    async def wait_for(self, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
        from selenium.common.exceptions import (
            JavascriptException,
            StaleElementReferenceException,
            TimeoutException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        # An element found just before the page it was on went away (a navigation, a live
        # update) is stale, and a script can meet the page being replaced: look again on
        # the next round.
        wait = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=[StaleElementReferenceException, JavascriptException],
        )
        try:
            return await self.call(wait.until, condition)
        except TimeoutException:
            await self.screenshot(f"timeout-{what.replace(' ', '-')[:40]}")
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s on {self.driver.current_url}") from None

    async def text_appears(self, css: str, text: str, timeout: float = WAIT_S) -> None:
        # Found and read in one script: an element found by one call and read by the next
        # can be gone by then (a form's submit navigating), which chromedriver reports
        # as an "inspector error", not as a stale element.
        def seen(driver: Any) -> bool:
            return bool(
                driver.execute_script(
                    "return [...document.querySelectorAll(arguments[0])]"
                    ".some(e => e.checkVisibility() && e.innerText.includes(arguments[1]))",
                    css,
                    text,
                )
            )

        await self.wait_for(seen, f"{text!r} in {css}", timeout)

    async def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def by_label(self, label: str) -> Any:
        """The form control whose <label> reads ``label`` (as a screen reader finds it)."""
        from selenium.webdriver.common.by import By

        element = await self.call(self.driver.find_element, By.XPATH, f"//label[normalize-space()='{label}']")
        return await self.find(f"#{element.get_attribute('for')}")

    async def text(self, css: str = "main") -> str:
        """The element's visible text, read in one script: a live update between finding
        the element and reading it cannot make it stale."""
        text = await self.script("const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css)
        assert text is not None, f"no {css} on {self.driver.current_url}"
        return str(text)

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        return path


@asynccontextmanager
async def chromium(base: str) -> AsyncIterator[Page]:
    found = find_browser()
    if found is None:
        if os.environ.get("EXPORT_WORKER_REQUIRE_BROWSER") == "1":
            pytest.fail("EXPORT_WORKER_REQUIRE_BROWSER=1 but there is no chromium and chromedriver")
        pytest.skip("no chromium and chromedriver on this machine (.ci/run and `make test` install them on Debian)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    driver = await asyncio.to_thread(webdriver.Chrome, options=options, service=Service(driver_path))
    try:
        yield Page(driver, base)
    finally:
        await asyncio.to_thread(driver.quit)
