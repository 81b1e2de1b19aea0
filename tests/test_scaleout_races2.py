"""Scale-out under unlucky interleavings, second round: a mirror reconnecting to a node
whose storage is down, frames this version cannot decode, shutdown while the backplane still
delivers, and an end that arrives while a room fills a gap.

Same setup as tests/test_scaleout_races.py (whose nodes, fixtures and helpers these reuse):
two `LiveHub` nodes in this process on one `MemoryBroker`, the test run's real PostgreSQL,
heartbeats by hand. A storage outage of one node is a TCP proxy in front of PostgreSQL that
is stopped (tests/test_backplane.py); a frame written by a newer hub is put into the older
node's write buffer as that hub would have encoded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hub import closecodes
from hub.frames import MetricsFrame, ProtocolError, encode
from hub.live.backplane.memory import MemoryBackplane
from hub.live.buffer import PendingFrame
from hub.live.node import SessionUnavailable
from hub.live.rooms import Watcher
from hub.live.session import LiveSession
from hub.settings import Settings
from hub.storage.frames import asyncpg_dsn
from tests import test_scaleout_races as races
from tests.live_support import Proxy
from tests.test_backplane import _pg_proxy
from tests.test_scaleout_races import (
    WAIT,
    Node,
    StartNode,
    frame,
    kinds,
    seqs,
    settle,
    stream_then_leave,
    watch,
)

# The fixtures of tests/test_scaleout_races.py, made available here.
start_node = races.start_node
new_session = races.new_session

NewSession = Callable[[], Awaitable[uuid.UUID]]
StartBehindProxy = Callable[..., Awaitable[tuple[Node, Proxy]]]


async def wait_until(watcher: Watcher, done: Callable[[], bool]) -> None:
    """Wait (bounded) until `done()`, re-checking whenever the watcher's outbox changes."""
    async with asyncio.timeout(WAIT):
        while not done():
            watcher.outbox.ready.clear()
            await watcher.outbox.ready.wait()


def closed(watcher: Watcher) -> bool:
    return watcher.outbox.close_code is not None


def accept_as_newer_hub(node: Node, live: LiveSession, seq: int, text: str) -> None:
    """What `LiveHub.accept` does on a newer hub whose frames carry a field this version's
    decoder rejects: buffer the frame (the flusher stores it) and publish it."""
    live.last_accepted = seq
    node.buffer.put(
        PendingFrame(
            session_id=live.id,
            seq=seq,
            kind="metrics",
            task_id=None,
            device_ts=1.0,
            received_at=datetime.now(UTC),
            text=text,
            task=None,
        )
    )
    node.cluster.frame(live.id, seq, text)


# --- 1. attach_mirror's storage-down fallback ------------------------------------------


@pytest.fixture
async def node_behind_proxy(
    settings: Settings, database_url: str, clean_db: AsyncEngine
) -> AsyncIterator[StartBehindProxy]:
    """Starts a node on the same broker as a given node, whose PostgreSQL goes through a
    proxy the test can stop (that node's storage is down; the backplane is not)."""
    started: list[tuple[Node, Proxy]] = []

    async def start(peer: Node, **overrides: int) -> tuple[Node, Proxy]:
        proxy, dsn = _pg_proxy(database_url)
        await proxy.start()
        backplane = peer.cluster.backplane
        assert isinstance(backplane, MemoryBackplane)
        values: dict[str, Any] = {"backplane_heartbeat_ms": 60_000, **overrides}
        node = Node(
            dataclasses.replace(settings, **values),
            dsn(),
            MemoryBackplane(backplane.broker),
            await races.GatedStore.connect(asyncpg_dsn(dsn())),
        )
        await node.start()
        started.append((node, proxy))
        return node, proxy

    yield start
    for node, proxy in started:
        if proxy._server is None:
            await proxy.start()  # storage back, so the node can shut down cleanly
        with contextlib.suppress(Exception):
            await node.shutdown()
        await proxy.stop()


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


async def test_storage_down_attach_does_not_hand_out_a_stale_last_seq(
    start_node: StartNode, new_session: NewSession, node_behind_proxy: StartBehindProxy
) -> None:
    """The device streamed on A (frames up to 6 acked) while B, which watched since frame 3,
    loses PostgreSQL; the device then reconnects to B. B's memory is not the truth (it heard
    of frames it never accepted), so B must not welcome it with last_seq 3: it refuses the
    attach until storage answers (the mirror retries)."""
    node_a = await start_node()
    node_b, proxy = await node_behind_proxy(node_a)
    session_id = await new_session()

    async with mirror_left_a_and_b_lost_storage(node_a, node_b, proxy, session_id) as live_b:
        try:
            link_b = await node_b.attach_mirror(live_b)
        except SessionUnavailable:
            return  # refused: the device retries once storage is back
        try:
            error = node_b.accept(live_b, [frame(7)])
            assert live_b.last_accepted >= 6 and error is None, (
                f"welcome would say last_seq={live_b.last_accepted} "
                f"acked_seq={live_b.stored_seq} to a device acked up to 6; its frame 7 "
                f"gets {error.code if error else None} expecting "
                f"{error.expected_seq if isinstance(error, ProtocolError) else None}"
            )
        finally:
            node_b.detach_mirror(live_b, link_b)


