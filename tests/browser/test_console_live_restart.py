"""The console's live view in a real Chromium (Playwright) against a real hub process and real
PostgreSQL, while the mirror streams at 30 frames/s: the hub is SIGKILLed mid-stream and
started again on the same port and database; the mirror resends what was not acked, the page
resumes, and once the mirror has ended the session the page has drawn every stored frame
exactly once, in order, with no gap. No console errors (other than Chromium's own
connection-refused messages while the hub is down), no CSP violations."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from playwright.async_api import Browser

from hub.login_codes import issue_login_code
from hub.storage.frames import asyncpg_dsn
from tests.support import ROOT
from tests.support.console import WATCH_PAGE, problems, wait_for
from tests.support.live import TOKENS, HubProcess, create_session, new_task_id, token
from tests.support.playwright import chromium

sys.path.insert(0, str(ROOT / "client_examples"))
from mirror_client import MirrorClient

pytestmark = pytest.mark.slow


RATE = 30  # frames/s, the mirror's rate
FRAMES = 240  # 8 s of stream
KILL_AFTER = 60  # frames the page has drawn before the hub is killed


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def stored_seqs(database_url: str, session_id: str) -> list[int]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
        )
    finally:
        await conn.close()
    return [int(r["seq"]) for r in rows]


@pytest.mark.timeout(120)
async def test_live_view_has_no_gap_across_a_hub_sigkill(
    browser: Browser, start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
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
    session_id = await create_session(hub.http, child_name="Kim", child_ref="child-0242")
    mirror = MirrorClient(hub.http, session_id, token=token("mirror", session_id))
    streamer: asyncio.Task[None] | None = None
    try:
        code = issue_login_code(TOKENS, "therapist", "dr-smith", 3600)
        await page.goto(f"{hub.http}/console/login#code={code}")
        await page.wait_for_url(f"{hub.http}/console")
        await page.goto(f"{hub.http}/console/live/{session_id}")
        await wait_for(page, "window.consoleLive && window.consoleLive.client.state === 'open'", 15)

        await mirror.start()
        await mirror.wait_connected(timeout=10)
        task_id = new_task_id()
        await mirror.send_task(task_id, "squat", "started", "in_progress")

        async def stream() -> None:
            loop = asyncio.get_running_loop()
            first = loop.time()
            for n in range(1, FRAMES + 1):
                # Paced to the mirror's rate: frame n leaves at n/30 s (a rate, not a wait
                # for an event). The mirror queues while the hub is down.
                await asyncio.sleep(max(0.0, first + n / RATE - loop.time()))
                await mirror.send_metrics({"accuracy": (n % 50) / 50, "sway_cm": 1.0}, task_id)

        streamer = asyncio.create_task(stream())
        await wait_for(page, f"window.consoleLive.received() >= {KILL_AFTER}", 15)

        # Mid-stream the hub dies; the page notices and tries again.
        hub.kill()
        assert not streamer.done(), "the stream ended before the hub was killed"
        await wait_for(page, "window.consoleLive.client.state !== 'open'", 10)

        # Frames the mirror queues while no hub is up reach the page only by resuming.
        drawn_before = await page.evaluate("window.consoleLive.seqs().at(-1)")
        # Started again on the same port and database: the mirror resends what was not acked,
        # the page resumes from its last seq.
        await start_hub(port=hub.port)
        await mirror.wait_connected(timeout=30)
        await asyncio.wait_for(streamer, timeout=60)
        last = await mirror.end(timeout=30)
        assert mirror.reconnects >= 1

        stored = await stored_seqs(database_url, session_id)
        assert stored, "nothing stored"
        assert stored[-1] >= last
        await page.locator("#ended").wait_for(state="visible", timeout=30_000)
        await wait_for(page, f"window.consoleLive.seqs().length >= {len(stored)}", 30)
        rendered = await page.evaluate("window.consoleLive.seqs()")
        print(
            f"page drew up to seq {drawn_before} before the restart, {len(rendered)} in all;"
            f" mirror reconnects {mirror.reconnects}"
        )
        assert drawn_before < stored[-1]
        # Every stored frame drawn exactly once, in order: no gap, no duplicate.
        assert rendered == stored
        assert stored == list(range(1, len(stored) + 1))
        assert await page.evaluate("window.consoleLive.received()") == FRAMES
        assert await page.evaluate("window.consoleLive.points('accuracy')") == FRAMES
        assert await page.evaluate("window.consoleLive.client.reconnects") >= 1
        assert await problems(page, errors) == []
    finally:
        if streamer is not None and not streamer.done():
            streamer.cancel()
        await mirror.close()
        await context.close()
