"""Acceptance: abuse limits, each on a dedicated hub with a small setting.

HUB_WS_MAX_MESSAGES_PER_S (close 4030), HUB_MAX_CONNECTIONS_PER_CLIENT (close 4031) and
HUB_MAX_WATCHERS_PER_SESSION (close 4032). The body limit (413) is tested in tests/http/test_api.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    HubProcess,
    closed_with,
    create_session,
    metrics_frame,
    open_client,
    recv,
    recv_until,
    send,
    token,
    wait_acked,
)

StartHub = Callable[..., Awaitable[HubProcess]]


async def hello(base_ws: str, session_id: str, role: str) -> tuple[str, int | None]:
    """Connect and say hello: ("welcome", None), or ("closed", code). Closes either way."""
    credential = token("mirror", session_id) if role == "mirror" else token("therapist")
    async with connect(f"{base_ws}/ws/sessions/{session_id}/{role}", compression=None) as ws:
        try:
            await send(ws, {"type": "hello", "token": credential})
        except ConnectionClosed:
            pass  # closed before the hello went out: read the code below
        try:
            message = await recv(ws)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "no close frame from the hub"
            return "closed", exc.rcvd.code
        return message["type"], None


# HUB_WS_MAX_MESSAGES_PER_S -----------------------------------------------------------------


async def test_messages_too_fast_close_4030(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_WS_MAX_MESSAGES_PER_S="5")  # bursts of up to 50 (10 s worth)
    session_id = await create_session(hub.http)
    bystander_id = await create_session(hub.http)
    async with open_client(hub.ws, bystander_id, "mirror") as (bystander, _):
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            # Within the burst: accepted and acked, not limited.
            for seq in range(1, 9):
                await send(mirror, metrics_frame(seq))
            await wait_acked(mirror, 8)
            # Far past it: closed with 4030 (a reconnect-and-slow-down code).
            for seq in range(9, 200):
                try:
                    await send(mirror, metrics_frame(seq))
                except ConnectionClosed:
                    break
            code, messages = await closed_with(mirror)
            assert code == 4030, (code, messages)
            assert all(m["type"] == "ack" for m in messages), messages
        # It may reconnect and resume; a connection of its own, with a fresh allowance.
        async with open_client(hub.ws, session_id, "mirror") as (again, welcome):
            resume = welcome["last_seq"]
            assert 8 <= resume < 200
            for seq in range(resume + 1, resume + 6):
                await send(again, metrics_frame(seq))
            await wait_acked(again, resume + 5)
        # The limit is per connection: the bystander was never limited.
        for seq in range(1, 6):
            await send(bystander, metrics_frame(seq))
        await wait_acked(bystander, 5)

    # Watchers are limited too: they have nothing to say, and saying it fast ends with 4030.
    async with open_client(hub.ws, session_id, "watch") as (watcher, _):
        for _ in range(200):
            try:
                await send(watcher, {"type": "ping"})
            except ConnectionClosed:
                break
        code, messages = await closed_with(watcher)
        assert code == 4030, (code, messages)
        assert {m["type"] for m in messages} <= {"snapshot", "error", "presence"}, messages


# HUB_MAX_CONNECTIONS_PER_CLIENT -------------------------------------------------------------


async def test_connections_per_client_close_4031(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_MAX_CONNECTIONS_PER_CLIENT="2")
    session_id = await create_session(hub.http)
    async with (
        open_client(hub.ws, session_id, "watch") as (first, _),
        open_client(hub.ws, session_id, "watch") as (second, _),
    ):
        assert (await recv(first))["type"] == "snapshot"
        assert (await recv_until(first, "presence"))["watchers"] == 2
        # The third WebSocket from this address, of either kind, is closed with 4031.
        for role in ("watch", "mirror"):
            assert await hello(hub.ws, session_id, role) == ("closed", 4031)
        # HTTP is not counted.
        other = await create_session(hub.http)
        # One leaves: `first` hears of it once the hub has let go of its connection.
        await second.close()
        assert (await recv_until(first, "presence"))["watchers"] == 1
        # So a new one works (open_client asserts the welcome); still at most two at a time.
        async with open_client(hub.ws, other, "mirror") as (mirror, _):
            await send(mirror, metrics_frame(1))
            await wait_acked(mirror, 1)
            assert await hello(hub.ws, other, "watch") == ("closed", 4031)


# HUB_MAX_WATCHERS_PER_SESSION ---------------------------------------------------------------


async def test_watchers_per_session_close_4032(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_MAX_WATCHERS_PER_SESSION="2")
    full = await create_session(hub.http)
    other = await create_session(hub.http)
    async with (
        open_client(hub.ws, full, "watch") as (first, _),
        open_client(hub.ws, full, "watch") as (second, _),
        open_client(hub.ws, other, "watch"),
        open_client(hub.ws, other, "watch"),
    ):
        assert await hello(hub.ws, full, "watch") == ("closed", 4032)
        # The mirror is not a watcher; the other session has its own two.
        async with open_client(hub.ws, full, "mirror") as (mirror, _):
            await send(mirror, metrics_frame(1))
            await wait_acked(mirror, 1)
        assert (await recv_until(first, "metrics"))["seq"] == 1
        assert await hello(hub.ws, other, "watch") == ("closed", 4032)
        # A place frees up when one leaves.
        await second.close()
        while (await recv_until(first, "presence"))["watchers"] != 1:
            pass
        assert await hello(hub.ws, full, "watch") == ("welcome", None)


async def test_watchers_cap_holds_for_simultaneous_joins(start_hub: StartHub) -> None:
    """Watchers that arrive together must not all slip in under the cap: the check and the
    join must not be separated by an await (the audit write) another join can run in."""
    hub = await start_hub(HUB_MAX_WATCHERS_PER_SESSION="2")
    session_id = await create_session(hub.http)
    credential = token("therapist")
    url = f"{hub.ws}/ws/sessions/{session_id}/watch"
    sockets = [await connect(url, compression=None) for _ in range(8)]
    try:
        # Every hello is on the wire before the hub answers any of them.
        await asyncio.gather(*(send(ws, {"type": "hello", "token": credential}) for ws in sockets))
        outcomes = []
        for ws in sockets:
            try:
                outcomes.append((await recv(ws))["type"])
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                outcomes.append(str(exc.rcvd.code))
        assert sorted(outcomes) == ["4032"] * 6 + ["welcome"] * 2, outcomes
    finally:
        for ws in sockets:
            await ws.close()
