"""Headless Chromium for the browser tests, driven by Playwright.

Chromium comes from the system (``apt-get install chromium``; another binary through
``CHROMIUM_BIN``) and Playwright from PyPI; neither downloads anything. Without them
these tests fail under CI (``CI`` set) and are skipped elsewhere, saying what to install.
Screenshots go to the test's directory, and also to ``BROWSER_SCREENSHOTS`` when set
(``docs/img`` refreshes the ones in the docs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

try:
    from playwright.async_api import BrowserContext, Page, async_playwright
except ImportError:  # pragma: no cover - reported by the fixture below
    async_playwright = None

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 960}
# With BROWSER_SCREENSHOTS set, tests that take screenshots let the page fill up first.
SCREENSHOTS = os.environ.get("BROWSER_SCREENSHOTS")


def _missing() -> str | None:
    if async_playwright is None:
        return "the 'playwright' Python package is not installed (pip install playwright)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile (its own --user-data-dir) for one test."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need Chromium and Playwright: {missing}")
        pytest.skip(f"browser tests need Chromium and Playwright: {missing}")
    assert async_playwright is not None
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            await context.close()


class PageErrors:
    """Uncaught errors, console errors and failed responses of a page (the browser's own
    favicon request aside); a test asserts there were none."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on("console", self._console)
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        # A failed load is reported with its URL by _response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.messages.append(f"console: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.messages.append(f"HTTP {response.status}: {response.url}")


async def screenshot(page: Page, directory: Path, name: str, *, docs: bool = True) -> Path:
    """Save a full-page PNG as ``directory/name`` (and, with ``docs``, into
    ``BROWSER_SCREENSHOTS``)."""
    path = directory / name
    await page.screenshot(path=str(path), full_page=True, animations="disabled")
    if SCREENSHOTS and docs:
        _keep(path, Path(SCREENSHOTS))
    return path


def _keep(path: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, directory / path.name)
