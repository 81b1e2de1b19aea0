"""What one connection has to send: a bounded queue of JSON texts that the fan-out appends to
without ever awaiting, drained by that connection's own writer (`hub.endpoints.connection`).

A peer that stops reading fills its own queue only; past the bound (in messages or bytes) it
is closed with LAGGING and resumes with `since`.

The queue knows which of its texts are frames, so that a protocol 2 watcher's writer can take
the run of frames at its head and send them as one `batch` (`take_frames`), while any other
message (presence, `ended`, an error) keeps its place between them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from hub import closecodes
from hub.flag import Flag

if TYPE_CHECKING:
    from hub.frames import Frame

# The default byte bound, for callers (tests) that give only the message bound.
DEFAULT_QUEUE_BYTES = 1 << 20


class SendQueue:
    """A queue of JSON texts for one connection, drained by that connection's writer; bounded
    in messages and in bytes (past either, the connection is closed with LAGGING)."""

    def __init__(self, bound: int, max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.bound = bound
        self.max_bytes = max_bytes
        self.items: deque[str] = deque()
        self.queued_bytes = 0
        self.ready = Flag()
        self.closing = Flag()  # set once a close is requested
        self.close_code: closecodes.CloseCode | None = None
        self.close_reason = ""
        self.flush_before_close = False
        self.oldest_at = 0.0  # when the oldest queued item arrived (perf_counter)
        # Where the queued messages that are not frames stand, counted in pushes; rare (a
        # list, not a deque: nothing allocated until one comes), so a frame costs a count.
        self.others: list[int] = []
        self.pushed = 0
        self.popped = 0
        # Set by the writer while it is idle: called on a push instead of waking the writer
        # (it writes to the socket at once: `hub.endpoints.connection.DirectWrites`).
        self.on_push: Callable[[], None] | None = None

    def push(self, text: str, frame: bool = False) -> bool:
        if self.close_code is not None:
            return False
        if len(self.items) >= self.bound or (
            self.items and self.queued_bytes + len(text) > self.max_bytes
        ):
            self.close(closecodes.LAGGING, "send queue full; reconnect with since=<last seq>")
            return False
        if not self.items:
            self.oldest_at = time.perf_counter()
        self.queued_bytes += len(text)
        self.items.append(text)
        if not frame:
            self.others.append(self.pushed)
        self.pushed += 1
        if self.on_push is not None:
            self.on_push()
        else:
            self.ready.set()
        return True

    def wake(self) -> None:
        """Wake the writer with nothing new queued (a mirror's ack is due)."""
        self.ready.set()

    async def wait_ready(self) -> None:
        """For the writer: wait until there is something to do (a text, an ack, a close)."""
        await self.ready.wait()
        self.ready.clear()

    def pop(self) -> str:
        """The oldest queued text, for the writer."""
        text = self.items.popleft()
        self.queued_bytes -= len(text)
        if self.others and self.others[0] == self.popped:
            del self.others[0]
        self.popped += 1
        return text

    def take_frames(self, max_frames: int, max_bytes: int) -> list[str]:
        """The frames at the head of the queue, oldest first, up to the first message that
        is not a frame, `max_frames` and `max_bytes` (but at least one frame, if the head is
        one). Empty when the head is not a frame: `pop` it."""
        count = len(self.items) if not self.others else self.others[0] - self.popped
        count = min(count, max_frames)
        taken: list[str] = []
        size = 0
        items = self.items
        while len(taken) < count:
            text = items[0]
            if taken and size + len(text) > max_bytes:
                break
            size += len(text)
            taken.append(items.popleft())
        self.queued_bytes -= size
        self.popped += len(taken)
        return taken

    def close(self, code: closecodes.CloseCode, reason: str = "", flush: bool = False) -> None:
        """Ask the writer to close the socket, after sending what is queued if `flush`;
        otherwise queued items are dropped (the peer resumes from what it has)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason or code.meaning
            self.flush_before_close = flush
            self.ready.set()
            self.closing.set()


class Watcher:
    def __init__(self, bound: int, since: int | None, max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.outbox = SendQueue(bound, max_bytes)
        # Frames at or below this seq were already seen (a resume after a hub restart can
        # see the mirror resend frames the watcher got before): skip them.
        self.skip_upto = since or 0

    def deliver(self, seq: int, text: str, frame: Frame | None = None) -> None:
        """Frame `seq` (`frame`: decoded, when the room has it; an overview needs it)."""
        if seq > self.skip_upto:
            self.outbox.push(text, True)