async def test_storage_down_attach_never_acks_frames_storage_did_not_keep(
    start_node: StartNode,
    new_session: NewSession,
    node_behind_proxy: StartBehindProxy,
    database_url: str,
) -> None:
    """Invariants 1 and 2. Same as above, with a device that continues from what the hub's
    welcome says: if B took it with last_seq 3, B would ack new content as 4..6 that storage
    then refuses (A's rows win the conflict). B refuses the attach instead."""
    node_a = await start_node()
    node_b, proxy = await node_behind_proxy(node_a)
    session_id = await new_session()

    async with mirror_left_a_and_b_lost_storage(node_a, node_b, proxy, session_id) as live_b:
        try:
            link_b = await node_b.attach_mirror(live_b)
        except SessionUnavailable:
            return  # refused: the device retries once storage is back
        try:
            restarted = [MetricsFrame(seq=s, ts=2.0, values={"restarted": 1.0}) for s in (4, 5, 6)]
            welcome_last_seq = live_b.last_accepted
            error = node_b.accept(live_b, restarted[welcome_last_seq - 3 :])
            await proxy.start()  # PostgreSQL is back: B's flusher stores what it buffered
            if error is None and welcome_last_seq < 6:
                await node_b.wait_committed(session_id, 6)
            conn = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                rows = await conn.fetch(
                    "SELECT seq, payload::text AS text FROM frames"
                    " WHERE session_id = $1 AND seq BETWEEN 4 AND 6 ORDER BY seq",
                    session_id,
                )
            finally:
                await conn.close()
            kept = [orjson.loads(r["text"])["values"] for r in rows]
            acked_new = [f.seq for f in restarted[welcome_last_seq - 3 :] if f.seq <= link_b.acked]
            lost = [
                s for s, values in zip((4, 5, 6), kept, strict=True) if "restarted" not in values
            ]
            assert not set(acked_new) & set(lost), (
                f"welcome said last_seq={welcome_last_seq}; the restarted app's frames "
                f"{acked_new} were acked (ack {link_b.acked}) but storage kept A's frames "
                f"{lost} under those seqs: {kept}"
            )
        finally:
            node_b.detach_mirror(live_b, link_b)


# --- 2. a frame this node cannot decode, with the mirror on this node -------------------


async def test_unreadable_frame_with_the_mirror_here_does_not_loop_on_4009(
    start_node: StartNode, new_session: NewSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer hub (A) stored frame 1 with a field this version rejects; it reached B only
    as a marker, and the device then moved to B. B's room passes the frame on as it is (as a
    resume from storage would) instead of stalling at seq 0 and closing its watchers with
    4009 over and over."""
    node_a = await start_node()
    node_b = await start_node(backplane_gap_timeout_ms=100)
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()
    newer = {**orjson.loads(encode(frame(1, width=40))), "quality": 1.0}
    newer_text = orjson.dumps(newer).decode()
    caplog.set_level(logging.WARNING, logger="hub.live")

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        first = watch(node_b, live_b)
        node_b.fill_gate = asyncio.Event()  # B's storage reads are slow for now
        async with node_a.use(session_id) as live_a:
            assert live_a is not None
            link_a = await node_a.attach_mirror(live_a)
            accept_as_newer_hub(node_a, live_a, 1, newer_text)
            await live_a.wait_stored(1)
            node_a.detach_mirror(live_a, link_a)  # the device moves to B
        await settle()
        async with asyncio.timeout(WAIT):
            await node_b.fill_reading.wait()
        link_b = await node_b.attach_mirror(live_b)
        try:
            assert link_b.acked == 1
            assert node_b.accept(live_b, [frame(2), frame(3)]) is None
            gate, node_b.fill_gate = node_b.fill_gate, None
            gate.set()
            await wait_until(first, lambda: closed(first) or 3 in seqs(first))
            watcher = first
            if closed(first):  # 4009 once is fine (the design): the watcher resumes
                assert first.outbox.close_code == closecodes.RESYNC
                assert node_b.sessions.get(session_id) is live_b  # the same room, not dropped
                watcher = Watcher(1000, max(seqs(first), default=0))
                node_b.join(live_b, watcher)
            assert node_b.accept(live_b, [frame(4), frame(5)]) is None
            await live_b.wait_stored(5)
            await wait_until(watcher, lambda: closed(watcher) or 5 in seqs(watcher))
            unreadable = sum("unreadable here" in r.getMessage() for r in caplog.records)
            assert not closed(watcher), (
                f"the resumed watcher was closed with {watcher.outbox.close_code} again after "
                f"frames {seqs(watcher)}; room seq {live_b.room.published_seq} (stored 5), frame 1 "
                f"reported unreadable {unreadable} times"
            )
            assert seqs(watcher) == list(range(watcher.skip_upto + 1, 6))
        finally:
            node_b.detach_mirror(live_b, link_b)


# --- 3. shutdown ordering -------------------------------------------------------------


async def test_no_gap_fill_outlives_shutdown(
    start_node: StartNode, new_session: NewSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backplane still delivers while it closes at shutdown (Redis drains its outbox for
    up to 2 s with its reader running). A frame arriving then (here a marker, to be read from
    storage) must not start a gap filler that outlives `shutdown`."""
    node_a = await start_node(flush_interval_ms=60_000)  # A's frame stays unstored
    node_b = await start_node()
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()

    async with node_b.use(session_id) as live_b, node_a.use(session_id) as live_a:
        assert live_b is not None and live_a is not None
        node_b.join(live_b, Watcher(1000, None))
        await node_a.attach_mirror(live_a)
        real_stop = node_b.cluster.stop

        async def stop_while_a_frame_arrives() -> None:
            assert node_a.accept(live_a, [frame(1, width=40)]) is None
            await settle()
            await real_stop()

        monkeypatch.setattr(node_b.cluster, "stop", stop_while_a_frame_arrives)
        await node_b.shutdown()
        filling = node_b.gaps.filling(live_b)
        try:
            assert filling is None or filling.done(), (
                "a gap fill is still running after shutdown (room published"
                f" {live_b.room.published_seq}, known {live_b.room.known_seq})"
            )
        finally:
            if filling is not None and not filling.done():
                filling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await filling


