"""The client module in a real Chromium against real hubs: the demo mirror page streams with
its outbox in IndexedDB through a page reload and a 10 s network cut, and a WatcherClient
shows every seq once, in order, through a hub restart and forced 4008 closes."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import Page

from tests.support import ROOT
from tests.support.js import stored_seqs
from tests.support.live import HubProcess, staff_headers, token
from tests.support.playwright import chromium

sys.path.insert(0, str(ROOT / "client_examples"))
from mirror_client import MirrorClient

pytestmark = pytest.mark.slow


async def create_session_with_token(http: str) -> tuple[str, str]:
    async with httpx.AsyncClient(headers=staff_headers("therapist")) as client:
        response = await client.post(
            f"{http}/sessions", json={"child_name": "Demo", "child_age": 7}
        )
    response.raise_for_status()
    created = response.json()
    return created["id"], created["mirror_token"]


async def wait_for(page: Page, expression: str, timeout_s: float = 30) -> Any:
    """Wait until the expression is truthy in the page (Chromium polls it each frame)."""
    # As a function, not a string: the page's CSP forbids eval, and Playwright evals strings.
    handle = await page.wait_for_function(
        f"() => ({expression})", timeout=timeout_s * 1000, polling="raf"
    )
    return await handle.json_value()


async def demo_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => { const c = window.mirrorDemo.client; return c && {
            state: c.state, lastSeq: c.lastSeq, acked: c.ackedSeq, unacked: c.unacked,
            log: window.mirrorDemo.log }; }"""
    )
    return state


@pytest.mark.timeout(150)
async def test_demo_mirror_survives_reload_and_network_cut(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    hub = await start_hub()
    session_id, mirror_token = await create_session_with_token(hub.http)
    frames = 900  # 30 s at 30 frames/s
    url = f"{hub.http}/demo/mirror?session={session_id}&frames={frames}#token={mirror_token}"
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(url)
        assert "#token" not in page.url, "the token must leave the address bar"
        await wait_for(page, "window.mirrorDemo.client && window.mirrorDemo.client.ackedSeq >= 90")

        # A reload mid-stream: the outbox and the seq counter come back from IndexedDB.
        await page.reload()
        resumed = await wait_for(
            page,
            """(() => { const c = window.mirrorDemo.client;
                        return c && c.state === 'open' && c.lastSeq > 90 && c.lastSeq; })()""",
        )
        assert any("resumed from the store" in e["text"] for e in (await demo_state(page))["log"])
        await wait_for(page, f"window.mirrorDemo.client.ackedSeq >= {resumed + 60}")

        # The network is cut for 10 s (DevTools' offline emulation), then comes back.
        cdp = await page.context.new_cdp_session(page)
        offline = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
        await cdp.send("Network.enable")
        await cdp.send("Network.emulateNetworkConditions", {"offline": True, **offline})
        await wait_for(page, "window.mirrorDemo.client.state === 'offline'", timeout_s=15)
        cut_at = (await demo_state(page))["lastSeq"]
        await asyncio.sleep(10)  # the length of the outage is the scenario, not a sync point
        during = await demo_state(page)
        assert during["state"] == "offline" and during["lastSeq"] > cut_at + 100, during
        await cdp.send("Network.emulateNetworkConditions", {"offline": False, **offline})
        online_at = time.time() * 1000
        reopened_at = await wait_for(
            page,
            f"""(() => {{ const e = window.mirrorDemo.log.find(
                    (e) => e.t >= {online_at} - 50 && e.text === 'state open');
                 return e && e.t; }})()""",
            timeout_s=10,
        )
        reconnect_ms = reopened_at - online_at
        print(f"reconnected {reconnect_ms:.0f} ms after coming online")
        assert reconnect_ms <= 2000

        await wait_for(page, "window.mirrorDemo.client.state === 'ended'", timeout_s=60)
        final = await demo_state(page)
        assert final["lastSeq"] == frames and final["unacked"] == 0, final
        assert (await page.text_content("#state")) == "ended"
    assert await stored_seqs(database_url, session_id) == list(range(1, frames + 1))


WATCH_SCRIPT = """async ([sessionId, token]) => {
  const { WatcherClient } = await import('/client/mirror-hub.js');
  const w = new WatcherClient({ url: location.origin, sessionId, token, since: 0,
                                backoffMaxMs: 500 });
  window.watch = { seen: [], closes: [], ended: null, client: w };
  w.addEventListener('frame', (e) => window.watch.seen.push(e.detail.seq));
  w.addEventListener('close', (e) => window.watch.closes.push(e.detail.code));
  w.addEventListener('ended', (e) => { window.watch.ended = e.detail.lastSeq; });
  w.start();
}"""


@pytest.mark.timeout(150)
async def test_watcher_in_chromium_sees_every_seq_once_through_restart_and_4008(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    # A tiny per-watcher queue: every burst of the mirror overflows it, so the hub closes the
    # watcher with 4008 and the watcher must resume with `since`.
    env = {"HUB_WATCHER_QUEUE_FRAMES": "8"}
    hub = await start_hub(**env)
    session_id, _ = await create_session_with_token(hub.http)
    mirror = MirrorClient(hub.http, session_id, token=token("mirror", session_id))
    await mirror.start()
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.http}/demo/mirror")  # any page of the hub's origin
        await page.evaluate(WATCH_SCRIPT, [session_id, token("therapist")])
        await wait_for(page, "window.watch.client.state === 'open'")
        total = 0
        for burst in range(3):
            for i in range(400):
                await mirror.send_metrics({"accuracy": (i % 100) / 100, "burst": burst})
            total += 400
            await mirror.wait_acked(total, timeout=30)
            await wait_for(page, f"window.watch.seen.length >= {total}")
            if burst == 1:  # a hub restart (SIGKILL) between bursts
                hub.kill()
                hub = await start_hub(port=hub.port, **env)
        await mirror.end(timeout=30)
        await mirror.close()
        await wait_for(page, f"window.watch.ended === {total}")
        watch = await page.evaluate(
            "({ seen: window.watch.seen, closes: window.watch.closes,"
            " gaps: window.watch.client.gaps, dups: window.watch.client.duplicates })"
        )
    print(f"closes {watch['closes']}, wire gaps {watch['gaps']}, duplicates {watch['dups']}")
    assert watch["seen"] == list(range(1, total + 1)), "the application saw a gap or a repeat"
    assert 4008 in watch["closes"], watch["closes"]
    assert 1006 in watch["closes"] or 1012 in watch["closes"], watch["closes"]
    assert await stored_seqs(database_url, session_id) == list(range(1, total + 1))


@pytest.mark.timeout(60)
async def test_demo_page_with_a_staff_token_creates_a_session_and_refuses_to_write_others(
    hub_server: HubProcess, database_url: str
) -> None:
    staff = token("therapist")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub_server.http}/demo/mirror#token={staff}")
        await wait_for(page, "window.mirrorDemo.client && window.mirrorDemo.client.ackedSeq >= 30")
        assert "session=" in page.url and staff not in page.url
        # A staff token may not write an existing session: the page says what to do instead.
        other, _ = await create_session_with_token(hub_server.http)
        await page.goto(f"{hub_server.http}/demo/mirror?session={other}#token={staff}")
        notice = await wait_for(
            page,
            "!document.getElementById('notice').hidden"
            " && document.getElementById('notice').textContent",
        )
        assert "only the session's mirror_token" in notice
    assert await stored_seqs(database_url, other) == []


