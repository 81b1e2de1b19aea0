"""Hub nodes in this process, driven without sockets: two or more `LiveHub`s on one
`MemoryBroker` and the test run's real PostgreSQL, rooms and watchers, and the steps the
endpoints would take (join, stream, end), so a test can pin one interleaving."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from hub import closecodes
from hub.frames import MetricsFrame, encode
from hub.live.backplane.base import OnMessage, OnReset
from hub.live.backplane.memory import MemoryBackplane, MemoryBroker
from hub.live.buffer import PendingFrame
from hub.live.cluster import channel_of
from hub.live.node import LiveHub
from hub.live.rooms import Room, Watcher
from hub.live.session import LiveSession
from hub.storage.live_store import LiveStore
from tests.support.live import Proxy

WAIT = 10.0  # the longest any awaited event may take before a test fails


class DrivenBackplane(MemoryBackplane):
    """The in-process backplane, which a test can also drive: `deliver` hands a message to
    its node now (as the transport's delivery would), `reset` reports a reconnect (as after
    a Redis restart)."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        super().__init__(broker)
        self._deliver: OnMessage | None = None
        self._reset: OnReset | None = None

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        await super().start(on_message, on_reset)
        self._deliver, self._reset = on_message, on_reset

    def deliver(self, channel: str, message: str) -> None:
        assert self._deliver is not None, "start first"
        self._deliver(channel, message)

    def reset(self) -> None:
        assert self._reset is not None, "start first"
        self._reset()


def driven(node: LiveHub) -> DrivenBackplane:
    backplane = node.cluster.backplane
    assert isinstance(backplane, DrivenBackplane)
    return backplane


class GatedStore(LiveStore):
    """The live store, whose frame reads can be held: after `hold_reads`, every read waits
    until `release_reads` (a slow read: the pool is busy, or the query is); `reading` is set
    once a read has waited."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    def hold_reads(self) -> None:
        self._gate = asyncio.Event()

    def release_reads(self) -> None:
        gate, self._gate = self._gate, None
        assert gate is not None, "release_reads without hold_reads"
        gate.set()

    async def frames_between(
        self, session_id: uuid.UUID, after: int, upto: int, page: int = 1000
    ) -> list[tuple[int, str]]:
        gate = self._gate
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return await super().frames_between(session_id, after, upto, page)


# The nodes of these tests are plain LiveHubs; their storage is a GatedStore (`gated`).
Node = LiveHub


def gated(node: Node) -> GatedStore:
    """The node's storage, whose reads the test can hold."""
    store = node.store
    assert isinstance(store, GatedStore)
    return store


async def wait_stored(node: Node, session_id: uuid.UUID, seq: int) -> None:
    """Until `node` has stored the session's frames up to `seq` (bounded)."""
    async with asyncio.timeout(WAIT):
        await node.wait_stored(session_id, seq)


StartNode = Callable[..., Awaitable[Node]]


def frame(seq: int, width: int = 1) -> MetricsFrame:
    values = {"accuracy": seq / 100} | {f"joint_{i}": float(i) for i in range(1, width)}
    return MetricsFrame(seq=seq, ts=1.0, values=values)


async def settle() -> None:
    """Let the memory backplane's deliveries (call_soon) run."""
    for _ in range(10):
        await asyncio.sleep(0)


def seqs(watcher: Watcher) -> list[int]:
    return [
        m["seq"]
        for m in (orjson.loads(t) for t in watcher.outbox.items)
        if m["type"] in ("metrics", "task")
    ]


def kinds(watcher: Watcher) -> list[str]:
    return [orjson.loads(t)["type"] for t in watcher.outbox.items]


def watch(node: Node, live: LiveSession) -> Watcher:
    """A watcher joined to `live` on `node`, as the watch endpoint joins one."""
    watcher = Watcher(1000, None)
    node.join(live, watcher)
    return watcher


async def stream_then_leave(
    node: Node, session_id: uuid.UUID, frames: list[MetricsFrame], end: bool = False
) -> None:
    """A mirror on `node` streams `frames` until they are stored, ends the session after
    them if `end`, and disconnects."""
    async with node.use(session_id) as live:
        assert live is not None
        link = await node.attach_mirror(live)
        assert node.accept(live, frames) is None
        await live.wait_stored(frames[-1].seq)
        if end:
            await node.end(live, frames[-1].seq)
        node.detach_mirror(live, link)


