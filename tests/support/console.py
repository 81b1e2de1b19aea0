"""What the console's browser tests share: the page-side CSP watcher, reading what the page
reported, and waiting on page state (the console's CSP allows no string evaluation, so waits
are function expressions that Chromium polls each frame)."""

from __future__ import annotations

import re
from typing import Any

from playwright.async_api import Page

# An init script: collects the page's CSP violations (the event) in window.__problems.
WATCH_PAGE = """
window.__problems = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__problems.push(`CSP ${e.violatedDirective} ${e.blockedURI}`));
"""

# What Chromium logs by itself while the hub is down (the page's reconnect attempts meet a
# closed port): expected during a restart, and nothing the page did wrong.
HUB_DOWN = re.compile(r"ERR_CONNECTION_REFUSED|WebSocket connection to .* failed")


async def problems(page: Page, errors: list[str]) -> list[str]:
    """CSP violations the page saw, and the console errors in `errors` but Chromium's own
    lines while the hub is down."""
    seen: list[str] = await page.evaluate("() => window.__problems || []")
    return [*seen, *(e for e in errors if not HUB_DOWN.search(e))]


async def wait_for(page: Page, expression: str, timeout_s: float = 30) -> Any:
    """Wait until the expression is truthy in the page; its value."""
    handle = await page.wait_for_function(
        f"() => ({expression})", timeout=timeout_s * 1000, polling="raf"
    )
    return await handle.json_value()
