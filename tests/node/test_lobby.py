"""The lobby feed across nodes: a lobby on one node hears the sessions whose mirror is on
another, live, their presence and their end, and a node that starts later learns the sessions
live elsewhere from the others' heartbeat.

Two or three `LiveHub` nodes in this process on one `MemoryBroker` and the test run's real
PostgreSQL, driven as the endpoints drive them (tests/support/nodes.py); heartbeats are called
by hand.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import orjson

from tests.support.nodes import (
    LobbyListener,
    StartNode,
    frame,
    heartbeats,
    settle,
    wait_stored,
    watch,
)


async def test_a_lobby_follows_a_session_whose_mirror_is_on_another_node(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    node_a, node_b = await start_node(), await start_node()
    lobby = LobbyListener()
    node_b.lobby.listeners.add(lobby)
    session_id = await new_session()
    async with node_a.use(session_id) as live:
        assert live is not None
        link = await node_a.attach_mirror(live)
        await settle()
        assert lobby.of(session_id) == ["session_live"]
        assert lobby.got[0]["session"]["child_name"] == "Review Child"
        # A lobby opened on B now is told of it too.
        started = [orjson.loads(t) for t in node_b.lobby.live_now(node_b.sessions)]
        assert [m["session_id"] for m in started] == [str(session_id)]

        watch(node_a, live)
        await settle()
        assert lobby.got[-1]["type"] == "session_presence"
        assert lobby.got[-1]["watchers"] == 1 and lobby.got[-1]["mirror"] == "connected"
        # A watcher on B, which has not heard of A's mirror when it joins: the lobby hears
        # the mirror's node (A), which counts B's watcher, never B's own partial view.
        async with node_b.use(session_id) as live_b:
            assert live_b is not None
            watch(node_b, live_b)
            await settle()
            presence = [m for m in lobby.got if m["type"] == "session_presence"]
            assert presence[-1]["watchers"] == 2
            assert {m["mirror"] for m in presence} == {"connected"}

            assert node_a.accept(live, [frame(s) for s in range(1, 4)]) is None
            await wait_stored(node_a, session_id, 3)
            await node_a.end(live, 3)
            node_a.detach_mirror(live, link)
    await settle()
    assert "session_ended" in lobby.of(session_id)
    assert lobby.got[-1]["type"] == "session_presence"
    assert lobby.got[-1]["mirror"] == "disconnected"
    assert node_b.lobby.live_now(node_b.sessions) == []


async def test_a_node_started_later_learns_the_live_sessions_from_the_heartbeat(
    start_node: StartNode, new_session: Callable[[], Awaitable[uuid.UUID]]
) -> None:
    node_a = await start_node()
    session_id = await new_session()
    async with node_a.use(session_id) as live:
        assert live is not None
        link = await node_a.attach_mirror(live)
        node_c = await start_node()  # missed the session_live
        lobby = LobbyListener()
        node_c.lobby.listeners.add(lobby)
        assert node_c.lobby.live_now(node_c.sessions) == []
        await heartbeats(node_a, rounds=1)
        assert lobby.of(session_id) == ["session_live"]
        assert len(node_c.lobby.live_now(node_c.sessions)) == 1
        await heartbeats(node_a, node_c, rounds=2)  # repeats are not news
        assert lobby.of(session_id) == ["session_live"]
        node_a.detach_mirror(live, link)
    await settle()
    assert lobby.of(session_id) == ["session_live", "session_presence"]
    assert node_c.lobby.live_now(node_c.sessions) == []
