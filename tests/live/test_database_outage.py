"""Acceptance: PostgreSQL stops mid-stream. Watchers keep watching, the buffer holds to its bound,
mirrors are paused (not dropped), and when PostgreSQL returns everything is stored and acked.

The hub under test gets its own embedded PostgreSQL, which this test stops and starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hub.storage.embedded import start_embedded
from tests.support.database import upgrade
from tests.support.live import (
    HubProcess,
    closed_with,
    create_session,
    metrics_frame,
    open_client,
    pg_proxy,
    recv,
    send,
    wait_acked,
)

# This test's mirror sends one frame per message as fast as it can, far above a real
# mirror's 30 a second: lift the per-connection rate limit for it.
UNLIMITED = {"HUB_WS_MAX_MESSAGES_PER_S": "1000000"}
FRAMES = 2000
BEFORE_OUTAGE = 200
BUFFER_BOUND = 300
# ~5 KB frames: what the paused mirror still has to send cannot all hide in TCP buffers.
VALUES = {f"joint_{i}": float(i) for i in range(190)}


async def health(hub: HubProcess) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        body: dict[str, Any] = (await client.get(f"{hub.http}/health", timeout=10)).json()
        return body


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll the hub's own health report until `predicate` holds (the hub's state is remote)."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - remote state: nothing to await
            await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_database_outage_mid_stream(
    start_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    data_dir = pg_data_dir
    pg = await asyncio.to_thread(start_embedded, data_dir)
    try:
        engine = create_async_engine(pg.url)
        await upgrade(engine)
        await engine.dispose()
        hub = await start_hub(
            pg.url,
            HUB_BUFFER_MAX_FRAMES=str(BUFFER_BOUND),
            HUB_FLUSH_MAX_FRAMES="50",
            **UNLIMITED,
        )
        session_id = await create_session(hub.http)

        acked = 0
        watched: list[int] = []
        ack_event = asyncio.Event()
        outage = asyncio.Event()
        watch_event = asyncio.Event()
        ahead = asyncio.Event()  # the mirror has sent well past what the buffer can hold

        async with (
            open_client(hub.ws, session_id, "mirror") as (mirror, _),
            open_client(hub.ws, session_id, "watch") as (watcher, _),
        ):
            assert (await recv(watcher))["type"] == "snapshot"

            async def read_acks() -> None:
                nonlocal acked
                while acked < FRAMES:
                    message = await recv(mirror, timeout=60)
                    if message["type"] == "ack":
                        acked = message["seq"]
                        ack_event.set()

            async def read_watcher() -> None:
                while len(watched) < FRAMES:
                    message = await recv(watcher, timeout=60)
                    if message["type"] == "metrics":
                        watched.append(message["seq"])
                        watch_event.set()

            sent = 0

            async def stream() -> None:
                nonlocal sent
                for seq in range(1, FRAMES + 1):
                    if seq == BEFORE_OUTAGE + 1:
                        await outage.wait()
                    await send(mirror, metrics_frame(seq, **VALUES))
                    sent = seq
                    if sent > BEFORE_OUTAGE + BUFFER_BOUND + 100:
                        ahead.set()

            readers = [asyncio.create_task(read_acks()), asyncio.create_task(read_watcher())]
            sender = asyncio.create_task(stream())

            # Let storage work for a while, then take PostgreSQL away.
            async with asyncio.timeout(30):
                while acked < BEFORE_OUTAGE:
                    ack_event.clear()
                    await ack_event.wait()
            await asyncio.to_thread(pg.stop)
            acked_at_outage = acked
            outage.set()

            # The buffer fills to its bound and stays there: the mirror is paused, not dropped.
            async def buffer_full() -> bool:
                live = (await health(hub))["live"]
                return bool(live["buffered_frames"] == BUFFER_BOUND and live["storage_failures"])

            await wait_for(buffer_full, 60)
            await asyncio.wait_for(ahead.wait(), 60)
            # Watchers keep receiving live frames past the last stored one.
            async with asyncio.timeout(30):
                while len(watched) < acked_at_outage + BUFFER_BOUND:
                    watch_event.clear()
                    await watch_event.wait()
            report = await health(hub)
            assert report["database"] == "unavailable"
            assert report["live"]["buffer_peak_frames"] <= BUFFER_BOUND
            # The mirror got well ahead of what the hub accepted: it is paused (its frames wait
            # in TCP buffers), not cut off, and nothing past the bound was taken in.
            assert sent > acked_at_outage + BUFFER_BOUND + 100
            assert report["live"]["buffered_frames"] == BUFFER_BOUND
            assert report["live"]["mirrors"] == 1
            assert acked == acked_at_outage  # nothing acked that was not committed

            pg = await asyncio.to_thread(start_embedded, data_dir)
            await asyncio.wait_for(sender, 120)
            await asyncio.wait_for(asyncio.gather(*readers), 120)

        assert watched == list(range(1, FRAMES + 1))
        assert acked == FRAMES
        report = await health(hub)
        assert report["live"]["buffer_peak_frames"] <= BUFFER_BOUND
        conn = await asyncpg.connect(pg.url.replace("+asyncpg", ""))
        try:
            seqs = await conn.fetch(
                "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
            )
        finally:
            await conn.close()
        assert [r["seq"] for r in seqs] == list(range(1, FRAMES + 1))
    finally:
        await asyncio.to_thread(pg.stop)


@pytest.mark.timeout(90)
async def test_mirror_reconnects_during_a_database_outage(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str, clean_db: AsyncEngine
) -> None:
    """Invariant 5: while PostgreSQL is down the hub keeps broadcasting and buffering. A
    mirror whose connection dropped reconnects to the hub that holds its session in memory
    and goes on streaming to watchers (no other node is known to hold the mirror)."""
    proxy, dsn = pg_proxy(database_url)
    await proxy.start()
    try:
        hub = await start_hub(dsn())
        session_id = await create_session(hub.http)
        async with open_client(hub.ws, session_id, "watch") as (watcher, _):
            assert (await recv(watcher))["type"] == "snapshot"
            async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
                await send(mirror, {"type": "batch", "frames": [metrics_frame(1)]})
                await wait_acked(mirror, 1)
            while (message := await recv(watcher))["type"] != "metrics":
                pass
            assert message["seq"] == 1
            await proxy.stop()  # PostgreSQL is gone; the watcher keeps the session in memory
            try:
                async with open_client(hub.ws, session_id, "mirror") as (mirror, welcome):
                    assert welcome["last_seq"] == 1
                    await send(mirror, {"type": "batch", "frames": [metrics_frame(2)]})
                    while (message := await recv(watcher))["type"] != "metrics":
                        pass
                    assert message["seq"] == 2
            except Exception as exc:
                code = None
                with contextlib.suppress(Exception):
                    async with open_client(hub.ws, session_id, "mirror") as (again, _):
                        code = (await closed_with(again))[0]
                pytest.fail(
                    f"mirror could not reconnect during the outage ({type(exc).__name__}, "
                    f"close {code}); hub log has a traceback: {'Traceback' in hub.logs()}"
                )
    finally:
        await proxy.stop()
