"""The lobby feed: sessions going live, their presence, their end, across the cluster
(sans-I/O).

`LiveHub` calls the hooks where it attaches a mirror (`went_live`), where presence changes
(`presence`) and where it tells a session's watchers it ended (`ended`); each becomes one
message to every lobby listener of this node (a `/ws/watch` connection subscribed to `"*"`)
and is published to the other nodes, whose lobbies pass it on (`heard`), so a lobby needs no
polling and sees the sessions of every hub process, wherever their mirror is connected.

What other nodes said is soft state: each node repeats the `session_live` of its live sessions
every heartbeat (`refresh`), so a node that started later, or lost messages on the backplane,
learns them within a heartbeat, and the sessions of a node that went silent (it died, or lost
its link) leave the table after the expiry (`expire`), announced as disconnected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec
import orjson

from hub import closecodes
from hub.live.session import LiveSession

_encode = msgspec.json.encode


class Listener(Protocol):
    def say(self, text: str) -> None: ...

    def close_lobby(self, code: closecodes.CloseCode) -> None: ...


def _presence(live: LiveSession) -> dict[str, Any]:
    p = live.room.presence(mirror_here=live.mirror_connected)
    return {"mirror": p.mirror, "watchers": p.watchers}


def _is_live(live: LiveSession) -> bool:
    return live.mirror_connected and live.writable and not live.gone


@dataclasses.dataclass
class RemoteLive:
    """A session another node said is live there: its `session_live` message as it said it."""

    node: str
    text: str
    watchers: int
    heard_at: float


class Lobby:
    def __init__(self, publish: Callable[[str], None] | None = None) -> None:
        self.listeners: set[Listener] = set()
        self._publish = publish  # to the other nodes (`Cluster.lobby`); None: there are none
        self.remote: dict[str, RemoteLive] = {}  # by session id, as the messages spell it

    # This node's sessions ------------------------------------------------------------------

    @property
    def heard_of(self) -> bool:
        """Someone hears this node's lobby messages: a listener here, or other nodes."""
        return bool(self.listeners) or self._publish is not None

    def went_live(self, live: LiveSession) -> None:
        if self.heard_of:
            self._tell(self.live_message(live))

    def presence(self, live: LiveSession, mirror_left: bool = False) -> None:
        """The session's presence changed (here, or as this node heard from another). With
        other nodes, the mirror's node speaks for it (it hears every node's watchers): another
        node's view may not know of the mirror yet. It also says when the mirror left it."""
        if not self.heard_of:
            return
        if self._publish is not None and not (live.mirror_connected or mirror_left):
            return
        message = {"type": "session_presence", "session_id": live.id, **_presence(live)}
        self._tell(_encode(message).decode())

    def ended(self, live: LiveSession, last_seq: int) -> None:
        if self.heard_of:
            message = {"type": "session_ended", "session_id": live.id, "last_seq": last_seq}
            self._tell(_encode(message).decode())

    def refresh(self, sessions: Iterable[LiveSession]) -> list[str]:
        """The `session_live` of each session live on this node now, for the heartbeat to
        repeat to the other nodes."""
        return [self.live_message(s) for s in sessions if _is_live(s)]

    def close(self, code: closecodes.CloseCode) -> None:
        for listener in list(self.listeners):
            listener.close_lobby(code)

    @staticmethod
    def live_message(live: LiveSession) -> str:
        message = {
            "type": "session_live",
            "session_id": live.id,
            "session": live.room.session,
            "presence": _presence(live),
            "last_seq": live.room.published_seq,
        }
        return _encode(message).decode()

    def live_now(self, sessions: Iterable[LiveSession]) -> list[str]:
        """`session_live` for each session live now, on this node or another (a new
        listener's start)."""
        here = [s for s in sessions if _is_live(s)]
        local = {str(s.id) for s in here}
        texts = [self.live_message(s) for s in here]
        return texts + [r.text for key, r in self.remote.items() if key not in local]

    # What the other nodes said ---------------------------------------------------------

    def heard(self, node: str, text: str, now: float, *, refresh: bool = False) -> None:
        """A lobby message of `node`: kept in the table, and passed on to this node's
        listeners unless it is the repeat of a session already known."""
        message = orjson.loads(text)
        key, kind = message.get("session_id"), message.get("type")
        if not isinstance(key, str):
            raise ValueError("a lobby message without a session_id")
        entry = self.remote.get(key)
        if kind == "session_live":
            watchers = message["presence"]["watchers"]
            if refresh and entry is not None:
                # A repeat. From another node than the one the table has, it is an old word
                # (the mirror moved since): the node it moved to repeats it, or it expires.
                if entry.node == node:
                    entry.text, entry.watchers, entry.heard_at = text, watchers, now
                return
            self.remote[key] = RemoteLive(node, text, watchers, now)
        elif kind == "session_presence":
            if entry is not None and entry.node == node:
                if message["mirror"] == "connected":
                    entry.watchers = message["watchers"]
                else:  # its mirror left that node: live elsewhere, if anywhere, says so
                    del self.remote[key]
        elif kind == "session_ended":
            self.remote.pop(key, None)
        else:
            raise ValueError(f"unknown lobby message {kind!r}")
        self._say(text)

    def expire(self, heard_before: float) -> None:
        """Forget the sessions of nodes not heard since `heard_before`; to the listeners their
        mirror is disconnected (the node that had it is gone)."""
        for key, entry in list(self.remote.items()):
            if entry.heard_at < heard_before:
                del self.remote[key]
                message = {
                    "type": "session_presence",
                    "session_id": key,
                    "mirror": "disconnected",
                    "watchers": entry.watchers,
                }
                self._say(_encode(message).decode())

    def _tell(self, text: str) -> None:
        self._say(text)
        if self._publish is not None:
            self._publish(text)

    def _say(self, text: str) -> None:
        for listener in self.listeners:
            listener.say(text)
