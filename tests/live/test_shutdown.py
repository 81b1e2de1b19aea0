"""Acceptance: SIGTERM stores and acks every buffered frame, then closes sockets with 1012."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
from websockets.exceptions import ConnectionClosed

from tests.support.live import HubProcess, create_session, metrics_frame, open_client, recv, send

# This test's mirror sends one frame per message as fast as it can, far above a real
# mirror's 30 a second: lift the per-connection rate limit for it.
UNLIMITED = {"HUB_WS_MAX_MESSAGES_PER_S": "1000000"}
FRAMES = 400


async def test_sigterm_flushes_acks_and_closes_1012(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    # Flushing only by size, and a size never reached: every frame is still buffered at SIGTERM.
    hub = await start_hub(
        HUB_FLUSH_INTERVAL_MS="600000", HUB_FLUSH_MAX_FRAMES="100000", **UNLIMITED
    )
    session_id = await create_session(hub.http)
    async with (
        open_client(hub.ws, session_id, "mirror") as (mirror, _),
        open_client(hub.ws, session_id, "watch") as (watcher, _),
    ):
        assert (await recv(watcher))["type"] == "snapshot"
        for seq in range(1, FRAMES + 1):
            await send(mirror, metrics_frame(seq))
        # The watcher seeing the last frame proves the hub accepted all of them.
        while (await recv(watcher)).get("seq") != FRAMES:
            pass
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"{hub.http}/health")).json()
        assert health["live"]["buffered_frames"] == FRAMES  # nothing stored, nothing acked yet

        hub.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        acks = []
        try:
            while True:
                message = await recv(mirror, timeout=20)
                if message["type"] == "ack":
                    acks.append(message["seq"])
        except ConnectionClosed as closed:
            mirror_close = closed.rcvd.code if closed.rcvd else None
        try:
            while True:
                await recv(watcher, timeout=20)
        except ConnectionClosed as closed:
            watcher_close = closed.rcvd.code if closed.rcvd else None

    assert acks and acks[-1] == FRAMES
    assert mirror_close == 1012
    assert watcher_close == 1012
    # A stop asked for is a clean exit (systemd and container runtimes stop with SIGTERM).
    assert await asyncio.to_thread(hub.proc.wait, 30) == 0  # type: ignore[union-attr]
    assert "Traceback" not in hub.logs()
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        seqs = await conn.fetch(
            "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
        )
    finally:
        await conn.close()
    assert [r["seq"] for r in seqs] == list(range(1, FRAMES + 1))
