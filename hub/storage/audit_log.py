"""The audit trail: who read or watched which session, written in batches off the request path.

A read enqueues its row (`AuditLog.record`) and answers; one background task writes what is
queued with one INSERT per batch, every `flush_ms` or as soon as `batch_rows` are waiting.
Nothing is dropped silently: the queue is bounded (`queue_rows`, the batch in flight
included), and a request that finds it full waits up to FULL_WAIT_S for room, then gets
`AuditBacklog` (the endpoint answers 503 and sends nothing of what it read); a failed batch is
retried, in order, until it is written; `close` writes everything queued before the process
exits, and logs an error naming how many rows it could not write. `record_durably` (watches)
and `flush` (GET /audit: readers see their own rows) wait for the commit.

Erasure: a row naming a session is inserted only under a key-share lock on that session's row,
so an erasure cannot slip between the check and the insert, and a row for a session erased
while it was queued is not written (the erasure removes the session's trail anyway).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hub.schemas import AuditOut
from hub.storage.models import AuditEntry

log = logging.getLogger("hub.audit")

FULL_WAIT_S = 1.0  # how long a request waits for room in a full queue before its 503
RETRY_MIN_S, RETRY_MAX_S = 0.05, 2.0  # backoff between attempts at a failed batch
DRAIN_TIMEOUT_S = 20.0  # how long `close` keeps trying to write what is queued

AUDIT_COLUMNS = (
    AuditEntry.id,
    AuditEntry.at,
    AuditEntry.actor,
    AuditEntry.role,
    AuditEntry.action,
    AuditEntry.session_id,
)
assert AuditOut.__struct_fields__ == tuple(c.key for c in AUDIT_COLUMNS)

# One batch, in queue order (ids follow it); RETURNING names the sessions written for.
_INSERT = text(
    "INSERT INTO audit_log (at, actor, role, action, session_id)"
    " SELECT v.at, v.actor, v.role, v.action, v.session_id"
    " FROM unnest(CAST(:at AS timestamptz[]), CAST(:actor AS text[]), CAST(:role AS text[]),"
    " CAST(:action AS text[]), CAST(:session_id AS uuid[]))"
    " WITH ORDINALITY AS v(at, actor, role, action, session_id, n)"
    " WHERE v.session_id IS NULL OR EXISTS"
    " (SELECT FROM sessions s WHERE s.id = v.session_id FOR KEY SHARE)"
    " ORDER BY v.n RETURNING session_id"
)


class AuditUnavailable(Exception):
    """The rows could not be written (storage failed, or the hub is stopping)."""


class AuditBacklog(AuditUnavailable):
    """The queue stayed full: the read must not be answered."""


@dataclasses.dataclass(slots=True)
class _Row:
    number: int  # position in the queue since start: what `flush` waits for
    at: datetime
    actor: str
    role: str
    action: str
    session_id: uuid.UUID | None
    committed: asyncio.Future[bool] | None  # set for `record_durably`


class AuditLog:
    """The batched writer; `start` it in the app's lifespan and `close` it at the end."""

    def __init__(
        self, engine: AsyncEngine, *, flush_ms: int, batch_rows: int, queue_rows: int
    ) -> None:
        self._engine = engine  # autocommit: one batch is one statement
        self._flush_s = flush_ms / 1000
        self._batch_rows = batch_rows
        self._queue_rows = queue_rows
        self._queue: collections.deque[_Row] = collections.deque()
        self._numbers = itertools.count(1)
        self._written_upto = 0  # every row numbered up to this is done with
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []
        self._arrived = asyncio.Event()  # something is queued
        self._hurry = asyncio.Event()  # someone waits for a commit: do not gather a batch
        self._room = asyncio.Event()  # a batch left the queue
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def record(
        self, actor: str, role: str, action: str, session_id: uuid.UUID | None
    ) -> None:
        """Queue a row; AuditBacklog if the queue stays full (or the hub is stopping)."""
        await self._enqueue(actor, role, action, session_id, None)

    async def record_durably(
        self, actor: str, role: str, action: str, session_id: uuid.UUID | None
    ) -> bool:
        """Queue a row and wait for its commit: True once written, False if the session no
        longer exists; AuditUnavailable if it could not be written (it is then dropped: the
        caller refuses what it was about to do)."""
        committed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._enqueue(actor, role, action, session_id, committed)
        self._hurry.set()
        return await committed

    async def flush(self) -> None:
        """Wait until every row queued so far is written; AuditUnavailable if a batch fails."""
        if not self._queue:
            return
        done = asyncio.get_running_loop().create_future()
        self._flushes.append((self._queue[-1].number, done))
        self._hurry.set()
        await done

    async def close(self) -> None:
        """Write everything queued (trying for up to DRAIN_TIMEOUT_S), then stop."""
        self._closing = True
        self._arrived.set()
        self._hurry.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            log.error("stopping with %d audit rows not written: storage failed", len(self._queue))
        self._fail_waiters(AuditUnavailable("the hub is stopping"), durable_too=True)

    async def _enqueue(
        self,
        actor: str,
        role: str,
        action: str,
        session_id: uuid.UUID | None,
        committed: asyncio.Future[bool] | None,
    ) -> None:
        if len(self._queue) >= self._queue_rows and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FULL_WAIT_S):
                    while len(self._queue) >= self._queue_rows and not self._closing:
                        self._room.clear()
                        await self._room.wait()
        if self._closing:
            raise AuditBacklog("the hub is stopping; retry on another")
        if len(self._queue) >= self._queue_rows:
            raise AuditBacklog(
                f"the audit trail is {len(self._queue)} rows behind; retry in a moment"
            )
        now = datetime.now(UTC)
        self._queue.append(
            _Row(next(self._numbers), now, actor, role, action, session_id, committed)
        )
        self._arrived.set()
        if len(self._queue) >= self._batch_rows:
            self._hurry.set()

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if not self._hurry.is_set():  # let a batch gather
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_s):
                        await self._hurry.wait()
            self._hurry.clear()
            batch = list(itertools.islice(self._queue, self._batch_rows))
            try:
                written = await self._write(batch)
            except Exception as exc:
                log.warning("writing %d audit rows failed: %s", len(batch), type(exc).__name__)
                self._failed(batch, exc)
                await asyncio.sleep(delay)  # backoff before the next attempt
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            for _ in batch:
                self._queue.popleft()
            self._written_upto = batch[-1].number
            for row in batch:
                if row.committed is not None and not row.committed.done():
                    row.committed.set_result(row.session_id is None or row.session_id in written)
            still = []
            for upto, done in self._flushes:
                if upto > self._written_upto:
                    still.append((upto, done))
                elif not done.done():
                    done.set_result(None)
            self._flushes = still
            self._room.set()

    async def _write(self, batch: list[_Row]) -> set[uuid.UUID | None]:
        params = {
            "at": [r.at for r in batch],
            "actor": [r.actor for r in batch],
            "role": [r.role for r in batch],
            "action": [r.action for r in batch],
            "session_id": [r.session_id for r in batch],
        }
        try:
            async with self._engine.connect() as conn:
                return set((await conn.execute(_INSERT, params)).scalars())
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        # The pooled connection had died with its server (restarted within the pool's idle
        # ping window); SQLAlchemy has dropped the pool's connections: one more try on a new
        # one, before a durable record's caller is refused.
        async with self._engine.connect() as conn:
            return set((await conn.execute(_INSERT, params)).scalars())

    def _failed(self, batch: list[_Row], exc: Exception) -> None:
        """Tell the waiters; the rows of durable records leave the queue (their callers
        refuse what they were about to do), the others stay for the next attempt."""
        error = AuditUnavailable(f"the audit trail could not be written: {type(exc).__name__}")
        durable = {id(r) for r in batch if r.committed is not None}
        if durable:
            self._queue = collections.deque(r for r in self._queue if id(r) not in durable)
            self._room.set()
        self._fail_waiters(error, durable_too=False)
        for row in batch:
            if row.committed is not None and not row.committed.done():
                row.committed.set_exception(error)

    def _fail_waiters(self, error: AuditUnavailable, *, durable_too: bool) -> None:
        for _, done in self._flushes:
            if not done.done():
                done.set_exception(error)
        self._flushes = []
        if durable_too:
            for row in self._queue:
                if row.committed is not None and not row.committed.done():
                    row.committed.set_exception(error)


async def list_audit(
    conn: AsyncConnection, *, limit: int, session_id: uuid.UUID | None, before_id: int | None
) -> list[AuditOut]:
    query = select(*AUDIT_COLUMNS).order_by(AuditEntry.id.desc()).limit(bindparam("n"))
    if session_id is not None:
        query = query.where(AuditEntry.session_id == session_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return [AuditOut(*r) for r in await conn.execute(query, {"n": limit})]
