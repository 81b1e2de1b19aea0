"""How a session ends across nodes: a watcher on any node gets every frame, then one
`ended`, even when the end was lost on the backplane, published while the node loaded the
session, or arrived while the node's room still missed frames (and was then dropped).

Review-round race tests: each pins one interleaving in which a watcher could have been left
with a silent gap or a mirror without acks.

Two `LiveHub` nodes in this process on one `MemoryBroker` and the test run's real
PostgreSQL, driven the way the endpoints drive them (tests/support/nodes.py). Heartbeats are
called by hand (the timer is set to a minute) so that nothing depends on timing; a loss on the
backplane is modelled by taking the receiving node's subscription away (a publisher-side
drop, which the receiver never hears of) and, where the transport would say so, by the reset
it then reports. Where an interleaving needs a slow storage read, the real read is wrapped so
that it waits for an event (`GatedStore.hold_reads`); a node's storage outage is a TCP proxy in
front of PostgreSQL that is stopped.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hub import closecodes
from hub.live.rooms import Watcher
from tests.support.nodes import (
    WAIT,
    NewSession,
    StartBehindProxy,
    StartNode,
    backplane_loss,
    closed,
    driven,
    frame,
    gated,
    heartbeats,
    kinds,
    seqs,
    settle,
    stream_then_leave,
    wait_until,
    watch,
)


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
        gated(node_b).hold_reads()  # B's storage reads are slow for now
        await stream_then_leave(node_a, session_id, [frame(1, width=40)])  # then to B
        await settle()
        async with asyncio.timeout(WAIT):
            await gated(node_b).reading.wait()
        link_b = await node_b.attach_mirror(live_b)
        assert link_b.acked == 1  # what storage holds: the device resends nothing
        assert node_b.accept(live_b, [frame(s) for s in range(2, 5)]) is None
        await live_b.wait_stored(4)
        await node_b.end(live_b, 4)
        gated(node_b).release_reads()
        if node_b.gaps.filling(live_b) is not None:
            async with asyncio.timeout(WAIT):
                await node_b.gaps.filling(live_b)
        assert kinds(watcher)[-1] == "ended"
        assert seqs(watcher) == [1, 2, 3, 4], (
            f"watcher got {seqs(watcher)} then ended last_seq=4 and a 1000 close"
        )


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
        driven(node_b).reset()
        driven(node_a).reset()
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

    async def load_and_wait(sid: uuid.UUID, *args: Any) -> Any:
        state = await real_load(sid, *args)
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


async def test_resume_with_since_while_the_end_is_pending_gets_frames_then_one_ended(
    start_node: StartNode, new_session: NewSession
) -> None:
    """`e` reaches B while B's room still misses frame 1 (a marker; B's storage
    read is slow). A watcher that joined before and one that resumes with `since` now (the
    endpoint's `ended_at_join` is False: the end is pending) both get 1..3, then exactly
    one `ended`, then a normal close; a watcher joining afterwards is ended at join."""
    node_a = await start_node()
    node_b = await start_node()
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        before = watch(node_b, live_b)
        gated(node_b).hold_reads()
        await stream_then_leave(
            node_a, session_id, [frame(1, width=40), frame(2), frame(3)], end=True
        )
        await settle()
        async with asyncio.timeout(WAIT):
            await gated(node_b).reading.wait()
        assert (
            live_b.ended
            and live_b.pending_end is not None
            and live_b.pending_end[0] == 3
            and live_b.room.published_seq == 0
        )
        resumed = Watcher(1000, 0)
        node_b.join(live_b, resumed)
        assert not (live_b.ended and live_b.pending_end is None)  # watch_ws: not ended at join
        gated(node_b).release_reads()
        for watcher in (before, resumed):
            await wait_until(watcher, functools.partial(closed, watcher))
            assert seqs(watcher) == [1, 2, 3]
            assert kinds(watcher).count("ended") == 1 and kinds(watcher)[-1] == "ended"
            assert watcher.outbox.close_code == closecodes.NORMAL
        assert live_b.ended and live_b.pending_end is None  # a later watcher: ended at join


async def test_end_pending_when_the_room_is_dropped_ends_on_the_fresh_load(
    start_node: StartNode, new_session: NewSession, node_behind_proxy: StartBehindProxy
) -> None:
    """B's room misses frame 1 when `e` arrives (end pending), and B's storage is down, so
    its gap filler gives up: the node loses track, closes the watcher with 4009 (no frame of
    the gap, no `ended` before them) and drops the room. The resume loads the session
    afresh: ended, at seq 3, so the endpoint sends the catch-up and then `ended` at join."""
    node_a = await start_node()
    node_b, proxy = await node_behind_proxy(node_a, backplane_gap_timeout_ms=100)
    node_a.cluster.backplane.max_message_bytes = 400
    session_id = await new_session()

    async with node_b.use(session_id) as live_b:
        assert live_b is not None
        watcher = watch(node_b, live_b)
        gated(node_b).hold_reads()
        await stream_then_leave(
            node_a, session_id, [frame(1, width=40), frame(2), frame(3)], end=True
        )
        await settle()
        async with asyncio.timeout(WAIT):
            await gated(node_b).reading.wait()
        assert live_b.pending_end is not None and live_b.pending_end[0] == 3
        await proxy.stop()  # B's storage is gone: the filler cannot read frame 1
        gated(node_b).release_reads()
        await wait_until(watcher, functools.partial(closed, watcher))
        assert watcher.outbox.close_code == closecodes.RESYNC
        assert seqs(watcher) == [] and "ended" not in kinds(watcher)
        assert live_b.dropped
        await proxy.start()
        async with node_b.use(session_id) as fresh:
            assert fresh is not None and fresh is not live_b
            assert fresh.ended and fresh.pending_end is None and fresh.room.published_seq == 3
