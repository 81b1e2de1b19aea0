"""Acceptance: PostgreSQL stalls (a partition, a stalled disk: the connections stay open and
nothing comes back). The live path's storage gives up after HUB_DB_STATEMENT_TIMEOUT_S with
its one StorageUnavailable, drops the stuck connection, and the hub goes on storing on a fresh
one; nothing waits for ever.

The stall is a TCP proxy in front of the test run's PostgreSQL that stops passing anything on
over the links it has (new links still go through, as after a partition heals).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.storage.live_store import LiveStore, StorageUnavailable
from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    pg_proxy,
    send,
    wait_acked,
)

STATEMENT_TIMEOUT_S = 1
# The timeout, then as long again for the cancellation asyncpg sends to the stuck connection,
# for each of the pool's connections the stall caught, with room to spare on a busy machine.
WAIT_S = 30.0


@pytest.mark.timeout(60)
async def test_a_stalled_statement_raises_storage_unavailable_and_the_store_recovers(
    database_url: str,
) -> None:
    proxy, dsn = pg_proxy(database_url)
    await proxy.start()
    try:
        store = await LiveStore.connect(dsn(), statement_timeout_s=STATEMENT_TIMEOUT_S)
        try:
            nobody = [uuid.uuid4()]
            assert await store.existing_sessions(nobody) == set()  # a pooled link, answering
            proxy.freeze()
            with pytest.raises(StorageUnavailable) as raised:
                async with asyncio.timeout(WAIT_S):
                    await store.existing_sessions(nobody)
            assert isinstance(raised.value.__cause__, TimeoutError)
            # The stuck connection was dropped: the next call connects afresh and is answered.
            async with asyncio.timeout(WAIT_S):
                assert await store.existing_sessions(nobody) == set()
        finally:
            async with asyncio.timeout(WAIT_S):
                await store.close()
    finally:
        await proxy.stop()


@pytest.mark.timeout(90)
async def test_the_hub_stores_again_after_a_stall(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str, clean_db: AsyncEngine
) -> None:
    """A batch caught by the stall is not lost and does not hold the flusher: it is retried on
    a fresh connection, stored once, and acked."""
    proxy, dsn = pg_proxy(database_url)
    await proxy.start()
    try:
        hub = await start_hub(dsn(), HUB_DB_STATEMENT_TIMEOUT_S=str(STATEMENT_TIMEOUT_S))
        session_id = await create_session(hub.http)
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            await send(mirror, {"type": "batch", "frames": [metrics_frame(1)]})
            await wait_acked(mirror, 1)  # stored: the live store has links through the proxy
            proxy.freeze()
            await send(mirror, {"type": "batch", "frames": [metrics_frame(2)]})
            await wait_acked(mirror, 2, timeout=WAIT_S)
        # The flusher saw the stall as StorageUnavailable, caused by the timeout.
        assert "failed (TimeoutError); retrying" in hub.logs()
    finally:
        await proxy.stop()
    async with clean_db.connect() as conn:
        stored = await conn.execute(
            text("SELECT seq FROM frames WHERE session_id = :id ORDER BY seq"),
            {"id": session_id},
        )
        assert [row.seq for row in stored] == [1, 2]
