"""Acceptance: a watcher that stops reading slows nobody; it is closed with 4008 and resumes."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    recv,
    send,
    token,
    wait_acked,
)

# This test's mirror sends one frame per message as fast as it can, far above a real
# mirror's 30 a second: lift the per-connection rate limit for it.
UNLIMITED = {"HUB_WS_MAX_MESSAGES_PER_S": "1000000"}
FRAMES = 1500
QUEUE_BOUND = 100
# ~5 KB per frame, so a stalled reader fills the TCP buffers and then its outbox quickly.
VALUES = {f"joint_{i}": float(i) for i in range(190)}


async def watchers_count(hub: HubProcess) -> int:
    async with httpx.AsyncClient() as client:
        count: int = (await client.get(f"{hub.http}/health")).json()["live"]["watchers"]
        return count


async def test_stalled_watcher_is_cut_off_and_resumes(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_WATCHER_QUEUE_FRAMES=str(QUEUE_BOUND), **UNLIMITED)
    session_id = await create_session(hub.http)

    # The stalled watcher: a tiny receive buffer and a client that never reads.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    stalled = await connect(
        f"{hub.ws}/ws/sessions/{session_id}/watch", sock=sock, max_queue=1, compression=None
    )
    await send(stalled, {"type": "hello", "token": token("therapist")})
    # The welcome follows the join (after the watch's audit row commits): from then on every
    # frame is queued for this watcher, which reads nothing more until the mirror is done.
    assert (await recv(stalled, timeout=10))["type"] == "welcome"

    latencies: list[float] = []

    async def healthy_watcher(ready: asyncio.Event) -> list[int]:
        seqs: list[int] = []
        async with open_client(hub.ws, session_id, "watch") as (ws, _):
            assert (await recv(ws))["type"] == "snapshot"
            ready.set()
            while len(seqs) < FRAMES:
                message = await recv(ws, timeout=30)
                if message["type"] == "metrics":
                    latencies.append(time.time() - message["ts"])
                    seqs.append(message["seq"])
        return seqs

    readies = [asyncio.Event(), asyncio.Event()]
    healthy = [asyncio.create_task(healthy_watcher(r)) for r in readies]
    for ready in readies:
        await asyncio.wait_for(ready.wait(), 10)

    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        for seq in range(1, FRAMES + 1):
            frame = metrics_frame(seq, **VALUES)
            await send(mirror, frame)
        # The mirror finishes and is fully acked while the stalled watcher has read nothing.
        await wait_acked(mirror, FRAMES, timeout=60)

    results = await asyncio.gather(*healthy)
    for seqs in results:
        assert seqs == list(range(1, FRAMES + 1))
    p99 = statistics.quantiles(latencies, n=100)[98]
    p50 = statistics.median(latencies)
    print(f"healthy watchers: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert p99 < 2.0, "healthy watchers were held up behind the stalled one"
    # The hub let go of the stalled watcher: only the two healthy ones were counted.
    assert await watchers_count(hub) <= 2

    # Now the stalled watcher reads what reached it: in order, then close 4008 (lagging).
    seen: list[int] = []
    try:
        while True:
            message = orjson.loads(await asyncio.wait_for(stalled.recv(), 30))
            if message["type"] == "metrics":
                seen.append(message["seq"])
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4008, closed
    assert seen == list(range(1, len(seen) + 1)) and len(seen) < FRAMES

    # It resumes from its last seq and gets the rest with no gap and no duplicate.
    async with open_client(hub.ws, session_id, "watch", since=len(seen)) as (ws, _):
        rest: list[int] = []
        while len(seen) + len(rest) < FRAMES:
            message = await recv(ws)
            if message["type"] == "metrics":
                rest.append(message["seq"])
    assert seen + rest == list(range(1, FRAMES + 1))