MIRROR_SCRIPT = """async ([sessionId, token]) => {
  const { MirrorClient } = await import('/client/mirror-hub.js');
  // A long backoff, so that only the tab coming back can bring the reconnect forward.
  const c = new MirrorClient({ url: location.origin, sessionId, token,
                               backoffInitialMs: 30000, backoffMaxMs: 30000 });
  window.probe = { client: c, opened: [] };
  c.addEventListener('welcome', () => window.probe.opened.push(Date.now()));
  await c.start();
  for (let i = 1; i <= 50; i++) c.send({ type: 'metrics', values: { accuracy: i / 100 } });
  await c.flush();
}"""


@pytest.mark.timeout(90)
async def test_tab_coming_back_reconnects_at_once(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    hub = await start_hub()
    session_id, mirror_token = await create_session_with_token(hub.http)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.http}/demo/mirror")  # any page of the hub's origin
        await page.evaluate(MIRROR_SCRIPT, [session_id, mirror_token])
        for _ in range(3):
            hub.kill()  # the socket of a "background tab" dies
            await wait_for(page, "window.probe.client.state === 'backoff'")
            hub = await start_hub(port=hub.port)
            # Full jitter may have drawn a short wait and reconnected already; then again.
            if await page.evaluate("window.probe.client.state") == "backoff":
                break
            await wait_for(page, "window.probe.client.state === 'open'")
        assert await page.evaluate("window.probe.client.state") == "backoff"
        # Headless Chromium never hides a tab: tell the page it became visible again, as the
        # browser does when the user comes back to it.
        shown_at = await page.evaluate(
            """() => { Object.defineProperty(document, 'visibilityState',
                                             { value: 'visible', configurable: true });
                      document.dispatchEvent(new Event('visibilitychange'));
                      return Date.now(); }"""
        )
        opened_at = await wait_for(
            page, f"window.probe.opened.find((t) => t >= {shown_at})", timeout_s=10
        )
        assert opened_at - shown_at <= 2000
        await page.evaluate(
            "async () => { window.probe.client.send({ type: 'metrics', values: { accuracy: 1 } });"
            " await window.probe.client.end(); }"
        )
    assert await stored_seqs(database_url, session_id) == list(range(1, 52))
