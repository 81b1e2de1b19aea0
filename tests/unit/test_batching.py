"""Protocol 2 batching without sockets: the `batch` text, the send queue's runs of frames, and
the writer coalescing what it finds queued (at the ASGI boundary: a Starlette WebSocket whose
`send` the test holds, as a peer that reads slowly would)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketState

from hub import closecodes
from hub.endpoints.connection import run_writer
from hub.frames import Batching, MetricsFrame, encode
from hub.live.sendqueue import SendQueue, Watcher

SESSION = uuid.UUID("00000000-0000-4000-8000-000000000001")
WAIT = 5.0


def frame_text(seq: int, **values: float) -> str:
    return encode(MetricsFrame(seq=seq, ts=1.0, values=values or {"accuracy": 0.5})).decode()


def test_a_batch_is_the_frames_joined_as_they_were_encoded() -> None:
    texts = [frame_text(1), frame_text(2, stability=0.25)]
    message = orjson.loads(Batching(SESSION).message(texts))
    assert message == {
        "type": "batch",
        "session_id": str(SESSION),
        "frames": [orjson.loads(t) for t in texts],
    }


def test_messages_split_at_the_frame_and_byte_bounds_in_order() -> None:
    texts = [frame_text(seq) for seq in range(1, 12)]
    by_count = Batching(SESSION, max_frames=4).messages(texts)
    assert [len(orjson.loads(m)["frames"]) for m in by_count] == [4, 4, 3]
    size = len(texts[0])
    by_bytes = Batching(SESSION, max_bytes=2 * size + 1).messages(texts)
    assert [len(orjson.loads(m)["frames"]) for m in by_bytes] == [2, 2, 2, 2, 2, 1]
    for messages in (by_count, by_bytes):
        seqs = [f["seq"] for m in messages for f in orjson.loads(m)["frames"]]
        assert seqs == list(range(1, 12))
    # A frame larger than the byte bound goes alone rather than never.
    assert len(Batching(SESSION, max_bytes=1).messages(texts)) == len(texts)
    assert Batching(SESSION).messages([]) == []


def test_take_frames_stops_at_a_message_that_is_not_a_frame() -> None:
    queue = SendQueue(100)
    for seq in (1, 2, 3):
        queue.push(frame_text(seq), True)
    queue.push('{"type":"presence"}')
    queue.push(frame_text(4), True)
    first = queue.take_frames(500, 1 << 20)
    assert [orjson.loads(t)["seq"] for t in first] == [1, 2, 3]
    assert queue.take_frames(500, 1 << 20) == []  # the head is presence: it is popped
    assert queue.pop() == '{"type":"presence"}'
    assert [orjson.loads(t)["seq"] for t in queue.take_frames(500, 1 << 20)] == [4]
    assert not queue.items and queue.queued_bytes == 0


def test_take_frames_keeps_to_its_bounds() -> None:
    queue = SendQueue(100)
    for seq in range(1, 8):
        queue.push(frame_text(seq), True)
    assert len(queue.take_frames(3, 1 << 20)) == 3
    assert len(queue.take_frames(500, 1)) == 1  # at least one
    assert len(queue.take_frames(500, 1 << 20)) == 3
    assert queue.queued_bytes == 0


def test_a_watcher_queues_frames_as_frames_and_skips_what_it_has() -> None:
    watcher = Watcher(10, since=2)
    for seq in (1, 2, 3, 4):
        watcher.deliver(seq, frame_text(seq))
    assert [orjson.loads(t)["seq"] for t in watcher.outbox.take_frames(500, 1 << 20)] == [3, 4]


class HeldSocket:
    """A Starlette WebSocket whose every send waits for the test to let it through."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.wanted = 0
        self.enough = asyncio.Event()

        async def receive() -> Message:
            raise AssertionError("the writer never receives")

        async def send(message: Message) -> None:
            self.sent.append(orjson.loads(message["text"]))
            self.arrived.set()
            if len(self.sent) >= self.wanted:
                self.enough.set()
            await self.gate.wait()

        self.websocket = WebSocket({"type": "websocket", "path": "/", "headers": []}, receive, send)
        self.websocket.client_state = WebSocketState.CONNECTED
        self.websocket.application_state = WebSocketState.CONNECTED

    async def sends(self, count: int) -> None:
        """Until `count` messages in all were sent."""
        self.wanted = count
        if len(self.sent) < count:
            self.enough.clear()
            await asyncio.wait_for(self.enough.wait(), WAIT)

    async def next_send(self) -> dict[str, Any]:
        await asyncio.wait_for(self.arrived.wait(), WAIT)
        self.arrived.clear()
        return self.sent[-1]


