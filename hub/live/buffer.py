"""The bounded write buffer between accepting a frame and committing it to PostgreSQL.

Frames stay counted in the buffer until their batch commits, so the bound covers the batch in
flight too: memory is bounded by `max_frames` / `max_bytes` whatever PostgreSQL does. A mirror
reader waits for room *before* reading its next message, which turns a full buffer into TCP
backpressure on the mirrors instead of a drop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import deque
from datetime import datetime
from itertools import islice

from hub import metrics
from hub.frames import TaskFrame

BACKLOG_BATCHES = 10


@dataclasses.dataclass(slots=True)
class PendingFrame:
    session_id: uuid.UUID
    seq: int
    kind: str
    task_id: uuid.UUID | None
    device_ts: float
    received_at: datetime
    text: str  # the frame's canonical JSON: stored as the payload and sent to watchers
    task: TaskFrame | None  # task events also update the tasks table
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


class WriteBuffer:
    def __init__(self, max_frames: int, max_bytes: int, flush_frames: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.flush_frames = flush_frames
        self._items: deque[PendingFrame] = deque()
        self._bytes = 0
        self._room = asyncio.Condition()
        self._nonempty = asyncio.Event()
        self._full_batch = asyncio.Event()
        self.peak_frames = 0  # for tests and the benchmark: the bound was never passed
        metrics.BUFFER_MAX_FRAMES.set(max_frames)

    def __len__(self) -> int:
        return len(self._items)

    def fits(self, frames: int, size: int) -> bool:
        # An empty buffer takes any single message, so one message larger than the byte
        # bound cannot wedge its mirror forever (messages are capped at the WS size limit).
        if not self._items:
            return True
        return len(self._items) + frames <= self.max_frames and self._bytes + size <= self.max_bytes

    async def wait_for_room(self, frames: int, size: int) -> None:
        if self.fits(frames, size):
            return
        async with self._room:
            await self._room.wait_for(lambda: self.fits(frames, size))

    def put(self, item: PendingFrame) -> None:
        """Append; the caller has awaited `wait_for_room` for its whole message."""
        self._items.append(item)
        self._bytes += len(item.text)
        self.peak_frames = max(self.peak_frames, len(self._items))
        metrics.BUFFER_FRAMES.set(len(self._items))
        self._nonempty.set()
        if len(self._items) >= self.flush_frames:
            self._full_batch.set()

    async def next_batch(self, max_age_s: float) -> list[PendingFrame]:
        """Wait until a batch is due (full, or its oldest frame is `max_age_s` old); peek it.

        With a backlog (storage was slow or away) a batch takes up to BACKLOG_BATCHES times
        the flush size, so the buffer drains in fewer round trips instead of falling behind."""
        await self._nonempty.wait()
        if len(self._items) < self.flush_frames:
            age = time.monotonic() - self._items[0].enqueued
            if age < max_age_s:
                self._full_batch.clear()
                try:
                    async with asyncio.timeout(max_age_s - age):
                        await self._full_batch.wait()
                except TimeoutError:
                    pass
        return self.peek()

    def peek(self) -> list[PendingFrame]:
        """The next batch: the oldest frames, up to BACKLOG_BATCHES times the flush size."""
        return list(islice(self._items, self.flush_frames * BACKLOG_BATCHES))

    async def release(self, count: int) -> None:
        """Drop the first `count` frames (their batch committed) and wake waiting mirrors."""
        for _ in range(count):
            self._bytes -= len(self._items.popleft().text)
        metrics.BUFFER_FRAMES.set(len(self._items))
        if not self._items:
            self._nonempty.clear()
            self._full_batch.clear()
        elif len(self._items) < self.flush_frames:
            self._full_batch.clear()
        async with self._room:
            self._room.notify_all()
