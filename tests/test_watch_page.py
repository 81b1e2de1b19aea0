"""The browser watcher page, rendered in headless Chromium against a real hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.live_support import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    send,
    task_frame,
    token,
    wait_acked,
)
from tests.test_docs_render import render


@pytest.mark.slow
async def test_page_shows_live_values_and_tasks(hub_server: HubProcess, tmp_path: Path) -> None:
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
        task_id = "0b9f6b1e-8f0e-4c1a-9d55-3e4a8f7c2b10"
        await send(mirror, task_frame(1, task_id, "started", "in_progress", task_name="squat"))
        await send(mirror, metrics_frame(2, accuracy=0.875, max_angle=151.25))
        await wait_acked(mirror, 2)
        # The mirror stays connected: the page joins a live session and gets its snapshot.
        # Headless Chromium's virtual time does not wait for a WebSocket, so on a busy machine
        # the DOM can be dumped before the snapshot arrived: render again, a few times at most.
        url = f"{hub_server.http}/watch?session={session_id}#token={token('therapist')}"
        for attempt in range(5):
            rendered = await asyncio.to_thread(render, url, tmp_path / str(attempt))
            if "accuracy" in rendered.dom:
                break
    dom = rendered.dom
    assert "accuracy" in dom and "0.875" in dom, rendered.log
    assert "max_angle" in dom and "151.250" in dom
    assert "squat: in_progress" in dom
    assert "mirror connected" in dom
