"""Gap filling across nodes: a node whose room misses frames reads them from storage,
passes on what it cannot decode as it is, gives up cleanly (its watchers told to resume,
no 4009 loop), and never outlives shutdown.

Review-round race tests: each pins one interleaving in which a watcher could have been left
with a silent gap.

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
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

import orjson
import pytest

from hub import closecodes
from hub.frames import encode
from hub.live.rooms import Watcher
from tests.support.nodes import (
    WAIT,
    NewSession,
    StartNode,
    accept_as_newer_hub,
    backplane_loss,
    closed,
    frame,
    gated,
    heartbeats,
    seqs,
    settle,
    wait_until,
    watch,
)


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
        gated(node_b).hold_reads()  # B's storage reads are slow for now
        async with node_a.use(session_id) as live_a:
            assert live_a is not None
            link_a = await node_a.attach_mirror(live_a)
            accept_as_newer_hub(node_a, live_a, 1, newer_text)
            await live_a.wait_stored(1)
            node_a.detach_mirror(live_a, link_a)  # the device moves to B
        await settle()
        async with asyncio.timeout(WAIT):
            await gated(node_b).reading.wait()
        link_b = await node_b.attach_mirror(live_b)
        try:
            assert link_b.acked == 1
            assert node_b.accept(live_b, [frame(2), frame(3)]) is None
            gated(node_b).release_reads()
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
