"""A mirror moving to another node: the node it reaches hands out the true last seq and
acks nothing storage did not keep, also while that node's storage is down or it has just
dropped the session from memory.

Review-round race tests: each pins one interleaving in which a mirror could have been left
without acks or with a stale `last_seq`.

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
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
import pytest

from hub.frames import MetricsFrame, ProtocolError
from hub.live.node import SessionUnavailable
from hub.storage.frames import asyncpg_dsn
from tests.support.nodes import (
    WAIT,
    NewSession,
    StartBehindProxy,
    StartNode,
    frame,
    mirror_left_a_and_b_lost_storage,
    settle,
    wait_stored,
)


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
                await wait_stored(node_b, session_id, 6)
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
        await wait_stored(node_b, session_id, 5)
        await settle()
        assert link.acked == 5, f"frames 1..5 are stored but the mirror was acked {link.acked}"
