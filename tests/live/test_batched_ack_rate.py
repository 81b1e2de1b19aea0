"""Acceptance: a mirror gets at most HUB_ACK_MAX_HZ acks a second however often the hub
commits, and the acks it gets still cover every frame (they are cumulative)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson

from tests.support.live import HubProcess, create_session, metrics_frame, open_client, send

ACK_HZ = 5
ACKS = 5


async def test_acks_to_one_mirror_keep_to_the_rate_limit(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    # Commits every few milliseconds: without the limit, acks would follow as often.
    hub = await start_hub(
        HUB_ACK_MAX_HZ=str(ACK_HZ),
        HUB_FLUSH_INTERVAL_MS="2",
        HUB_WS_MAX_MESSAGES_PER_S="1000000",
    )
    session_id = await create_session(hub.http)
    acks: list[tuple[float, int]] = []
    enough = asyncio.Event()
    sent = 0

    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):

        async def read_acks() -> None:
            async for raw in mirror:
                message = orjson.loads(raw)
                assert message["type"] in ("ack", "presence"), message
                if message["type"] == "ack":
                    acks.append((time.monotonic(), message["seq"]))
                    if len(acks) >= ACKS:
                        enough.set()
                    if enough.is_set() and message["seq"] == sent:
                        return

        reader = asyncio.create_task(read_acks())
        started = time.monotonic()
        async with asyncio.timeout(30):
            # One frame per message, as fast as the socket takes them, until several acks
            # came back: the hub commits many times between two of them.
            while not enough.is_set():
                sent += 1
                await send(mirror, metrics_frame(sent))
                await asyncio.sleep(0)  # a loop turn for the reader, not a timed wait
            await reader  # until the ack of the last frame

    seqs = [seq for _, seq in acks]
    assert seqs == sorted(seqs) and seqs[-1] == sent
    # Counted over the whole run (arrival times at this end bunch up while it sends): the
    # first ack may go at once, then one per 1/ACK_HZ at most.
    elapsed = acks[-1][0] - started
    assert len(acks) <= 1 + ACK_HZ * elapsed, (len(acks), elapsed)
    print(f"{sent} frames, {len(acks)} acks in {elapsed:.2f} s")
