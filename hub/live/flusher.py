"""Drains the write buffer to PostgreSQL in batches; acks follow commits; retries forever.

While PostgreSQL is unreachable the batch stays at the head of the buffer and is retried with
capped exponential backoff; mirrors keep streaming (and watchers keep watching) until the
buffer is full, then mirror readers pause. Nothing is dropped: a frame leaves the buffer only
after the transaction that stored it has committed.

A batch holds a fair share of every session's waiting frames (see WriteBuffer.take). A lock
held on one session's rows (say while it is erased) would hold every session of its batch, and
the flusher with it: a batch's first attempt gives up when one of its lock waits lasts
`isolate_s` (PostgreSQL's lock_timeout, so nothing of it is committed), and the batch is stored
again as one transaction per session, in the background, while the next batch (the other
sessions' newer frames) goes ahead. So a locked session delays the others by about one batch
and `isolate_s`. Only a lock wait splits a batch: a batch that is merely large, or slow because
the machine is busy, is never split (storing it as hundreds of transactions would make a busy
hub slower still). A lock on the whole frames table (DDL, say) is taken before the timeout is
set and holds every batch until it is released or the statement times out; splitting would
not help there.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence

from hub import metrics
from hub.live.buffer import WriteBuffer
from hub.storage.live_store import (
    LiveStore,
    LockWait,
    PendingFrame,
    SessionDeleted,
    StorageUnavailable,
)

log = logging.getLogger("hub.flusher")

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0


class Flusher:
    def __init__(
        self,
        buffer: WriteBuffer,
        store: LiveStore,
        max_age_s: float,
        on_committed: Callable[[Sequence[PendingFrame]], None],
        on_orphaned: Callable[[set[uuid.UUID]], None],
        isolate_s: float = 0.1,
    ) -> None:
        self.buffer = buffer
        self.store = store
        self.max_age_s = max_age_s
        self.on_committed = on_committed
        self.on_orphaned = on_orphaned
        self.isolate_s = isolate_s
        self.failures = 0  # consecutive failed attempts; 0 while PostgreSQL answers
        self.isolated = 0  # batches split per session because they waited on a lock
        self._task: asyncio.Task[None] | None = None
        self._isolating: set[asyncio.Task[None]] = set()  # one per session of a split batch

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-flusher")

    async def stop(self) -> None:
        """Stop flushing; frames of unfinished batches stay buffered (`drain` stores them)."""
        tasks = [t for t in (self._task, *self._isolating) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = await self.buffer.next_batch(self.max_age_s)
            if not batch:
                continue
            try:
                stored = await self._store(batch, lock_timeout_s=self.isolate_s)
            except LockWait:  # rolled back: nothing of it is stored
                self._isolate(batch)
                continue
            except BaseException:
                self.buffer.abandon(batch)
                raise
            if stored is not None:
                await self._done(batch, stored)
                continue
            await self.flush(batch)  # storage failed: retry (all sessions wait for it alike)

    def _isolate(self, batch: list[PendingFrame]) -> None:
        self.isolated += 1
        per_session: dict[uuid.UUID, list[PendingFrame]] = {}
        for frame in batch:
            per_session.setdefault(frame.session_id, []).append(frame)
        log.info(
            "a batch waited on a lock for over %.0f ms; storing its %d session(s) apart",
            self.isolate_s * 1000,
            len(per_session),
        )
        for part in per_session.values():
            task = asyncio.create_task(self.flush(part), name="hub-flusher-session")
            self._isolating.add(task)
            task.add_done_callback(self._isolating.discard)

    async def _store(
        self, batch: list[PendingFrame], lock_timeout_s: float | None = None
    ) -> list[PendingFrame] | None:
        """One attempt: the frames stored (without those of deleted sessions), or None if
        storage failed. Raises LockWait if it waited on a lock for over `lock_timeout_s`."""
        started = time.perf_counter()
        while True:
            try:
                await self.store.store_batch(batch, lock_timeout_s)
                metrics.flushed(len(batch), time.perf_counter() - started)
                return batch
            except SessionDeleted:
                # A session was deleted while live: its frames can never be stored.
                try:
                    batch = await self._drop_orphans(batch)
                except StorageUnavailable as exc:
                    self._failed(batch, exc)
                    return None
                if not batch:
                    return batch
            except StorageUnavailable as exc:
                self._failed(batch, exc)
                return None

    def _failed(self, batch: list[PendingFrame], exc: StorageUnavailable) -> None:
        self.failures += 1
        metrics.STORAGE_FAILURES.inc()
        if self.failures == 1 or self.failures % 20 == 0:
            log.warning(
                "storing %d frames failed (%s); retrying, attempt %d",
                len(batch),
                exc,
                self.failures,
            )

    async def flush(self, batch: list[PendingFrame]) -> None:
        """Store `batch` (taken from the buffer), retrying until it commits."""
        if not batch:
            return
        delay = BACKOFF_INITIAL_S
        try:
            while (stored := await self._store(batch)) is None:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX_S)
        except BaseException:
            self.buffer.abandon(batch)
            raise
        await self._done(batch, stored)

    async def _done(self, taken: list[PendingFrame], stored: list[PendingFrame]) -> None:
        if self.failures:
            log.info("storage is back after %d failed attempts", self.failures)
        self.failures = 0
        await self.buffer.release(taken)
        if stored:
            self.on_committed(stored)

    async def _drop_orphans(self, batch: list[PendingFrame]) -> list[PendingFrame]:
        alive = await self.store.existing_sessions(list({f.session_id for f in batch}))
        orphans = {f.session_id for f in batch} - alive
        log.warning("dropping frames of %d deleted session(s)", len(orphans))
        self.on_orphaned(orphans)
        return [f for f in batch if f.session_id in alive]

    async def drain(self) -> None:
        """Store everything buffered now (shutdown): the loop is stopped first, batches
        being stored apart finish first."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._isolating, return_exceptions=True)
        self.buffer.unpace()
        while batch := self.buffer.take():
            await self.flush(batch)