# --- checked and found correct ---------------------------------------------------------


async def test_resume_with_since_while_the_end_is_pending_gets_frames_then_one_ended(
    start_node: StartNode, new_session: NewSession
) -> None:
    """`e` reaches B while B's room still misses frame 1 (a marker; B's storage
    read is slow). A watcher that joined before and one that resumes with `since` now (the
    endpoint's `ended_at_join` is False: end_after is pending) both get 1..3, then exactly
    one `ended`, then a normal close; a watcher joining afterwards is ended at join."""
    node_a = await start_node()
    node_b = await start_node()
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        before = watch(node_b, live_b)
        node_b.fill_gate = asyncio.Event()
        await stream_then_leave(
            node_a, session_id, [frame(1, width=40), frame(2), frame(3)], end=True
        )
        await settle()
        async with asyncio.timeout(WAIT):
            await node_b.fill_reading.wait()
        assert (
            live_b.ended
            and live_b.end_after is not None
            and live_b.end_after[0] == 3
            and live_b.room.published_seq == 0
        )
        resumed = Watcher(1000, 0)
        node_b.join(live_b, resumed)
        assert not (live_b.ended and live_b.end_after is None)  # watch_ws: not ended at join
        gate, node_b.fill_gate = node_b.fill_gate, None
        gate.set()
        for watcher in (before, resumed):
            await wait_until(watcher, functools.partial(closed, watcher))
            assert seqs(watcher) == [1, 2, 3]
            assert kinds(watcher).count("ended") == 1 and kinds(watcher)[-1] == "ended"
            assert watcher.outbox.close_code == closecodes.NORMAL
        assert live_b.ended and live_b.end_after is None  # a later watcher: ended at join


async def test_end_pending_when_the_room_is_dropped_ends_on_the_fresh_load(
    start_node: StartNode, new_session: NewSession, node_behind_proxy: StartBehindProxy
) -> None:
    """B's room misses frame 1 when `e` arrives (end pending), and B's storage is
    down, so its gap filler gives up: `_lost_track` closes the watcher with 4009 (no frame
    of the gap, no `ended` before them) and drops the room. The resume loads the session
    afresh: ended, at seq 3, so the endpoint sends the catch-up and then `ended` at join."""
    node_a = await start_node()
    node_b, proxy = await node_behind_proxy(node_a, backplane_gap_timeout_ms=100)
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        watcher = watch(node_b, live_b)
        node_b.fill_gate = asyncio.Event()
        await stream_then_leave(
            node_a, session_id, [frame(1, width=40), frame(2), frame(3)], end=True
        )
        await settle()
        async with asyncio.timeout(WAIT):
            await node_b.fill_reading.wait()
        assert live_b.end_after is not None and live_b.end_after[0] == 3
        await proxy.stop()  # B's storage is gone: the filler cannot read frame 1
        gate, node_b.fill_gate = node_b.fill_gate, None
        gate.set()
        await wait_until(watcher, functools.partial(closed, watcher))
        assert watcher.outbox.close_code == closecodes.RESYNC
        assert seqs(watcher) == [] and "ended" not in kinds(watcher)
        assert live_b.dropped
        await proxy.start()
        async with node_b.use(session_id) as fresh:
            assert fresh is not None and fresh is not live_b
            assert fresh.ended and fresh.end_after is None and fresh.room.published_seq == 3
