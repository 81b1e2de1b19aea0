"""Acceptance (protocol 2): a watcher that says `"protocol": 2` gets every frame once and in
order in `batch` messages — live, after a snapshot, resuming with `since` (from memory and
from PostgreSQL), when cut off with 4008 or 4009, up to `ended` — while a protocol 1 watcher
of the same session gets the same frames one per message."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    HubProcess,
    closed_with,
    create_session,
    metrics_frame,
    open_client,
    recv,
    send,
    token,
    wait_acked,
)

UNLIMITED = {"HUB_WS_MAX_MESSAGES_PER_S": "1000000"}
CHUNK = 50  # frames per mirror message: each arrives at the watchers' queues at once


async def stream(mirror: ClientConnection, first: int, last: int, **values: float) -> None:
    for start in range(first, last + 1, CHUNK):
        frames = [metrics_frame(s, **values) for s in range(start, min(start + CHUNK, last + 1))]
        await send(mirror, {"type": "batch", "frames": frames})


class Seen:
    """What one watcher received: frame seqs in arrival order, and the messages carrying them."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.messages: list[dict[str, Any]] = []
        self.batch_sizes: list[int] = []

    def take(self, message: dict[str, Any], session_id: str) -> None:
        self.messages.append(message)
        if message["type"] == "batch":
            assert message["session_id"] == session_id
            assert message["frames"], "an empty batch"
            self.batch_sizes.append(len(message["frames"]))
            self.seqs += [f["seq"] for f in message["frames"]]
        elif message["type"] in ("metrics", "task"):
            self.seqs.append(message["seq"])


async def read_to_close(ws: ClientConnection, seen: Seen, session_id: str) -> int:
    code, messages = await closed_with(ws, timeout=60)
    for message in messages:
        seen.take(message, session_id)
    return code


