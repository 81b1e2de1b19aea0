"""Playwright driving the system Chromium (browsers are not downloaded: the one on PATH is used,
found as tests/support/browser.py finds it — a failure under CI=true, a skip elsewhere)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, async_playwright

from tests.support import ROOT
from tests.support.browser import chromium as chromium_executable

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    executable = chromium_executable()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a test saves the screenshot `name`: the README's docs/screenshots with
    UPDATE_SCREENSHOTS=1 (to refresh them), else the test's own directory, so that running
    the tests leaves the checkout as it was."""
    refresh = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    folder = ROOT / "docs" / "screenshots" if refresh else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
