"""The mirror's rules after its hello, without a socket: what each text message is (frames to
take, or the end), and when the hub gives up on a connection that keeps sending bad ones.

The endpoint reads a message, hands it to `MirrorRules.read`, and does what comes back: frames
go to the node (`admit`, then `accept`), `End` ends the session, and a `ProtocolError` (from
decoding, or refused by the node) goes back through `refused`, which says what to send and
whether to close.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hub import closecodes
from hub.frames import (
    End,
    Frame,
    Hello,
    ProtocolError,
    decode_client_message,
    error_message,
    frames_of,
)

# Consecutive invalid messages before the hub gives up on a connection.
MAX_ERRORS_IN_A_ROW = 20


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """What to tell the mirror about a bad message: the error frame, and a close (after it)
    when it has sent too many bad ones in a row."""

    error: str
    close: closecodes.CloseCode | None


class MirrorRules:
    def __init__(self) -> None:
        self.errors_in_a_row = 0

    def read(self, text: str) -> End | Sequence[Frame]:
        """The frames of one message (in the order sent), or its `End`. Raises ProtocolError."""
        msg = decode_client_message(text)
        if isinstance(msg, Hello):
            raise ProtocolError("unexpected_hello", "hello was already received")
        if isinstance(msg, End):
            return msg
        return frames_of(msg)

    def taken(self) -> None:
        """The message's frames were all taken."""
        self.errors_in_a_row = 0

    def refused(self, exc: ProtocolError) -> Refusal:
        self.errors_in_a_row += 1
        too_many = self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW
        return Refusal(
            error_message(exc).decode(), closecodes.TOO_MANY_ERRORS if too_many else None
        )