async def heartbeats(*nodes: Node, rounds: int = 3) -> None:
    for _ in range(rounds):
        for node in nodes:
            await node.peers.heartbeat()
        await settle()


@contextlib.contextmanager
def backplane_loss(node: Node, session_id: uuid.UUID) -> Any:
    """What `node` would receive on the session's channel meanwhile is lost."""
    backplane = node.cluster.backplane
    channel = channel_of(session_id)
    assert isinstance(backplane, MemoryBackplane)
    backplane.broker.unsubscribe(channel, backplane)
    try:
        yield
    finally:
        backplane.broker.subscribe(channel, backplane)


NewSession = Callable[[], Awaitable[uuid.UUID]]


StartBehindProxy = Callable[..., Awaitable[tuple[Node, Proxy]]]


async def wait_until(watcher: Watcher, done: Callable[[], bool]) -> None:
    """Wait (bounded) until `done()`, re-checking whenever the watcher's outbox changes."""
    async with asyncio.timeout(WAIT):
        while not done():
            await watcher.outbox.wait_ready()


def closed(watcher: Watcher) -> bool:
    return watcher.outbox.close_code is not None


def accept_as_newer_hub(node: Node, live: LiveSession, seq: int, text: str) -> None:
    """What `LiveHub.accept` does on a newer hub whose frames carry a field this version's
    decoder rejects: buffer the frame (the flusher stores it) and publish it."""
    live.check_seq(seq)
    live.accepted(seq)
    node.buffer.put(
        PendingFrame(
            session_id=live.id,
            seq=seq,
            received_at=datetime.now(UTC),
            text=text,
            task=None,
        )
    )
    node.cluster.frame(live.id, seq, text)


@contextlib.asynccontextmanager
async def mirror_left_a_and_b_lost_storage(
    node_a: Node, node_b: Node, proxy: Proxy, session_id: uuid.UUID
) -> AsyncIterator[LiveSession]:
    """The mirror streamed on A, which stored and acked frames 1..6; B watched (the session
    in memory on B since frame 3). The device leaves A, and B loses PostgreSQL: yields B's
    session, pinned, as the device's connection to B finds it."""
    async with node_a.use(session_id) as live_a:
        assert live_a is not None
        link_a = await node_a.attach_mirror(live_a)
        assert node_a.accept(live_a, [frame(s) for s in range(1, 4)]) is None
        await live_a.wait_stored(3)
        async with node_b.use(session_id) as live_b:
            assert live_b is not None
            node_b.join(live_b, Watcher(1000, None))
            assert node_a.accept(live_a, [frame(s) for s in range(4, 7)]) is None
            await live_a.wait_stored(6)
            assert link_a.acked == 6  # the device drops frames 1..6
            await settle()
            assert live_b.room.published_seq == 6
            node_a.detach_mirror(live_a, link_a)  # the device leaves A
            await settle()
            await proxy.stop()  # ... and reaches B, whose PostgreSQL is gone
            yield live_b


def frame_text(seq: int) -> str:
    return encode(MetricsFrame(seq=seq, ts=1.0, values={"accuracy": seq / 100})).decode()


def make_room(seq: int = 0, max_pending: int = 100) -> tuple[Room, Watcher]:
    room = Room({"id": "s"}, [], replay_frames=10, seq=seq, max_pending=max_pending)
    watcher = Watcher(bound=1000, since=None)
    room.add_watcher(watcher)
    return room, watcher


def delivered(watcher: Watcher) -> list[str]:
    return list(watcher.outbox.items)


class LobbyListener:
    """A lobby listener, as a `/ws/watch` connection subscribed to "*" is one: what it was
    told, decoded."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        self.got.append(orjson.loads(text))

    def close_lobby(self, code: closecodes.CloseCode) -> None:
        pass

    def of(self, session_id: uuid.UUID | str) -> list[str]:
        """The types of the messages about `session_id`, in order."""
        return [m["type"] for m in self.got if m["session_id"] == str(session_id)]
