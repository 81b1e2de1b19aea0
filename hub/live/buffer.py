"""The bounded write buffer between accepting a frame and committing it to PostgreSQL.

Frames stay counted in the buffer until their batch commits, so the bound covers the batches
in flight too: memory is bounded by `max_frames` / `max_bytes` whatever PostgreSQL does. A
mirror reader waits for room *before* reading its next message, which turns a full buffer
into TCP backpressure on the mirrors instead of a drop.

Fair to every session: each session has its own queue, bounded in frames and bytes
(`session_max_frames` / `session_max_bytes`), so one mirror's backlog pauses that mirror
alone and never fills the whole buffer; and a batch takes a fair share from every session
with frames waiting (max-min fair), so one session's backlog cannot crowd the others out of
a flush. A session is in at most one batch at a time: its acks follow its commits in order,
and a session whose batch is stuck holds nobody else's frames back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import deque
from itertools import islice

from hub import metrics
from hub.storage.live_store import PendingFrame

BACKLOG_BATCHES = 10


@dataclasses.dataclass(slots=True)
class SessionQueue:
    """One session's frames in seq order; the first `in_flight` are in a batch being stored."""

    frames: deque[PendingFrame] = dataclasses.field(default_factory=deque)
    bytes: int = 0
    in_flight: int = 0
    paced: bool = False  # its last batch was a full one: the next waits (see `pace_s`)

    @property
    def waiting(self) -> int:
        """Frames a batch may take now; 0 while the session has a batch in flight or waits."""
        return 0 if self.in_flight or self.paced else len(self.frames)

    def push(self, item: PendingFrame) -> int:
        """Append `item`; its size in bytes."""
        self.frames.append(item)
        size = len(item.text)
        self.bytes += size
        return size

    def start_batch(self, count: int, paced: bool) -> None:
        """Its first `count` frames are in a batch now; `paced`: the next one waits."""
        self.in_flight = count
        self.paced = paced

    def drop_stored(self, count: int) -> int:
        """Its batch of `count` frames committed: drop them; their size in bytes."""
        size = 0
        for _ in range(count):
            size += len(self.frames.popleft().text)
        self.bytes -= size
        self.in_flight = 0
        return size

    def settle(self) -> None:
        """No batch in flight and no waiting: its frames may go in the next batch."""
        self.in_flight = 0
        self.paced = False


