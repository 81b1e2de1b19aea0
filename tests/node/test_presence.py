"""Presence and heartbeats across nodes: silent nodes drop out, a node whose own link is
down keeps what it knows, and a heartbeat's unsubscribe does not race a load (the last one
on the PostgreSQL backplane, with real UNLISTEN/LISTEN round trips).

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

from hub.live.backplane.memory import MemoryBackplane
from hub.live.backplane.postgres import PostgresBackplane
from hub.live.node import LiveHub
from hub.live.rooms import Room
from hub.live.session import LiveSession
from hub.settings import Settings
from hub.storage.frames import asyncpg_dsn
from tests.support.nodes import WAIT, StartNode, frame, make_room, seqs, watch


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
    assert node_b.cluster.subscribing
    async with node_b.use(session_id) as live_b, node_a.use(session_id) as live_a:
        assert live_b is not None and live_a is not None
        await sweep
        watcher = watch(node_b, live_b)
        await node_a.attach_mirror(live_a)
        assert node_a.accept(live_a, [frame(s) for s in range(1, 4)]) is None
        async with asyncio.timeout(WAIT):
            while seqs(watcher) != [1, 2, 3]:
                await watcher.outbox.wait_ready()


class Unplugged(MemoryBackplane):
    """An in-process backplane whose link can be marked down, as a networked one's is."""

    connected = True


def live_hub_with_remote_mirror(backplane: MemoryBackplane) -> tuple[LiveHub, Room]:
    """A LiveHub (not started: no database needed) holding one session whose mirror another
    node reported a long time ago."""
    hub = LiveHub(Settings(backplane_heartbeat_ms=1000), "postgresql://unused/none", backplane)
    room, _ = make_room()
    live = LiveSession(uuid.uuid4(), 0, False, room)
    hub.sessions.add(live)
    room.hear("other", watchers=1, mirror_since=5.0, heard_at=0.0)
    return hub, room


async def test_silent_nodes_drop_out_of_presence() -> None:
    hub, room = live_hub_with_remote_mirror(Unplugged())
    await hub.peers.heartbeat()
    assert room.remote == {} and room.presence().mirror == "disconnected"


async def test_presence_is_kept_while_the_own_link_is_down_and_refreshed_on_reset() -> None:
    backplane = Unplugged()
    backplane.connected = False
    hub, room = live_hub_with_remote_mirror(backplane)
    await hub.peers.heartbeat()  # our link is down: the other node's silence proves nothing
    assert room.presence().mirror == "connected"
    backplane.connected = True
    hub.peers.on_backplane_reset()  # back: the other node gets a full expiry period to speak up
    await hub.peers.heartbeat()
    assert room.presence().mirror == "connected"
