"""The lobby feed: this node's sessions going live, their presence, their end (sans-I/O).

`LiveHub` calls the hooks where it attaches a mirror (`went_live`), where presence changes
(`presence`) and where it tells a session's watchers it ended (`ended`); each becomes one
message to every lobby listener (a `/ws/watch` connection subscribed to `"*"`), so a lobby
needs no polling. Only sessions held by this node are announced: with several hub
processes a lobby sees the sessions whose mirror is connected to its own process.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from hub import closecodes
from hub.live.session import LiveSession

_encode = msgspec.json.encode


class Listener(Protocol):
    def say(self, text: str) -> None: ...

    def close_lobby(self, code: closecodes.CloseCode) -> None: ...


def _presence(live: LiveSession) -> dict[str, Any]:
    p = live.room.presence(mirror_here=live.mirror_connected)
    return {"mirror": p.mirror, "watchers": p.watchers}


class Lobby:
    def __init__(self) -> None:
        self.listeners: set[Listener] = set()

    def went_live(self, live: LiveSession) -> None:
        if self.listeners:
            self._say(self.live_message(live))

    def presence(self, live: LiveSession) -> None:
        if self.listeners:
            message = {"type": "session_presence", "session_id": live.id, **_presence(live)}
            self._say(_encode(message).decode())

    def ended(self, live: LiveSession, last_seq: int) -> None:
        if self.listeners:
            message = {"type": "session_ended", "session_id": live.id, "last_seq": last_seq}
            self._say(_encode(message).decode())

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

    @staticmethod
    def live_now(sessions: Iterable[LiveSession]) -> list[str]:
        """`session_live` for each session live on this node now (a new listener's start)."""
        return [
            Lobby.live_message(s)
            for s in sessions
            if s.mirror_connected and s.writable and not s.gone
        ]

    def _say(self, text: str) -> None:
        for listener in self.listeners:
            listener.say(text)