class WriteBuffer:
    def __init__(
        self,
        max_frames: int,
        max_bytes: int,
        flush_frames: int,
        session_max_frames: int | None = None,
        session_max_bytes: int | None = None,
        pace_s: float = 0.0,
    ) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.flush_frames = flush_frames
        self.session_max_frames = session_max_frames or max_frames
        self.session_max_bytes = session_max_bytes or max_bytes
        # A session that filled its share of a batch (a backlog: a flood, or catching up after
        # an outage) waits this long after the commit before its next batch. So one session
        # is stored at most `flush_frames` per `pace_s`, and cannot keep storage and the hub
        # busy flat out; a mirror at 30 frames/s never fills a share.
        self.pace_s = pace_s
        self._queues: dict[uuid.UUID, SessionQueue] = {}
        self._frames = 0
        self._bytes = 0
        self._ready = 0  # frames a batch could take now (of sessions without one in flight)
        # Mirrors waiting for room: (their future, session, frames, bytes), oldest first.
        self._room_waiters: list[tuple[asyncio.Future[None], uuid.UUID, int, int]] = []
        self._has_ready = asyncio.Event()
        self._full_batch = asyncio.Event()
        self.peak_frames = 0  # for tests and the benchmark: the bound was never passed
        metrics.BUFFER_MAX_FRAMES.set(max_frames)

    def __len__(self) -> int:
        return self._frames

    def session_frames(self, session_id: uuid.UUID) -> int:
        queue = self._queues.get(session_id)
        return len(queue.frames) if queue is not None else 0

    def session_bytes(self, session_id: uuid.UUID) -> int:
        queue = self._queues.get(session_id)
        return queue.bytes if queue is not None else 0

    # Its books, to read (the tests check them against the queues) -------------------------

    @property
    def ready(self) -> int:
        """Frames a batch could take now (of sessions without one in flight, not paced)."""
        return self._ready

    @property
    def ready_signalled(self) -> bool:
        """The flusher has been told frames are ready (true exactly when `ready` > 0)."""
        return self._has_ready.is_set()

    def queues(self) -> list[SessionQueue]:
        """The sessions' queues now, to read."""
        return list(self._queues.values())

    def fits(self, session_id: uuid.UUID, frames: int, size: int) -> bool:
        # An empty buffer (or queue) takes any single message, so one message larger than a
        # byte bound cannot wedge its mirror forever (messages are capped at the WS size limit).
        queue = self._queues.get(session_id)
        if queue is not None and queue.frames:
            if (
                len(queue.frames) + frames > self.session_max_frames
                or queue.bytes + size > self.session_max_bytes
            ):
                return False
        if not self._frames:
            return True
        return self._frames + frames <= self.max_frames and self._bytes + size <= self.max_bytes

    async def wait_for_room(self, session_id: uuid.UUID, frames: int, size: int) -> None:
        while not self.fits(session_id, frames, size):
            waiter = asyncio.get_running_loop().create_future()
            entry = (waiter, session_id, frames, size)
            self._room_waiters.append(entry)
            try:
                await waiter
            finally:
                if not waiter.done():  # cancelled
                    self._room_waiters.remove(entry)

    def _wake_fitting(self) -> None:
        """Wake the waiting mirrors whose message fits now, and only those: with hundreds
        waiting at saturation, waking them all on every commit (a Condition's notify_all)
        was 7% of the profile's samples in task switches that found no room. A woken mirror
        checks again when it runs (another may have taken the room meanwhile)."""
        waiting: list[tuple[asyncio.Future[None], uuid.UUID, int, int]] = []
        for entry in self._room_waiters:
            waiter, session_id, frames, size = entry
            if waiter.done():
                continue
            if self.fits(session_id, frames, size):
                waiter.set_result(None)
            else:
                waiting.append(entry)
        self._room_waiters = waiting

    def put(self, item: PendingFrame) -> None:
        """Append; the caller has awaited `wait_for_room` for its whole message."""
        queue = self._queues.get(item.session_id)
        if queue is None:
            queue = self._queues[item.session_id] = SessionQueue()
        size = queue.push(item)
        self._frames += 1
        self._bytes += size
        self.peak_frames = max(self.peak_frames, self._frames)
        metrics.BUFFER_FRAMES.set(self._frames)
        if not queue.in_flight and not queue.paced:
            self._ready += 1
            self._has_ready.set()
            if self._ready >= self.flush_frames:
                self._full_batch.set()

    async def next_batch(self, max_age_s: float) -> list[PendingFrame]:
        """Wait until a batch is due (full, or its oldest frame is `max_age_s` old); take it.

        With a backlog of many sessions (storage was slow or away) a batch takes up to
        BACKLOG_BATCHES times the flush size, so the buffer drains in fewer round trips
        instead of falling behind."""
        await self._has_ready.wait()
        if self._ready < self.flush_frames:
            age = time.monotonic() - self._oldest_ready()
            if age < max_age_s:
                self._full_batch.clear()
                try:
                    async with asyncio.timeout(max_age_s - age):
                        await self._full_batch.wait()
                except TimeoutError:
                    pass
        return self.take()

    def _oldest_ready(self) -> float:
        return min(
            (q.frames[0].enqueued for q in self._queues.values() if q.waiting),
            default=time.monotonic(),
        )

    def take(self) -> list[PendingFrame]:
        """The next batch: a max-min fair share of up to BACKLOG_BATCHES times the flush size
        from every session with frames waiting (a session wanting less than an equal share
        leaves the rest to the others), at most the flush size from one session. Its frames
        stay counted until `release`."""
        ready = sorted(
            ((q.waiting, sid) for sid, q in self._queues.items() if q.waiting),
            key=lambda item: item[0],
        )
        budget = self.flush_frames * BACKLOG_BATCHES
        batch: list[PendingFrame] = []
        for index, (waiting, session_id) in enumerate(ready):
            # At most a flush's worth from one session: a backlog makes batches of many
            # sessions larger, never one session's batch slower for the others to wait on.
            share = min(self.flush_frames, max(1, budget // (len(ready) - index)))
            count = min(waiting, share)
            budget -= count
            queue = self._queues[session_id]
            queue.start_batch(count, paced=count >= self.flush_frames and self.pace_s > 0)
            self._ready -= waiting  # the rest waits until this batch is released
            batch.extend(islice(queue.frames, count))
        if not self._ready:
            self._has_ready.clear()
        if self._ready < self.flush_frames:
            self._full_batch.clear()
        return batch

    async def release(self, batch: list[PendingFrame]) -> None:
        """`batch` (as `take` gave it, or the part of it for some sessions) committed: drop
        its frames, let those sessions into the next batch, wake waiting mirrors."""
        for session_id, count in _counts(batch).items():
            queue = self._queues[session_id]
            self._bytes -= queue.drop_stored(count)
            self._frames -= count
            if queue.paced and queue.frames:
                asyncio.get_running_loop().call_later(self.pace_s, self._unpace, session_id)
            else:
                self._settle(session_id, queue)
        metrics.BUFFER_FRAMES.set(self._frames)
        self._wake_fitting()

    def abandon(self, batch: list[PendingFrame]) -> None:
        """`batch` was not stored (shutdown cancelled it): its frames wait for the next one."""
        for session_id in _counts(batch):
            self._settle(session_id, self._queues[session_id])

    def unpace(self) -> None:
        """No more waiting between batches (shutdown: store everything now)."""
        self.pace_s = 0.0
        for session_id, queue in list(self._queues.items()):
            if queue.paced and not queue.in_flight:
                self._settle(session_id, queue)

    def _unpace(self, session_id: uuid.UUID) -> None:
        queue = self._queues.get(session_id)
        if queue is not None and queue.paced and not queue.in_flight:
            self._settle(session_id, queue)

    def _settle(self, session_id: uuid.UUID, queue: SessionQueue) -> None:
        queue.settle()
        if not queue.frames:
            del self._queues[session_id]
            return
        self._ready += len(queue.frames)
        self._has_ready.set()
        if self._ready >= self.flush_frames:
            self._full_batch.set()


def _counts(batch: list[PendingFrame]) -> dict[uuid.UUID, int]:
    counts: dict[uuid.UUID, int] = {}
    for frame in batch:
        counts[frame.session_id] = counts.get(frame.session_id, 0) + 1
    return counts
