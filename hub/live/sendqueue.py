"""What one connection has to send: a bounded queue of JSON texts that the fan-out appends to
without ever awaiting, drained by that connection's own writer (`hub.endpoints.connection`).

A peer that stops reading fills its own queue only; past the bound (in messages or bytes) it
is closed with LAGGING and resumes with `since`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from hub import closecodes

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
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()  # set once a close is requested
        self.close_code: closecodes.CloseCode | None = None
        self.close_reason = ""
        self.flush_before_close = False
        self.oldest_at = 0.0  # when the oldest queued item arrived (perf_counter)

    def push(self, text: str) -> bool:
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
        self.ready.set()
        return True

    def pop(self) -> str:
        """The oldest queued text, for the writer."""
        text = self.items.popleft()
        self.queued_bytes -= len(text)
        return text

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

    def deliver(self, seq: int, text: str) -> None:
        if seq > self.skip_upto:
            self.outbox.push(text)