async def test_protocol_2_and_1_watchers_of_one_session_get_the_same_frames(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(**UNLIMITED)
    session_id = await create_session(hub.http)
    frames = 1000
    async with (
        open_client(hub.ws, session_id, "watch", protocol=2) as (new, new_welcome),
        open_client(hub.ws, session_id, "watch") as (old, old_welcome),
    ):
        assert new_welcome["protocol"] == 2 and new_welcome["max_delay_ms"] == 0
        assert old_welcome["protocol"] == 1 and "max_delay_ms" not in old_welcome
        assert (await recv(new))["type"] == "snapshot"  # a snapshot stays one message
        assert (await recv(old))["type"] == "snapshot"
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            await stream(mirror, 1, frames)
            await wait_acked(mirror, frames, timeout=60)
            await send(mirror, {"type": "end", "last_seq": frames})
            await recv(mirror)  # its `ended`
        batched, single = Seen(), Seen()
        codes = await asyncio.gather(
            read_to_close(new, batched, session_id), read_to_close(old, single, session_id)
        )
    assert codes == [1000, 1000]
    assert batched.seqs == single.seqs == list(range(1, frames + 1))
    for seen in (batched, single):
        assert seen.messages[-1] == {"type": "ended", "last_seq": frames}
    # Protocol 1: one message per frame, never a batch; protocol 2: frames only in batches,
    # several in one where they were queued together.
    assert not single.batch_sizes
    assert all(m["type"] != "metrics" for m in batched.messages)
    assert max(batched.batch_sizes) > 1 and len(batched.batch_sizes) < frames
    print(f"protocol 2: {frames} frames in {len(batched.batch_sizes)} batches")


async def test_since_resume_from_storage_and_memory_comes_in_batches(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    # A short replay log: a resume from seq 10 reads PostgreSQL first, then the log.
    hub = await start_hub(HUB_REPLAY_FRAMES="100", **UNLIMITED)
    session_id = await create_session(hub.http)
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        await stream(mirror, 1, 1300)
        await wait_acked(mirror, 1300, timeout=60)
        async with open_client(hub.ws, session_id, "watch", protocol=2, since=10) as (ws, hi):
            assert hi["last_seq"] == 1300
            seen = Seen()
            while len(seen.seqs) < 1290:
                seen.take(await recv(ws), session_id)
            assert seen.seqs == list(range(11, 1301))
            assert all(m["type"] == "batch" for m in seen.messages)
            assert max(seen.batch_sizes) == 500  # the catch-up fills batches to the bound
            # The live tail follows, in batches too.
            await stream(mirror, 1301, 1400)
            while len(seen.seqs) < 1390:
                seen.take(await recv(ws), session_id)
            assert seen.seqs == list(range(11, 1401))


async def test_ended_session_gives_snapshot_then_ended_then_close(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(**UNLIMITED)
    session_id = await create_session(hub.http)
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        await stream(mirror, 1, 20)
        await wait_acked(mirror, 20)
        await send(mirror, {"type": "end", "last_seq": 20})
        await recv(mirror)
    async with open_client(hub.ws, session_id, "watch", protocol=2) as (ws, _):
        code, messages = await closed_with(ws)
    assert code == 1000
    assert [m["type"] for m in messages] == ["snapshot", "ended"]
    assert messages[0]["last_seq"] == 20 and messages[0]["ended"] is True
    async with open_client(hub.ws, session_id, "watch", protocol=2, since=5) as (ws, _):
        code, messages = await closed_with(ws)
    assert code == 1000
    assert [m["type"] for m in messages] == ["batch", "ended"]
    assert [f["seq"] for f in messages[0]["frames"]] == list(range(6, 21))


async def test_max_delay_is_capped_by_the_setting_and_reported(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_WATCHER_MAX_DELAY_MS="200", **UNLIMITED)
    session_id = await create_session(hub.http)
    async with open_client(hub.ws, session_id, "watch", protocol=2, max_delay_ms=5000) as (
        ws,
        welcome,
    ):
        assert welcome["max_delay_ms"] == 200
        assert (await recv(ws))["type"] == "snapshot"
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            # One frame per message: with the delay the watcher still gets them all, in
            # fewer messages than frames.
            for seq in range(1, 201):
                await send(mirror, metrics_frame(seq))
            seen = Seen()
            while len(seen.seqs) < 200:
                message = await recv(ws)
                if message["type"] == "batch":
                    seen.take(message, session_id)
            assert seen.seqs == list(range(1, 201))
            assert len(seen.batch_sizes) < 200
    async with open_client(hub.ws, session_id, "watch", protocol=2, max_delay_ms=50) as (_, hi):
        assert hi["max_delay_ms"] == 50


@pytest.mark.parametrize("role", ["mirror", "watch"])
async def test_unsupported_protocols_are_refused(hub_server: HubProcess, role: str) -> None:
    session_id = await create_session(hub_server.http)
    protocol = 2 if role == "mirror" else 3
    hello_token = token("mirror", session_id) if role == "mirror" else token("therapist")
    async with connect(f"{hub_server.ws}/ws/sessions/{session_id}/{role}") as ws:
        await send(ws, {"type": "hello", "token": hello_token, "protocol": protocol})
        code, messages = await closed_with(ws)
    assert code == 1002
    assert messages[0]["type"] == "error" and messages[0]["code"] == "unsupported_protocol"


async def test_bad_max_delay_is_an_error_and_a_close(hub_server: HubProcess) -> None:
    session_id = await create_session(hub_server.http)
    async with connect(f"{hub_server.ws}/ws/sessions/{session_id}/watch") as ws:
        hello = {"type": "hello", "token": token("therapist"), "protocol": 2, "max_delay_ms": -1}
        await send(ws, hello)
        code, messages = await closed_with(ws)
    assert code == 1002 and messages[0]["code"] == "invalid_frame"


QUEUE_BOUND = 100
VALUES = {f"joint_{i}": float(i) for i in range(190)}  # ~5 KB a frame


async def test_stalled_protocol_2_watcher_is_cut_off_with_4008_and_resumes(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_WATCHER_QUEUE_FRAMES=str(QUEUE_BOUND), **UNLIMITED)
    session_id = await create_session(hub.http)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    stalled = await connect(
        f"{hub.ws}/ws/sessions/{session_id}/watch",
        sock=sock,
        max_queue=1,
        compression=None,
        max_size=2**23,
    )
    await send(stalled, {"type": "hello", "token": token("therapist"), "protocol": 2})
    # The welcome follows the join (after the watch's audit row commits): from then on every
    # frame is queued for this watcher, which reads nothing more until the mirror is done.
    assert (await recv(stalled, timeout=10))["type"] == "welcome"
    frames = 1500
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        for seq in range(1, frames + 1):
            await send(mirror, metrics_frame(seq, **VALUES))
        await wait_acked(mirror, frames, timeout=60)

    seen = Seen()
    try:
        while True:
            seen.take(orjson.loads(await asyncio.wait_for(stalled.recv(), 30)), session_id)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4008, closed
    assert seen.seqs == list(range(1, len(seen.seqs) + 1)) and len(seen.seqs) < frames

    since = seen.seqs[-1] if seen.seqs else 0
    async with open_client(hub.ws, session_id, "watch", protocol=2, since=since) as (ws, _):
        while len(seen.seqs) < frames:
            seen.take(await recv(ws), session_id)
    assert seen.seqs == list(range(1, frames + 1))


async def test_protocol_2_watcher_closed_with_4009_resumes_in_batches(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    """A gap on the backplane that storage cannot fill (a publisher announces a frame 1000
    that nobody stores) closes the watcher with 4009, with no frame out of order before it;
    a protocol 2 resume with `since` then gets the rest in batches."""
    hub = await start_hub(HUB_BACKPLANE="postgres", HUB_BACKPLANE_GAP_TIMEOUT_MS="500", **UNLIMITED)
    session_id = await create_session(hub.http)
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        await stream(mirror, 1, 20)
        await wait_acked(mirror, 20)
    seen = Seen()
    async with open_client(hub.ws, session_id, "watch", protocol=2, since=0) as (ws, _):
        while len(seen.seqs) < 20:
            seen.take(await recv(ws), session_id)
        channel = "mh_" + uuid.UUID(session_id).hex
        frame = orjson.dumps(metrics_frame(1000)).decode()
        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await conn.execute("SELECT pg_notify($1, $2)", channel, f"f elsewhere 1000 {frame}")
        finally:
            await conn.close()
        code = await read_to_close(ws, seen, session_id)
    assert code == 4009
    assert seen.seqs == list(range(1, 21))  # nothing past the gap, nothing out of order
    async with open_client(hub.ws, session_id, "watch", protocol=2, since=20) as (ws, welcome):
        assert welcome["last_seq"] == 20 and welcome["protocol"] == 2
        async with open_client(hub.ws, session_id, "mirror") as (mirror, hello):
            assert hello["last_seq"] == 20
            await stream(mirror, 21, 120)
            while len(seen.seqs) < 120:
                seen.take(await recv(ws), session_id)
    assert seen.seqs == list(range(1, 121))
    assert all(m["type"] != "metrics" for m in seen.messages)
