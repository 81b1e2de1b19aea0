"""Every WebSocket close code the hub sends, and whether the client should reconnect.

1000-1015 are RFC 6455 codes; 4000-4999 are ours. "Reconnect" means: reconnect with backoff
and resume (a mirror resends its unacked frames; a watcher sends `since` = last seq it saw).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    reconnect: bool
    meaning: str


NORMAL = CloseCode(1000, "normal", False, "session ended (after `end`) or the client closed")
PROTOCOL_ERROR = CloseCode(1002, "protocol_error", False, "first message was not `hello`")
UNSUPPORTED = CloseCode(1003, "unsupported_data", False, "binary messages are not accepted")
# Sent by the WebSocket protocol layer (hub/edge.py): the same bytes would fail again.
INVALID_TEXT = CloseCode(1007, "invalid_payload", False, "a text message was not valid UTF-8")
POLICY = CloseCode(1008, "policy_violation", False, "bad, expired or out-of-scope credential")
# Not "reconnect": resending the same message would fail again; the client must split it.
TOO_BIG = CloseCode(1009, "message_too_big", False, "message over the size limit")
INTERNAL = CloseCode(1011, "internal_error", True, "unexpected hub error; resume")
# Its reason says "resend unacked frames" when the hub could not store them all in time.
RESTART = CloseCode(1012, "service_restart", True, "hub shutting down after storing everything")
HELLO_TIMEOUT = CloseCode(4000, "hello_timeout", True, "no `hello` within the time limit")
REPLACED = CloseCode(4001, "replaced", False, "another mirror connection took this session")
UNKNOWN_SESSION = CloseCode(4004, "unknown_session", False, "no session with this id")
SESSION_ENDED = CloseCode(4005, "session_ended", False, "the session has ended; nothing to write")
LAGGING = CloseCode(4008, "lagging", True, "watcher fell behind its queue bound; resume with since")
RESYNC = CloseCode(
    4009, "resync", True, "this hub lost frames of the live stream; resume with since"
)
TOO_MANY_ERRORS = CloseCode(4029, "too_many_errors", False, "too many invalid messages in a row")
RATE_LIMITED = CloseCode(4030, "rate_limited", True, "messages too fast; reconnect, send slower")
TOO_MANY_CONNECTIONS = CloseCode(
    4031, "too_many_connections", True, "too many connections from this address; retry later"
)
ROOM_FULL = CloseCode(4032, "room_full", False, "the session has its maximum of watchers")

ALL = [
    NORMAL,
    PROTOCOL_ERROR,
    UNSUPPORTED,
    INVALID_TEXT,
    POLICY,
    TOO_BIG,
    INTERNAL,
    RESTART,
    HELLO_TIMEOUT,
    REPLACED,
    UNKNOWN_SESSION,
    SESSION_ENDED,
    LAGGING,
    RESYNC,
    TOO_MANY_ERRORS,
    RATE_LIMITED,
    TOO_MANY_CONNECTIONS,
    ROOM_FULL,
]
BY_CODE = {c.code: c for c in ALL}


def should_reconnect(code: int) -> bool:
    """Unknown codes (network drops give 1006) are treated as transient."""
    known = BY_CODE.get(code)
    return True if known is None else known.reconnect
