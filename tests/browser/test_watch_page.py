"""The browser watcher page, driven in headless Chromium against a real hub.

`--dump-dom` with a virtual-time budget does not wait for a WebSocket, so this test drives
Chromium through the DevTools protocol instead and waits until the page shows the values
(or a deadline passes): the page is seen as a person would see it, after its socket talked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.browser import chromium
from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    send,
    task_frame,
    token,
    wait_acked,
)

DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


@contextlib.asynccontextmanager
async def browser_page(workdir: Path) -> AsyncIterator[ClientConnection]:
    """A DevTools connection to a blank page of a fresh headless Chromium."""
    proc = subprocess.Popen(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            f"--user-data-dir={workdir / 'profile'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while not (found := DEVTOOLS.search(await asyncio.to_thread(proc.stderr.readline))):
                assert proc.poll() is None, "chromium exited before DevTools listened"
        http_base = "http://" + found.group(1).split("/")[2]
        async with httpx.AsyncClient() as client:
            targets = (await client.get(f"{http_base}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        async with connect(page["webSocketDebuggerUrl"], max_size=2**24) as cdp:
            yield cdp
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


_ids = itertools.count(1)


async def cdp_call(cdp: ClientConnection, method: str, **params: Any) -> dict[str, Any]:
    call_id = next(_ids)
    await cdp.send(orjson.dumps({"id": call_id, "method": method, "params": params}).decode())
    while True:
        message = orjson.loads(await cdp.recv())
        if message.get("id") == call_id:
            assert "error" not in message, message
            result: dict[str, Any] = message["result"]
            return result


async def page_text(cdp: ClientConnection) -> str:
    result = await cdp_call(
        cdp, "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
    )
    return str(result["result"].get("value", ""))


@pytest.mark.slow
async def test_page_shows_live_values_and_tasks(hub_server: HubProcess, tmp_path: Path) -> None:
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
        task_id = "0b9f6b1e-8f0e-4c1a-9d55-3e4a8f7c2b10"
        await send(mirror, task_frame(1, task_id, "started", "in_progress", task_name="squat"))
        await send(mirror, metrics_frame(2, accuracy=0.875, max_angle=151.25))
        await wait_acked(mirror, 2)
        # The mirror stays connected: the page joins a live session and gets its snapshot.
        url = f"{hub_server.http}/watch?session={session_id}#token={token('therapist')}"
        async with browser_page(tmp_path) as cdp:
            await cdp_call(cdp, "Page.navigate", url=url)
            text = ""
            async with asyncio.timeout(30):
                while "max_angle" not in text:
                    text = await page_text(cdp)
                    await asyncio.sleep(0.1)
            assert "accuracy" in text and "0.875" in text, text
            assert "151.250" in text
            assert "squat: in_progress" in text
            assert "mirror connected" in text

            # Live: a new frame shows up without a reload.
            await send(mirror, metrics_frame(3, accuracy=0.5))
            async with asyncio.timeout(30):
                while "0.500" not in text:
                    text = await page_text(cdp)
                    await asyncio.sleep(0.1)
            # The token stayed in the fragment and was wiped from the address bar.
            location = await cdp_call(
                cdp, "Runtime.evaluate", expression="location.href", returnByValue=True
            )
            assert "token" not in location["result"]["value"]
