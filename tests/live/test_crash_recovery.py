"""Acceptance: the hub is SIGKILLed mid-stream and started again. The mirror client reconnects
and resends; storage ends with frames 1..N exactly once; a watcher that rejoins with `since`
sees no gap and no duplicate."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import asyncpg

from tests.support.live import ROOT, HubProcess, create_session, follow, token

sys.path.insert(0, str(ROOT / "client_examples"))
from mirror_client import MirrorClient

FRAMES = 1200
KILL_AFTER_ACKED = 300


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    hub = await start_hub()
    session_id = await create_session(hub.http)
    seen: list[int] = []
    closes: list[int] = []
    watcher = asyncio.create_task(follow(hub.ws, session_id, FRAMES, seen, closes))

    client = MirrorClient(hub.http, session_id, token=token("mirror", session_id))
    await client.start()
    for i in range(FRAMES // 2):
        await client.send_metrics({"accuracy": (i % 100) / 100, "stability": 0.7})
    await client.wait_acked(KILL_AFTER_ACKED, timeout=30)
    hub.kill()  # SIGKILL: no flush, no goodbye
    print(f"killed with {client.unacked} frames unacked")

    # The mirror keeps producing while the hub is down; the client keeps the frames.
    for i in range(FRAMES // 2, FRAMES):
        await client.send_metrics({"accuracy": (i % 100) / 100, "stability": 0.7})
    restarted = await start_hub(port=hub.port)
    await client.wait_acked(FRAMES, timeout=60)
    assert client.reconnects >= 1
    await client.close()
    await asyncio.wait_for(asyncio.shield(watcher), 60)
    await watcher

    assert seen == list(range(1, FRAMES + 1)), "watcher saw a gap or a duplicate"
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
        )
    finally:
        await conn.close()
    assert [r["seq"] for r in rows] == list(range(1, FRAMES + 1))
    assert "Traceback" not in restarted.logs()