def seqs_of(message: dict[str, Any]) -> list[int]:
    assert message["type"] == "batch", message
    assert message["session_id"] == str(SESSION)
    return [f["seq"] for f in message["frames"]]


async def test_the_writer_sends_at_once_then_coalesces_what_queued_meanwhile() -> None:
    held = HeldSocket()
    queue = SendQueue(1000)
    writer = asyncio.create_task(run_writer(held.websocket, queue, batching=Batching(SESSION)))
    try:
        queue.push(frame_text(1), True)
        assert seqs_of(await held.next_send()) == [1]  # idle: the first frame goes alone, now
        # While that send is held (the peer reads slowly), frames and a presence queue up.
        for seq in range(2, 7):
            queue.push(frame_text(seq), True)
        queue.push('{"type":"presence","mirror":"connected","watchers":1}')
        for seq in range(7, 9):
            queue.push(frame_text(seq), True)
        held.gate.set()
        await held.sends(4)
        assert seqs_of(held.sent[1]) == [2, 3, 4, 5, 6]
        assert held.sent[2]["type"] == "presence"  # in its place between the frames
        assert seqs_of(held.sent[3]) == [7, 8]
    finally:
        writer.cancel()


async def test_the_writer_keeps_to_the_batch_bound() -> None:
    held = HeldSocket()
    held.gate.set()
    queue = SendQueue(5000)
    for seq in range(1, 1201):
        queue.push(frame_text(seq), True)
    queue.close(closecodes.NORMAL, flush=True)
    await asyncio.wait_for(run_writer(held.websocket, queue, batching=Batching(SESSION)), WAIT)
    assert [len(seqs_of(m)) for m in held.sent] == [500, 500, 200]
    assert [s for m in held.sent for s in seqs_of(m)] == list(range(1, 1201))


async def test_a_close_without_flush_drops_the_queue_even_while_waiting_out_a_delay() -> None:
    held = HeldSocket()
    held.gate.set()
    queue = SendQueue(1000)
    batching = Batching(SESSION, max_delay_ms=60_000)
    writer = asyncio.create_task(run_writer(held.websocket, queue, batching=batching))
    queue.push(frame_text(1), True)
    assert seqs_of(await held.next_send()) == [1]
    queue.push(frame_text(2), True)  # would wait for the delay: a minute
    for _ in range(5):  # loop turns (no timing): the writer wakes and starts waiting
        await asyncio.sleep(0)
    queue.close(closecodes.RESYNC)  # 4009: the watcher resumes with since; nothing more
    await asyncio.wait_for(writer, WAIT)
    assert len(held.sent) == 1


async def test_a_delay_gathers_frames_and_a_close_with_flush_sends_them_at_once() -> None:
    held = HeldSocket()
    held.gate.set()
    queue = SendQueue(1000)
    batching = Batching(SESSION, max_delay_ms=60_000)
    writer = asyncio.create_task(run_writer(held.websocket, queue, batching=batching))
    queue.push(frame_text(1), True)
    assert seqs_of(await held.next_send()) == [1]
    for seq in range(2, 6):
        queue.push(frame_text(seq), True)
    queue.push('{"type":"ended","last_seq":5}')
    queue.close(closecodes.NORMAL, flush=True)
    await asyncio.wait_for(writer, WAIT)
    assert seqs_of(held.sent[1]) == [2, 3, 4, 5]
    assert held.sent[2] == {"type": "ended", "last_seq": 5}
