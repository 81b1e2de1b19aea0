"""The console's lobby in a real Chromium (Playwright) against a real hub process and real
PostgreSQL: a session's tile appears within a second of its mirror connecting and its values
update; the hub is SIGKILLed and started again on the same port and database, and the tile
says "reconnecting" until the mirror is back, then live again; the mirror's `end` moves the
session to today's ended sessions. No console errors, no CSP violations. The README's
screenshot is taken here (written to docs/screenshots/ with UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from hub.login_codes import issue_login_code
from tests.support import ROOT
from tests.support.console import WATCH_PAGE, problems
from tests.support.live import (
    TOKENS,
    HubProcess,
    create_session,
    new_task_id,
    open_client,
    token,
)
from tests.support.playwright import chromium, screenshot_path

sys.path.insert(0, str(ROOT / "client_examples"))
from mirror_client import MirrorClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.mark.timeout(120)
async def test_lobby_tiles_follow_sessions_across_a_hub_restart(
    browser: Browser, start_hub: Callable[..., Awaitable[HubProcess]], tmp_path: Path
) -> None:
    hub = await start_hub()
    context = await browser.new_context(
        locale="en-US", viewport={"width": 1200, "height": 900}, timezone_id="UTC"
    )
    await context.add_init_script(WATCH_PAGE)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    mirrors: list[MirrorClient] = []
    try:
        code = issue_login_code(TOKENS, "therapist", "dr-smith", 3600)
        await page.goto(f"{hub.http}/console/login#code={code}")
        await page.wait_for_url(f"{hub.http}/console")
        await page.wait_for_selector(
            "#lobby[data-connected=true]", timeout=10_000, state="attached"
        )
        assert await page.locator("#lobby .tile").count() == 0

        # A quiet second session first, so the picture has more than one tile.
        other_id = await create_session(hub.http, child_name="Ben", child_ref="child-0107")
        other = MirrorClient(hub.http, other_id, token=token("mirror", other_id))
        mirrors.append(other)
        await other.start()
        await other.send_metrics({"stability": 0.55, "sway_cm": 4.2})
        await other.send_metrics({"stability": 0.62, "sway_cm": 3.6})
        await page.locator(f"#lobby .tile[data-session='{other_id}']").wait_for(timeout=5_000)

        session_id = await create_session(hub.http, child_name="Ada", child_ref="child-0142")
        tile = page.locator(f"#lobby .tile[data-session='{session_id}']")
        mirror = MirrorClient(hub.http, session_id, token=token("mirror", session_id))
        mirrors.append(mirror)
        await mirror.start()
        await mirror.wait_connected(timeout=10)
        connected = time.monotonic()
        await tile.wait_for(timeout=5_000)
        appeared = time.monotonic() - connected
        print(f"tile appeared {appeared:.3f} s after the mirror connected")
        assert appeared < 1.0, f"tile appeared {appeared:.2f} s after the mirror connected"
        await expect(tile.locator("h3")).to_have_text("Ada")
        await expect(page.locator("#lobby-news")).to_have_text("Ada: session live")
        await expect(tile).to_have_attribute("data-state", "live")
        await expect(tile.locator(".state")).to_contain_text("Mirror connected")
        await expect(tile.locator(".task")).to_have_text("No task yet")

        # Values and the task, formatted with the catalogue; then they change.
        task_id = new_task_id()
        await mirror.send_task(task_id, "raise_hand", "started", "in_progress")
        accuracy_value = tile.locator("dd[data-metric=accuracy] .value")
        # Each value waited for on the page, so each is an update of its own (an overview
        # conflates the values in between) and the sparkline gets its points.
        for accuracy, angle in ((0.62, 141.0), (0.81, 150.5), (0.74, 147.0), (0.9, 150.0)):
            await mirror.send_metrics({"accuracy": accuracy, "max_angle": angle}, task_id)
            await expect(accuracy_value).to_have_text(f"{accuracy * 100:.0f} %", timeout=5_000)
        await expect(tile.locator("dd[data-metric=accuracy]")).to_have_class(re.compile("good"))
        await expect(tile.locator("dd[data-metric=max_angle] .value")).to_have_text("150.0 °")
        await expect(tile.locator(".task")).to_have_text("raise_hand: in progress")
        await mirror.send_metrics({"accuracy": 0.42}, task_id)
        await expect(accuracy_value).to_have_text("42 %", timeout=5_000)
        await expect(tile.locator("dd[data-metric=accuracy]")).to_have_class(re.compile("poor"))
        assert await tile.locator("dd[data-metric=accuracy] svg polyline").count() == 1
        await expect(page.locator("#lobby .tile")).to_have_count(2)
        await expect(page.locator("#lobby .tile[data-session='" + other_id + "'] h3")).to_have_text(
            "Ben"
        )
        await expect(tile.get_by_role("link")).to_have_attribute(
            "href", f"/console/live/{session_id}"
        )
        await page.screenshot(path=screenshot_path("console-lobby.png", tmp_path), full_page=True)
        assert await problems(page, errors) == []

        # The watchers a tile counts are the others: the lobby's own subscription is not one.
        state = tile.locator(".state")
        await expect(state).to_have_text("Mirror connected")
        async with open_client(hub.ws, session_id, "watch"):
            await expect(state).to_have_text("Mirror connected · 1 other watching")
        await expect(state).to_have_text("Mirror connected")

        # The hub dies: every tile says reconnecting, in words too.
        hub.kill()
        await expect(tile).to_have_attribute("data-state", "reconnecting", timeout=5_000)
        await expect(tile.locator(".state")).to_contain_text("reconnecting")
        await page.wait_for_selector(
            "#lobby[data-connected=false]", timeout=5_000, state="attached"
        )

        # Started again on the same port and database: the page reconnects by itself, the
        # mirrors reconnect, and the tile is live again and keeps updating.
        await start_hub(port=hub.port)
        await page.wait_for_selector(
            "#lobby[data-connected=true]", timeout=30_000, state="attached"
        )
        await mirror.wait_connected(timeout=30)
        await expect(tile).to_have_attribute("data-state", "live", timeout=15_000)
        await expect(tile.locator(".state")).to_contain_text("Mirror connected")
        await mirror.send_metrics({"accuracy": 0.77}, task_id)
        await expect(accuracy_value).to_have_text("77 %", timeout=5_000)
        await expect(page.locator("#lobby .tile")).to_have_count(2)

        # The mirror ends the session: its tile leaves, and today's list says ended.
        await mirror.send_task(task_id, "raise_hand", "finished", "success", 12.0)
        await mirror.end(timeout=30)
        await expect(tile).to_have_count(0, timeout=5_000)
        await expect(page.locator("#lobby-news")).to_have_text("Ada: session ended")
        row = page.locator(f"#today tr[data-session='{session_id}']")
        await expect(row.locator("td").nth(3)).to_have_text("ended", timeout=5_000)
        await expect(page.locator("#lobby .tile")).to_have_count(1)

        # Keyboard: the tile's link is reachable with Tab.
        for _ in range(20):
            await page.keyboard.press("Tab")
            focused = await page.evaluate("() => document.activeElement?.getAttribute('href')")
            if focused == f"/console/live/{other_id}":
                break
        else:
            pytest.fail("the tile's link is not reachable with the keyboard")
        assert await problems(page, errors) == []
    finally:
        for client in mirrors:
            await client.close()
        await context.close()
