"""A first end-to-end check of the live path on a real server."""

from __future__ import annotations

import asyncpg

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    recv,
    recv_until,
    send,
    wait_acked,
)


async def test_stream_ack_and_watch(hub_server: HubProcess, database_url: str) -> None:
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, welcome):
        assert welcome["last_seq"] == 0
        async with open_client(hub_server.ws, session_id, "watch") as (watcher, _):
            snapshot = await recv(watcher)
            assert snapshot["type"] == "snapshot"
            for seq in range(1, 11):
                await send(mirror, metrics_frame(seq, accuracy=seq / 10))
            await wait_acked(mirror, 10)
            got = []
            while len(got) < 10:
                message = await recv_until(watcher, "metrics")
                got.append(message["seq"])
            assert got == list(range(1, 11))
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM frames WHERE session_id = $1::uuid", session_id
        )
    finally:
        await conn.close()
    assert count == 10
