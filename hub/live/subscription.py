"""One subscription of a `/ws/watch` connection (see `hub.live.subscriptions`): a room's
`Watcher` whose outbox is its own bounded queue inside the connection, each message tagged
with its session, catch-up first."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Literal, Protocol

from hub import closecodes
from hub.frames import Batching, Frame, SessionError, encode
from hub.live.overview import Overview
from hub.live.sendqueue import SendQueue, Watcher


class Connection(Protocol):
    """What a subscription tells its connection (`hub.live.subscriptions.Subscriptions`)."""

    queue_frames: int
    queue_bytes: int

    def wake(self, sub: Subscription) -> None: ...

    def touched(self, sub: Subscription) -> None: ...

    def closed(
        self, sub: Subscription, code: closecodes.CloseCode, reason: str, flush: bool
    ) -> None: ...


_PRESENCE = '{"type":"presence"'

ErrorCode = Literal["unknown", "forbidden", "cap", "already_subscribed", "resync", "unavailable"]


def tagged(text: str, key: str) -> str:
    """A message for one session with its `session_id` (an object's first key, no decode)."""
    return f'{{"session_id":"{key}",{text[1:]}'


def session_error(key: str, code: ErrorCode, message: str, last_seq: int | None = None) -> str:
    return encode(
        SessionError(session_id=key, code=code, message=message, last_seq=last_seq)
    ).decode()


class SessionOutbox(SendQueue):
    """One subscription's queue: a watcher's bounds, but overflowing it (or the room closing
    its watchers) ends only this subscription (`Subscriptions.closed`)."""

    def __init__(self, sub: Subscription, bound: int, max_bytes: int) -> None:
        super().__init__(bound, max_bytes)
        self.sub = sub

    def push(self, text: str, frame: bool = False) -> bool:
        sub = self.sub
        if sub.dropped:
            return False
        overview = sub.overview
        if not frame:
            if overview is not None and text.startswith(_PRESENCE):
                overview.event(text)
                sub.connection.touched(sub)
                return True
            if overview is not None and overview.dirty:  # what came before goes first
                self.push_tagged(overview.update(overview.sent_at))
            text = tagged(text, sub.key)
        return self.push_tagged(text, frame)

    def push_tagged(self, text: str, frame: bool = False) -> bool:
        if not super().push(text, frame):
            return False
        self.sub.connection.wake(self.sub)
        return True

    def close(self, code: closecodes.CloseCode, reason: str = "", flush: bool = False) -> None:
        self.sub.connection.closed(self.sub, code, reason, flush)


class Subscription(Watcher):
    outbox: SessionOutbox

    def __init__(
        self,
        connection: Connection,
        session_id: uuid.UUID,
        since: int | None,
        overview: Overview | None,
    ) -> None:
        self.connection = connection
        self.session_id = session_id
        self.key = str(session_id)
        self.outbox = SessionOutbox(self, connection.queue_frames, connection.queue_bytes)
        self.skip_upto = since or 0
        self.overview = overview
        self.batching = Batching(session_id)
        self.seqs: deque[int] = deque()  # the seq of each frame in the outbox
        self.delivered = since or 0  # the last seq handed to the writer
        # The catch-up (`subscribed`, snapshot or replayed frames), sent before the outbox;
        # while `held` (frames read from storage) the outbox waits behind it.
        self.front: deque[tuple[str, int]] = deque()
        self.held = False
        self.drained = asyncio.Event()  # `front` was emptied: a catch-up may add a page
        self.finishing = False  # `ended` is queued: leave once it is sent
        self.dropped = False

    def deliver(self, seq: int, text: str, frame: Frame | None = None) -> None:
        if seq <= self.skip_upto or self.dropped:
            return
        if self.overview is not None:
            self.overview.frame(seq, text, frame)
            self.connection.touched(self)
        elif self.outbox.push(text, True):
            self.seqs.append(seq)

    def catch_up(self, text: str, last_seq: int = 0) -> None:
        """Queue a catch-up message (`last_seq`: the newest frame it carries, if any)."""
        self.front.append((text, last_seq))
        self.drained.clear()
        self.connection.wake(self)

    def catch_up_frames(self, frames: list[tuple[int, str]]) -> None:
        """Queue replayed frames (seq, text), oldest first, in `batch` messages."""
        batching = self.batching
        start = size = 0
        for i, (_, text) in enumerate(frames):
            if i > start and (
                i - start >= batching.max_frames or size + len(text) > batching.max_bytes
            ):
                self._catch_up_batch(frames[start:i])
                start, size = i, 0
            size += len(text)
        if start < len(frames):
            self._catch_up_batch(frames[start:])

    def _catch_up_batch(self, frames: list[tuple[int, str]]) -> None:
        self.catch_up(self.batching.message([text for _, text in frames]), frames[-1][0])

    def release(self) -> None:
        """The catch-up is queued in full: the live tail may follow it."""
        self.held = False
        self.connection.wake(self)

    @property
    def has_more(self) -> bool:
        return bool(self.front) or (not self.held and bool(self.outbox.items))

    def next_message(self) -> str | None:
        if self.front:
            text, seq = self.front.popleft()
            self.delivered = max(self.delivered, seq)
            if not self.front:
                self.drained.set()
            return text
        outbox = self.outbox
        if self.held or not outbox.items:
            return None
        frames = outbox.take_frames(self.batching.max_frames, self.batching.max_bytes)
        if not frames:
            return outbox.pop()
        seqs = self.seqs
        for _ in range(len(frames) - 1):
            seqs.popleft()
        self.delivered = seqs.popleft()
        return self.batching.message(frames)

    def clear(self) -> None:
        self.dropped = True
        self.front.clear()
        self.outbox.items.clear()
        self.seqs.clear()
        self.drained.set()
