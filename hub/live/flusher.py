"""Drains the write buffer to PostgreSQL in batches; acks follow commits; retries forever.

While PostgreSQL is unreachable the batch stays at the head of the buffer and is retried with
capped exponential backoff; mirrors keep streaming (and watchers keep watching) until the
buffer is full, then mirror readers pause. Nothing is dropped: a frame leaves the buffer only
after the transaction that stored it has committed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence

import asyncpg

from hub import metrics
from hub.live.buffer import PendingFrame, WriteBuffer
from hub.storage import frames as store

log = logging.getLogger("hub.flusher")

BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0


class Flusher:
    def __init__(
        self,
        buffer: WriteBuffer,
        pool: asyncpg.Pool,
        max_age_s: float,
        on_committed: Callable[[Sequence[PendingFrame]], None],
        on_orphaned: Callable[[set[uuid.UUID]], None],
    ) -> None:
        self.buffer = buffer
        self.pool = pool
        self.max_age_s = max_age_s
        self.on_committed = on_committed
        self.on_orphaned = on_orphaned
        self.failures = 0  # consecutive failed attempts; 0 while PostgreSQL answers
        self.batches = 0
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-flusher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            batch = await self.buffer.next_batch(self.max_age_s)
            await self.flush(batch)

    async def flush(self, batch: list[PendingFrame]) -> None:
        """Store `batch` (the head of the buffer), retrying until it commits."""
        taken = len(batch)
        started = time.perf_counter()
        delay = BACKOFF_INITIAL_S
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await store.store_batch(conn, batch)
                break
            except asyncpg.ForeignKeyViolationError:
                # A session was deleted while live: its frames can never be stored.
                batch = await self._drop_orphans(batch)
                if not batch:
                    break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self.failures += 1
                metrics.STORAGE_FAILURES.inc()
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning(
                        "storing %d frames failed (%s); retrying, attempt %d",
                        len(batch),
                        type(exc).__name__,
                        self.failures,
                    )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX_S)
        if self.failures:
            log.info("storage is back after %d failed attempts", self.failures)
        self.failures = 0
        self.batches += 1
        self.frames += len(batch)
        metrics.flushed(len(batch), time.perf_counter() - started)
        await self.buffer.release(taken)
        if batch:
            self.on_committed(batch)

    async def _drop_orphans(self, batch: list[PendingFrame]) -> list[PendingFrame]:
        async with self.pool.acquire() as conn:
            alive = await store.existing_sessions(conn, list({f.session_id for f in batch}))
        orphans = {f.session_id for f in batch} - alive
        log.warning("dropping frames of %d deleted session(s)", len(orphans))
        self.on_orphaned(orphans)
        return [f for f in batch if f.session_id in alive]

    async def drain(self) -> None:
        """Store everything buffered now (shutdown): the loop is stopped first."""
        await self.stop()
        while len(self.buffer):
            await self.flush(self.buffer.peek())
