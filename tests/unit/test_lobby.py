"""The lobby's table of what other nodes said (sans-I/O): which of their messages reach this
node's listeners, what a new listener is told, and how a silent node's sessions leave."""

from __future__ import annotations

import uuid

import orjson
import pytest

from hub.live.lobby import Lobby
from hub.live.session import LiveSession
from tests.support.nodes import LobbyListener, make_room


def live(session_id: str, watchers: int = 0) -> str:
    return orjson.dumps(
        {
            "type": "session_live",
            "session_id": session_id,
            "session": {"id": session_id, "child_name": "Ada"},
            "presence": {"mirror": "connected", "watchers": watchers},
            "last_seq": 7,
        }
    ).decode()


def presence(session_id: str, mirror: str, watchers: int) -> str:
    message = {"type": "session_presence", "session_id": session_id, "mirror": mirror}
    return orjson.dumps(message | {"watchers": watchers}).decode()


def ended(session_id: str) -> str:
    message = {"type": "session_ended", "session_id": session_id, "last_seq": 9}
    return orjson.dumps(message).decode()


@pytest.fixture
def lobby() -> tuple[Lobby, LobbyListener]:
    lobby, listener = Lobby(), LobbyListener()
    lobby.listeners.add(listener)
    return lobby, listener


def test_another_nodes_session_is_passed_on_and_told_to_new_listeners(
    lobby: tuple[Lobby, LobbyListener],
) -> None:
    table, listener = lobby
    sid = str(uuid.uuid4())
    table.heard("a", live(sid), now=1.0)
    assert [m["type"] for m in listener.got] == ["session_live"]
    assert table.live_now([]) == [live(sid)]
    # The heartbeat's repeat of a known session is not news; a changed presence is.
    table.heard("a", live(sid, watchers=2), now=2.0, refresh=True)
    table.heard("a", presence(sid, "connected", 3), now=2.5)
    assert [m["type"] for m in listener.got] == ["session_live", "session_presence"]
    assert table.remote[sid].watchers == 3 and table.remote[sid].heard_at == 2.0
    table.heard("a", ended(sid), now=3.0)
    assert listener.got[-1]["type"] == "session_ended"
    assert table.live_now([]) == []


def test_a_repeat_heard_first_is_news_after_lost_messages(
    lobby: tuple[Lobby, LobbyListener],
) -> None:
    # A node that started later, or missed the session_live on the backplane.
    table, listener = lobby
    sid = str(uuid.uuid4())
    table.heard("a", live(sid), now=1.0, refresh=True)
    assert [m["session_id"] for m in listener.got] == [sid]
    assert table.live_now([]) == [live(sid)]


def test_a_mirror_that_moved_stays_with_the_node_that_has_it(
    lobby: tuple[Lobby, LobbyListener],
) -> None:
    table, listener = lobby
    sid = str(uuid.uuid4())
    table.heard("a", live(sid), now=1.0)
    table.heard("b", live(sid), now=2.0)  # the mirror reconnected to node b
    # Node a's word that its mirror left, and a repeat it sent before, arrive late.
    table.heard("a", presence(sid, "disconnected", 0), now=2.1)
    table.heard("a", live(sid), now=2.2, refresh=True)
    assert table.remote[sid].node == "b" and table.remote[sid].heard_at == 2.0
    assert len(table.live_now([])) == 1
    # Its own node's word that it left takes it out of the table (still passed on).
    table.heard("b", presence(sid, "disconnected", 1), now=3.0)
    assert table.live_now([]) == []
    assert listener.got[-1] == orjson.loads(presence(sid, "disconnected", 1))


def test_the_sessions_of_a_silent_node_expire_as_disconnected(
    lobby: tuple[Lobby, LobbyListener],
) -> None:
    table, listener = lobby
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    table.heard("a", live(old, watchers=2), now=1.0)
    table.heard("b", live(recent), now=5.0)
    table.expire(heard_before=4.0)
    assert list(table.remote) == [recent]
    assert listener.got[-1] == orjson.loads(presence(old, "disconnected", 2))


def test_an_unknown_lobby_message_is_refused(lobby: tuple[Lobby, LobbyListener]) -> None:
    table, listener = lobby
    with pytest.raises(ValueError):
        table.heard("a", '{"type": "party", "session_id": "x"}', now=1.0)
    assert listener.got == []


def test_this_nodes_changes_go_to_its_listeners_and_to_the_other_nodes() -> None:
    published: list[str] = []
    table, listener = Lobby(published.append), LobbyListener()
    table.listeners.add(listener)
    room, _ = make_room()
    session = LiveSession(uuid.uuid4(), 0, False, room)
    # Without the mirror here, this node's view of the presence is not the one to tell...
    table.presence(session)
    assert published == listener.got == []
    # ...but that the mirror left it is.
    table.presence(session, mirror_left=True)
    table.ended(session, 4)
    assert [orjson.loads(t) for t in published] == listener.got
    assert [m["type"] for m in listener.got] == ["session_presence", "session_ended"]
    assert listener.got[0]["watchers"] == 1  # make_room's watcher
