"""The therapist console in a real Chromium (Playwright) against a real hub: sign in with the
login link, find a session in the history, read its report (the values of GET /report),
print it to PDF, follow a session live, sign out. No console errors, no CSP violations.
The README's screenshots are taken here (written to docs/screenshots/ with UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from hub.login_codes import issue_login_code
from tests.support import ROOT
from tests.support.console import WATCH_PAGE, wait_for
from tests.support.live import (
    TOKENS,
    HubProcess,
    create_session,
    metrics_frame,
    new_task_id,
    open_client,
    send,
    staff_headers,
    task_frame,
    wait_acked,
)
from tests.support.playwright import chromium, screenshot_path
from tests.support.streams import FRAMES, TASKS, session_script, stream

pytestmark = pytest.mark.slow

UPLOT = ROOT / "hub" / "static" / "vendor" / "uplot"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


class Console:
    def __init__(self, context: BrowserContext, page: Page, hub: HubProcess) -> None:
        self.context, self.page, self.hub = context, page, hub
        self.errors: list[str] = []
        page.on(
            "console",
            lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def problems(self) -> list[str]:
        seen: list[str] = await self.page.evaluate("() => window.__problems || []")
        return [*seen, *self.errors]

    async def sign_in(self) -> None:
        code = issue_login_code(TOKENS, "therapist", "dr-smith", 3600)
        await self.page.goto(f"{self.hub.http}/console/login#code={code}")
        await self.page.wait_for_url(f"{self.hub.http}/console")
        await self.page.get_by_text("Signed in as dr-smith").wait_for(timeout=10_000)


@pytest.fixture
async def console(browser: Browser, hub_server: HubProcess) -> AsyncIterator[Console]:
    context = await browser.new_context(
        locale="en-US", viewport={"width": 1200, "height": 900}, timezone_id="UTC"
    )
    await context.add_init_script(WATCH_PAGE)
    page = await context.new_page()
    try:
        yield Console(context, page, hub_server)
    finally:
        await context.close()


def test_vendored_uplot_is_the_pinned_release_with_its_licence() -> None:
    script = (UPLOT / "uPlot.iife.min.js").read_text(encoding="utf-8")
    assert script.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
    licence = (UPLOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("The MIT License (MIT)") and "Leon Sorokin" in licence
    assert (UPLOT / "uPlot.min.css").read_text(encoding="utf-8").startswith(".uplot")


async def streamed_session(hub: HubProcess) -> tuple[str, dict[str, Any]]:
    session_id = await create_session(hub.http, child_ref="child-0042")
    task_ids = [new_task_id() for _ in TASKS]
    await stream(hub, session_id, session_script(task_ids))
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        for seq in range(FRAMES + 1, FRAMES + 4):
            await send(mirror, metrics_frame(seq, sway_cm=1.5 + seq / 100))
        await wait_acked(mirror, FRAMES + 3)
    async with httpx.AsyncClient(base_url=hub.http, headers=staff_headers()) as http:
        response = await http.get(f"/sessions/{session_id}/report")
    response.raise_for_status()
    return session_id, response.json()


def shown(value: float, scale: float, decimals: int, unit: str) -> str:
    """What en-US Intl.NumberFormat shows for a value: the exact double, rounded half away
    from zero (Python's own format rounds half to even), with thousands separators."""
    exact = Decimal(value * scale).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
    return f"{exact:,} {unit}"


@pytest.mark.timeout(120)
async def test_sign_in_history_report_and_print(console: Console, tmp_path: Path) -> None:
    session_id, report = await streamed_session(console.hub)
    page = console.page
    await console.sign_in()

    # The history, searched by child, lists the session and links to its report.
    await page.goto(f"{console.hub.http}/console/sessions")
    await page.fill("#child", "child-0042")
    await page.press("#child", "Enter")
    row = page.locator("#sessions tr", has_text="child-0042")
    await row.first.wait_for(timeout=10_000)
    assert await row.count() == 1
    await row.get_by_role("link", name="Report").click()
    await page.wait_for_url(f"**/console/sessions/{session_id}")
    await page.wait_for_selector("body[data-ready=true]", timeout=20_000)

    # Every statistic on the page is the one GET /report gave, formatted with the catalogue.
    async with httpx.AsyncClient(base_url=console.hub.http, headers=staff_headers()) as http:
        catalogue = (await http.get("/catalogue")).json()["metrics"]
    checked = 0
    sections = [(t["task_id"], t["metrics"]) for t in report["tasks"]]
    sections.append(("outside", report["outside_tasks"]))
    for task_key, metrics in sections:
        for name, summary in metrics.items():
            info = catalogue[name]
            row = page.locator(f'tr[data-task="{task_key}"][data-metric="{name}"]')
            for stat in ("count", "min", "mean", "max", "last"):
                cell = row.locator(f'td[data-stat="{stat}"]')
                assert float(await cell.get_attribute("data-value") or "nan") == summary[stat]
                text = (await cell.inner_text()).strip()
                if stat == "count":
                    assert text == f"{summary['count']:,}"
                else:
                    want = shown(summary[stat], info["scale"], info["decimals"], info["unit"])
                    assert text.startswith(want), (name, stat, text, want)
                checked += 1
    assert checked == 5 * (3 * 3 + 1)
    # Coloured against the good range: stability 0.8 (80 %) is inside 70-100 %.
    stability = page.locator('tr[data-metric="stability"] td[data-stat="mean"]').first
    assert "good" in (await stability.get_attribute("class") or "")
    words = await page.locator("#completeness-words").inner_text()
    # Two mirror connections (the stream, then the frames outside tasks): one lost.
    assert words == (
        f"All {FRAMES + 3} frames the mirror sent were stored; none is missing."
        " The mirror's connection was lost once and made again."
    )
    # A chart per metric, drawn from the stored frames.
    charts = page.locator(".chart")
    assert await charts.count() == 4
    accuracy_points = await page.locator('.chart[data-metric="accuracy"]').get_attribute(
        "data-points"
    )
    assert int(accuracy_points or 0) == sum(
        t["metrics"]["accuracy"]["count"] for t in report["tasks"]
    )
    assert await page.locator(".chart canvas").count() == 4

    await page.screenshot(path=screenshot_path("console-report.png", tmp_path), full_page=True)
    await page.emulate_media(media="print")
    pdf = await page.pdf(format="A4", print_background=True)
    assert pdf.startswith(b"%PDF-") and len(pdf) > 10_000
    await page.emulate_media(media="screen")

    # The CSV export downloads through the page's token.
    async with page.expect_download() as download_info:
        await page.click("#export-csv")
    download = await download_info.value
    csv_path = await download.path()
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("seq") or "seq" in lines[0]
    assert len(lines) > FRAMES

    # The child's progress page: this one visit's mean of each exercise's metrics.
    await page.get_by_role("link", name="child-0042").first.click()
    await page.wait_for_url("**/console/children/child-0042")
    await page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    for task in report["tasks"]:
        for name, summary in task["metrics"].items():
            cell = page.locator(
                f'section[data-task="{task["task_name"]}"] tr[data-session="{session_id}"] '
                f'td[data-metric="{name}"]'
            )
            assert float(await cell.get_attribute("data-value") or "nan") == pytest.approx(
                summary["mean"], rel=1e-12
            )
    assert await page.locator("section.task .chart canvas").count() == 3 * 3
    await page.screenshot(path=screenshot_path("console-progress.png", tmp_path), full_page=True)

    assert await console.problems() == []

    # Sign out: the console is closed to this browser.
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(re.compile(r".*/console/login$"))
    await page.goto(f"{console.hub.http}/console/sessions")
    assert "/console/login?next=" in page.url
    assert not [c for c in await console.context.cookies() if c["name"] == "hub_console"]


@pytest.mark.timeout(120)
async def test_live_view_draws_every_frame_and_resumes(console: Console, tmp_path: Path) -> None:
    session_id = await create_session(console.hub.http, child_ref="child-0043")
    page = console.page
    await console.sign_in()
    task_id = new_task_id()
    base = time.time()
    sent: list[int] = []

    async def stream_frames(mirror: Any, count: int) -> None:
        # 30 frames/s of device time, sent as fast as the socket takes them.
        for _ in range(count):
            seq = sent[-1] + 1
            frame = metrics_frame(seq, accuracy=(seq % 50) / 50, max_angle=120 + seq % 60)
            frame.update(ts=base + seq / 30, task_id=task_id)
            await send(mirror, frame)
            sent.append(seq)
        await wait_acked(mirror, sent[-1])

    async with open_client(console.hub.ws, session_id, "mirror") as (mirror, _):
        start = task_frame(1, task_id, "started", "in_progress", task_name="squat")
        start["ts"] = base
        await send(mirror, start)
        sent.append(1)
        await wait_acked(mirror, 1)
        await page.goto(f"{console.hub.http}/console/live/{session_id}")
        await wait_for(page, "window.consoleLive && window.consoleLive.client.state === 'open'")
        assert await page.locator("#connection").inner_text() == "Live"

        await stream_frames(mirror, 90)
        assert await wait_for(page, "window.consoleLive.received() === 90")
        for metric in ("accuracy", "max_angle"):
            assert await page.evaluate(f"window.consoleLive.points('{metric}')") == 90
        await page.locator("#current", has_text="squat").wait_for(timeout=10_000)
        assert "mirror is connected" in await page.locator("#mirror").inner_text()
        # Watchers in words, this page being one of them.
        watchers = page.locator("#watchers")
        await expect(watchers).to_have_text("You are the only one watching.")
        async with open_client(console.hub.ws, session_id, "watch"):
            await expect(watchers).to_have_text("You and 1 other are watching.")
        await expect(watchers).to_have_text("You are the only one watching.")
        path = screenshot_path("console-live.png", tmp_path)
        await page.screenshot(path=path, full_page=True)

        # The network of the console's computer is cut while 2 s of frames are stored.
        await console.context.set_offline(True)
        await wait_for(page, "window.consoleLive.client.state === 'offline'")
        assert "offline" in await page.locator("#connection").inner_text()
        await stream_frames(mirror, 60)
        await console.context.set_offline(False)
        assert await wait_for(page, "window.consoleLive.received() === 150")
        await page.locator("#resumed").wait_for(state="visible", timeout=10_000)
        banner = await page.locator("#resumed").inner_text()
        assert "caught up 2.0 s of data" in banner, banner

    # Every frame after the page joined, once and in order: the chart has no hole.
    seqs = await page.evaluate("window.consoleLive.seqs()")
    assert seqs == sent[1:]
    assert await page.evaluate("window.consoleLive.points('accuracy')") == 150
    assert await console.problems() == []


@pytest.mark.timeout(120)
async def test_live_view_main_thread_stays_light_at_30_frames_per_second(
    console: Console,
) -> None:
    """DevTools' TaskDuration (main-thread busy time) over 10 s of a 30 frames/s stream with
    three metrics stays under 25 % of one core."""
    session_id = await create_session(console.hub.http)
    page = console.page
    await console.sign_in()
    async with open_client(console.hub.ws, session_id, "mirror") as (mirror, _):
        await page.goto(f"{console.hub.http}/console/live/{session_id}")
        await wait_for(page, "window.consoleLive && window.consoleLive.client.state === 'open'")
        cdp = await console.context.new_cdp_session(page)
        await cdp.send("Performance.enable")

        async def busy() -> float:
            metrics = (await cdp.send("Performance.getMetrics"))["metrics"]
            return float(next(m["value"] for m in metrics if m["name"] == "TaskDuration"))

        before, started = await busy(), time.monotonic()
        loop = asyncio.get_running_loop()
        first = loop.time()
        for seq in range(1, 301):
            # Paced to the mirror's rate: frame n leaves at n/30 s (a rate, not a wait for
            # an event).
            await asyncio.sleep(max(0.0, first + seq / 30 - loop.time()))
            frame = metrics_frame(seq, accuracy=(seq % 50) / 50, stability=0.8, sway_cm=1.0)
            await send(mirror, frame)
        await wait_acked(mirror, 300)
        assert await wait_for(page, "window.consoleLive.received() === 300")
        share = (await busy() - before) / (time.monotonic() - started)
        await cdp.detach()
    print(f"live view main thread busy: {share:.1%} of one core at 30 frames/s")
    assert share < 0.25, share
    assert await console.problems() == []
