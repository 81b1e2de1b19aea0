"""Scale-out under unlucky interleavings, found in review: each test pins one scenario in
which a watcher could have been left with a silent gap or a mirror without acks.

Most run two `LiveHub` nodes in this process on one `MemoryBroker` and the test run's real
PostgreSQL, and drive them the way the endpoints do (`use` = a connection's pin,
`join`/`attach_mirror`/`accept`); the last one runs a real hub process. Heartbeats are called
by hand (the timer is set to a minute) so that nothing depends on timing; a loss on the
backplane is modelled by taking the receiving node's subscription away (a publisher-side
drop, which the receiver never hears of) and, where the transport would say so, by the reset
it then reports. Where an interleaving needs a slow storage read, the real read is wrapped so
that it waits for an event (`Node.fill_gate`; the load in
`test_end_published_while_the_session_loads_is_found_in_storage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hub import closecodes
from hub.frames import MetricsFrame, ProtocolError, encode
from hub.live.backplane.base import Backplane
from hub.live.backplane.memory import MemoryBackplane, MemoryBroker
from hub.live.backplane.postgres import PostgresBackplane
from hub.live.buffer import PendingFrame
from hub.live.cluster import Cluster, channel_of
from hub.live.node import LiveHub, SessionUnavailable
from hub.live.rooms import Room, Watcher
from hub.live.session import LiveSession
from hub.settings import Settings
from hub.storage.frames import asyncpg_dsn
from hub.storage.live_store import LiveStore
from tests.live_support import (
    HubProcess,
    closed_with,
    create_session,
    metrics_frame,
    open_client,
    recv,
    send,
    wait_acked,
)
from tests.test_backplane import _pg_proxy

WAIT = 10.0  # the longest any awaited event may take before a test fails


# --- two nodes in this process ---------------------------------------------------------


class GatedStore(LiveStore):
    """The live store, whose frame reads can be held: when `gate` is set, the next read
    waits for it (a slow read: the pool is busy, or the query is); `reading` says one is
    waiting."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def frames_between(
        self, session_id: uuid.UUID, after: int, upto: int, page: int = 1000
    ) -> list[tuple[int, str]]:
        gate = self.gate
        if gate is not None:
            self.reading.set()
            await gate.wait()
        return await super().frames_between(session_id, after, upto, page)


class Node(LiveHub):
    """A LiveHub on a GatedStore that also tells the test what its flusher committed."""

    def __init__(
        self, settings: Settings, database_url: str, backplane: Backplane, store: GatedStore
    ) -> None:
        super().__init__(settings, database_url, backplane, store)
        self.gated = store
        self.committed_upto: dict[uuid.UUID, int] = {}
        self._commit = asyncio.Condition()

    # The gap filler's (and catch-up's) storage reads wait for this event while it is set.
    @property
    def fill_gate(self) -> asyncio.Event | None:
        return self.gated.gate

    @fill_gate.setter
    def fill_gate(self, gate: asyncio.Event | None) -> None:
        self.gated.gate = gate

    @property
    def fill_reading(self) -> asyncio.Event:
        return self.gated.reading

    def _committed(self, batch: Sequence[PendingFrame]) -> None:
        super()._committed(batch)
        for frame in batch:
            seen = self.committed_upto.get(frame.session_id, 0)
            self.committed_upto[frame.session_id] = max(seen, frame.seq)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._commit:
            self._commit.notify_all()

    async def wait_committed(self, session_id: uuid.UUID, seq: int) -> None:
        async with asyncio.timeout(WAIT), self._commit:
            await self._commit.wait_for(lambda: self.committed_upto.get(session_id, 0) >= seq)


StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def start_node(
    settings: Settings, database_url: str, clean_db: AsyncEngine
) -> AsyncIterator[StartNode]:
    broker = MemoryBroker()
    started: list[Node] = []

    async def start(backplane: Backplane | None = None, **overrides: Any) -> Node:
        values: dict[str, Any] = {"backplane_heartbeat_ms": 60_000, **overrides}
        node = Node(
            dataclasses.replace(settings, **values),
            database_url,
            backplane or MemoryBackplane(broker),
            await GatedStore.connect(asyncpg_dsn(database_url)),
        )
        await node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        with contextlib.suppress(Exception):
            await node.shutdown()


@pytest.fixture
async def new_session(database_url: str) -> AsyncIterator[Callable[[], Awaitable[uuid.UUID]]]:
    async def create() -> uuid.UUID:
        session_id = uuid.uuid4()
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await conn.execute(
                "INSERT INTO sessions (id, child_name) VALUES ($1, 'Review Child')", session_id
            )
        finally:
            await conn.close()
        return session_id

    yield create


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
    backplane.broker.subscribers[channel].discard(backplane)
    try:
        yield
    finally:
        backplane.broker.subscribers[channel].add(backplane)


# --- a session dropped from memory while connections still hold it ---------------------


async def test_watcher_pinned_before_a_resync_is_told_to_resume(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    """B misses frame 1 on the backplane (too big: a marker) while A's storage is slow, so B's
    gap filler gives up: B closes its watchers with 4009 and drops the session from memory. A
    watcher whose connection pinned the old session just before (it was writing its audit
    row) must not join that room, which nothing feeds any more: it is told to resume."""
    node_a = await start_node(flush_interval_ms=1_000)  # A's storage is slow for now
    node_b = await start_node(backplane_gap_timeout_ms=100)
    node_a.cluster.backplane.max_message_bytes = 400  # frame 1 travels as a marker
    session_id = await new_session()

    async with node_a.use(session_id) as live_a, node_b.use(session_id) as live_b:
        assert live_a is not None and live_b is not None
        await node_a.attach_mirror(live_a)
        first = Watcher(1000, None)
        node_b.join(live_b, first)
        async with node_b.use(session_id) as pinned:  # the second watcher's connection
            assert pinned is live_b
            assert node_a.accept(live_a, [frame(1, width=40)]) is None
            await settle()
            assert live_b.room.behind
            async with asyncio.timeout(WAIT):
                await first.outbox.closing.wait()
            assert first.outbox.close_code == closecodes.RESYNC
            assert node_b.sessions.get(session_id) is not live_b  # B dropped it

            # What `_watch` does once its audit row is written.
            second = Watcher(1000, None)
            node_b.join(pinned, second)

            assert node_a.flusher is not None
            node_a.flusher.max_age_s = 0.05  # A's storage is back
            await live_a.wait_stored(1)
            assert node_a.accept(live_a, [frame(s) for s in range(2, 6)]) is None
            await live_a.wait_stored(5)
            await settle()
            async with node_b.use(session_id) as fresh:  # a watcher connecting now
                assert fresh is not None and fresh is not live_b
                third = Watcher(1000, None)
                node_b.join(fresh, third)
                assert node_a.accept(live_a, [frame(s) for s in range(6, 9)]) is None
                await live_a.wait_stored(8)
                await settle()
                await heartbeats(node_a, node_b)
                assert seqs(third) == [6, 7, 8]
                # The second watcher must get the frames, or a close telling it to resume.
                assert seqs(second) == [6, 7, 8] or second.outbox.close_code is not None, (
                    f"watcher on a dropped room: frames {seqs(second)}, "
                    f"close {second.outbox.close_code}"
                )


async def test_mirror_pinned_before_a_resync_reconnects_and_is_acked(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    """The node that held the mirror died after announcing frames 1..3 it never stored. The
    device reconnects to B; while B's `attach_mirror` awaits PostgreSQL, B's gap filler gives
    up and drops the session. The attach is refused (the mirror reconnects) instead of
    streaming into a session whose commits would never reach it as acks."""
    old_owner = await start_node()
    node_b = await start_node(backplane_gap_timeout_ms=100)
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:  # the device's new connection, pinned
        assert live_b is not None
        # The old owner's last word before it died: frames up to 3 accepted, none stored.
        old_owner.cluster.presence(session_id, 3, 0, 0, 1.0)
        await settle()
        assert live_b.room.known_seq == 3
        filling = node_b.gaps.filling(live_b)
        assert filling is not None
        async with asyncio.timeout(WAIT):
            await filling  # gives up: `_lost_track`
        assert node_b.sessions.get(session_id) is not live_b

        # The attach that was under way is refused (the mirror reconnects, 1011) rather
        # than let the mirror write into a session nobody acks for.
        with pytest.raises(SessionUnavailable):
            await node_b.attach_mirror(live_b)
    async with node_b.use(session_id) as fresh:  # the mirror's reconnect
        assert fresh is not None and fresh is not live_b
        link = await node_b.attach_mirror(fresh)
        assert node_b.accept(fresh, [frame(s) for s in range(1, 6)]) is None  # resent, new
        await node_b.wait_committed(session_id, 5)
        await settle()
        assert link.acked == 5, f"frames 1..5 are stored but the mirror was acked {link.acked}"


async def test_end_on_a_node_whose_room_is_behind_waits_for_the_missing_frames(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    """B's room misses frame 1 (a marker) and its gap filler is still reading storage when the
    device moves to B and streams 2..4 (waiting in `pending`), then `end`. B's watcher must
    get 1..4 before `ended` and the 1000 close, not `ended` first."""
    node_a = await start_node()
    node_b = await start_node()
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        watcher = watch(node_b, live_b)
        node_b.fill_gate = asyncio.Event()  # B's storage reads are slow for now
        await stream_then_leave(node_a, session_id, [frame(1, width=40)])  # then to B
        await settle()
        async with asyncio.timeout(WAIT):
            await node_b.fill_reading.wait()
        link_b = await node_b.attach_mirror(live_b)
        assert link_b.acked == 1  # what storage holds: the device resends nothing
        assert node_b.accept(live_b, [frame(s) for s in range(2, 5)]) is None
        await live_b.wait_stored(4)
        await node_b.end(live_b, 4)
        gate, node_b.fill_gate = node_b.fill_gate, None
        gate.set()
        if node_b.gaps.filling(live_b) is not None:
            async with asyncio.timeout(WAIT):
                await node_b.gaps.filling(live_b)
        assert kinds(watcher)[-1] == "ended"
        assert seqs(watcher) == [1, 2, 3, 4], (
            f"watcher got {seqs(watcher)} then ended last_seq=4 and a 1000 close"
        )


async def test_heartbeat_unsubscribe_racing_a_load_keeps_the_subscription(
    start_node: StartNode,
    new_session: Callable[[], Awaitable[uuid.UUID]],
    database_url: str,
) -> None:
    """PostgreSQL backplane, real UNLISTEN/LISTEN round trips: B's heartbeat sweep leaves the
    channel of a session B just evicted, and a watcher loads the session again while that
    UNLISTEN is in flight. The subscription lock orders the LISTEN after the UNLISTEN, so B
    still hears A's frames."""
    dsn = asyncpg_dsn(database_url)
    node_a = await start_node(PostgresBackplane(dsn))
    node_b = await start_node(PostgresBackplane(dsn))
    session_id = await new_session()
    async with node_b.use(session_id):
        pass
    assert session_id not in node_b.sessions  # evicted; still subscribed
    sweep = asyncio.create_task(node_b.peers.heartbeat())
    await asyncio.sleep(0)  # the sweep takes the lock and awaits UNLISTEN
    assert node_b.cluster._subscriptions.locked()
    async with node_b.use(session_id) as live_b, node_a.use(session_id) as live_a:
        assert live_b is not None and live_a is not None
        await sweep
        watcher = watch(node_b, live_b)
        await node_a.attach_mirror(live_a)
        assert node_a.accept(live_a, [frame(s) for s in range(1, 4)]) is None
        async with asyncio.timeout(WAIT):
            while seqs(watcher) != [1, 2, 3]:
                watcher.outbox.ready.clear()
                await watcher.outbox.ready.wait()


# --- what the backplane loses at the end of a stream ------------------------------------


async def test_end_lost_on_the_backplane_is_found_in_storage(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    """The backplane loses B's messages for a moment (B's subscriber reconnects; the
    transport calls on_reset) while the mirror on A sends its last frames and `end`. Nobody
    is left to repeat them, so after the reset B asks storage: its watcher gets the frames,
    `ended` and a normal close."""
    node_a = await start_node()
    node_b = await start_node()
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        watcher = watch(node_b, live_b)
        async with node_a.use(session_id) as live_a:
            assert live_a is not None
            await node_a.attach_mirror(live_a)
            assert node_a.accept(live_a, [frame(s) for s in range(1, 3)]) is None
            await live_a.wait_stored(2)
            await settle()
            assert seqs(watcher) == [1, 2]
            with backplane_loss(node_b, session_id):
                assert node_a.accept(live_a, [frame(s) for s in range(3, 6)]) is None
                await node_a.end(live_a, 5)
                await settle()
        # B's subscriber is back: the backplane reports the reset on both nodes (a Redis
        # restart resets every node), then heartbeats go on as usual.
        node_b.cluster._on_reset()
        node_a.cluster._on_reset()
        await settle()
        await heartbeats(node_a, node_b)
        # After the reset B asks storage, finds the lost frames and the end: its watcher
        # gets 3..5, then `ended`, then a normal close.
        async with asyncio.timeout(WAIT):
            await watcher.outbox.closing.wait()
        assert seqs(watcher) == [1, 2, 3, 4, 5], f"B's watcher got {seqs(watcher)}"
        assert kinds(watcher)[-1] == "ended"
        assert watcher.outbox.close_code == closecodes.NORMAL
        assert live_b.ended, "B still holds the session as live; a mirror could attach there"


async def test_tail_lost_then_mirror_leaves_is_filled_from_storage(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    """A's publisher drops frames 3..5 (its connection failed; no node gets on_reset), then
    the mirror disconnects from A. A's goodbye note carries last_seq 5: B reads 3..5 from
    storage."""
    node_a = await start_node()
    node_b = await start_node()
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        watcher = watch(node_b, live_b)
        async with node_a.use(session_id) as live_a:
            assert live_a is not None
            link = await node_a.attach_mirror(live_a)
            assert node_a.accept(live_a, [frame(s) for s in range(1, 3)]) is None
            await settle()
            with backplane_loss(node_b, session_id):
                assert node_a.accept(live_a, [frame(s) for s in range(3, 6)]) is None
                await settle()
            await live_a.wait_stored(5)
            node_a.detach_mirror(live_a, link)  # the device went away
            await settle()
        await heartbeats(node_a, node_b)
        if node_b.gaps.filling(live_b) is not None:
            async with asyncio.timeout(WAIT):
                await node_b.gaps.filling(live_b)
        await settle()
        assert seqs(watcher) == [1, 2, 3, 4, 5] or watcher.outbox.close_code is not None, (
            f"B's watcher got {seqs(watcher)}, room seq {live_b.room.published_seq} wanted "
            f"{live_b.room.known_seq}, no close"
        )


# --- an `e` that arrives while the session is being loaded -----------------------------


async def test_end_published_while_the_session_loads_is_found_in_storage(
    start_node: StartNode,
    new_session: Callable[[], Awaitable[uuid.UUID]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B loads the session (a watcher connects) and reads it before the end commits on A;
    A's `e` reaches B before the load puts the session in memory, so B never hears it. Its
    heartbeat maintenance finds the end in storage: the watcher is not left waiting.

    The load is held between its read and its end by wrapping the real query with an
    event: the interleaving is the one a slow tasks query produces."""
    node_a = await start_node()
    node_b = await start_node()
    session_id = await new_session()
    read_done, release = asyncio.Event(), asyncio.Event()
    assert node_b.store is not None
    real_load = node_b.store.load_state

    async def load_and_wait(sid: uuid.UUID, max_tasks: int) -> Any:
        state = await real_load(sid, max_tasks)
        if sid == session_id and not release.is_set():
            read_done.set()
            await release.wait()
        return state

    async with node_a.use(session_id) as live_a:
        assert live_a is not None
        await node_a.attach_mirror(live_a)
        assert node_a.accept(live_a, [frame(s) for s in range(1, 4)]) is None
        await live_a.wait_stored(3)
        monkeypatch.setattr(node_b.store, "load_state", load_and_wait)
        loading = asyncio.create_task(node_b.sessions.acquire(session_id))
        async with asyncio.timeout(WAIT):
            await read_done.wait()
        await node_a.end(live_a, 3)
        await settle()  # `e` is delivered to B now, mid-load
        release.set()
        async with asyncio.timeout(WAIT):
            live_b = await loading
    assert live_b is not None
    try:
        watcher = watch(node_b, live_b)
        await heartbeats(node_a, node_b)
        assert live_b.ended or watcher.outbox.close_code is not None, (
            "session ended in storage, but B holds it as live and its watcher waits for ever"
        )
    finally:
        live_b.unpin()


# --- a frame a node cannot decode -------------------------------------------------------


def test_a_frame_that_fails_to_decode_is_passed_on_as_it_is() -> None:
    """A frame this node cannot decode (a newer hub's, with a field this one rejects) goes
    to the watchers as it is, in its place, as a resume from storage would give it; only the
    snapshot's state misses what it says. No gap, no stall."""
    room = Room({"id": "s"}, [], replay_frames=10, seq=0, max_pending=100)
    watcher = Watcher(1000, None)
    room.watchers.add(watcher)
    newer = orjson.dumps(
        {"type": "metrics", "seq": 2, "ts": 1.0, "values": {"a": 1.0}, "quality": 0.9}
    ).decode()
    room.offer(1, encode(frame(1)).decode())
    room.offer(2, newer)
    room.offer(3, encode(frame(3)).decode())
    assert seqs(watcher) == [1, 2, 3]
    assert room.latest == {"accuracy": 0.03}  # frame 2's values are not known here


async def test_exceptions_from_a_listener_stay_in_the_cluster_callback() -> None:
    """Whatever a handler raises stays in `Cluster._on_message`: the backplane's delivery
    loop goes on."""
    room = Room({"id": "s"}, [], replay_frames=10, seq=0, max_pending=100)

    class Listener:
        def on_remote_frame(self, session_id: uuid.UUID, seq: int, text: str | None) -> None:
            room.offer(seq, text)

        def on_remote_presence(self, *args: Any) -> None: ...
        def on_remote_ended(self, *args: Any) -> None: ...
        def on_remote_erased(self, *args: Any) -> None: ...
        def on_backplane_reset(self) -> None: ...

    cluster = Cluster(MemoryBackplane(), heartbeat_s=60)

    async def noop() -> None:
        return None

    await cluster.start(Listener(), lambda: None, noop)
    try:
        bad = orjson.dumps({"type": "metrics", "seq": 1, "ts": 1.0, "values": {}, "x": 1})
        cluster._on_message(channel_of(uuid.uuid4()), f"f othernode 1 {bad.decode()}")
    except ProtocolError:
        pytest.fail("a listener exception escaped Cluster._on_message")
    finally:
        await cluster.stop()


# --- a mirror reconnecting while PostgreSQL is down -------------------------------------


@pytest.mark.timeout(90)
async def test_mirror_reconnects_during_a_database_outage(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str, clean_db: AsyncEngine
) -> None:
    """Invariant 5: while PostgreSQL is down the hub keeps broadcasting and buffering. A
    mirror whose connection dropped reconnects to the hub that holds its session in memory
    and goes on streaming to watchers (no other node is known to hold the mirror)."""
    proxy, dsn = _pg_proxy(database_url)
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
