"""The live path's storage interface: everything the live core asks of PostgreSQL.

The node, the flusher and the gap filler talk to storage only through a `LiveStore`, which
owns the asyncpg pool. Every failure to reach storage (a refused connection, a server error,
a timeout) comes out as the one `StorageUnavailable`; what the caller does then (retry, keep
buffering, close with 1011) is the caller's policy, not this module's. Storing a batch may
also say that a session of it is gone (`SessionDeleted`) or, when asked to give up on a lock,
that it did (`LockWait`). The SQL itself is in `hub.storage.frames`.

`PendingFrame` is the row the write buffer holds and `store_batch` stores: it is defined here,
below the live core, so storage never imports from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from hub.frames import TaskFrame
from hub.storage import frames as sql


class StorageUnavailable(Exception):
    """PostgreSQL could not be reached or did not answer in time; nothing was committed."""


class LockWait(Exception):
    """A batch stored with a lock timeout waited on a lock (a row another transaction holds,
    say a session being erased) for longer: nothing of it was committed."""


class SessionDeleted(Exception):
    """A batch named a session that no longer exists (erased while live): nothing of the
    batch was committed; `existing_sessions` says which of its sessions are left."""


# What asyncpg and the network raise when storage is down or slow.
_UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@dataclasses.dataclass(slots=True)
class PendingFrame:
    """One accepted frame on its way to the frames table."""

    session_id: uuid.UUID
    seq: int
    received_at: datetime
    # The frame's canonical JSON: stored as the payload (its kind, task and device time
    # are read from it) and sent to watchers.
    text: str
    task: TaskFrame | None  # task events also update the tasks table
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass(frozen=True, slots=True)
class MirrorClaim:
    """What storage says to a mirror connecting: where its frames continue, and when (by the
    database's clock, the one clock every node shares)."""

    mirror_connected_at: datetime | None  # the first connection's (None: the session is gone)
    stored_seq: int
    claimed_at: float


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection's reset. asyncpg's default resets the session (advisory locks,
    cursors, LISTEN, settings) with a query, a round trip on every release, so on every batch
    stored; the live path leaves no session state behind (its one setting, the lock timeout,
    ends with its transaction), so there is nothing to reset. (asyncpg still rolls back a
    transaction left open, say by a cancelled statement, before calling this.)"""


class LiveStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, statement_timeout_s: float) -> LiveStore:
        """A store on a new pool. `statement_timeout_s` bounds each connect and each statement
        on the client side: a database that stops answering (a partition, a stalled disk)
        raises StorageUnavailable instead of holding the flusher for ever, and the stuck
        connection is dropped once its cancellation times out too (asyncpg bounds that by the
        same timeout), so the next attempt gets a fresh one."""
        pool = await asyncpg.create_pool(
            dsn,
            # min_size=0: no background reconnect loop filling the log while PostgreSQL is down.
            min_size=0,
            max_size=6,
            timeout=statement_timeout_s,
            command_timeout=statement_timeout_s,
            reset=_keep_session,
        )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        try:
            async with asyncio.timeout(timeout_s), self._pool.acquire() as conn:
                yield conn
        except asyncpg.ForeignKeyViolationError as exc:
            raise SessionDeleted(str(exc)) from exc
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(type(exc).__name__) from exc

    async def load_state(self, session_id: uuid.UUID, max_tasks: int) -> dict[str, Any] | None:
        """The session row (with its last seq and last metrics) and its oldest `max_tasks`
        tasks; None if the session does not exist."""
        async with self._connection() as conn:
            return await sql.load_session_state(conn, session_id, max_tasks)

    async def claim_mirror(self, session_id: uuid.UUID, timeout_s: float) -> MirrorClaim:
        """A mirror connects: count the connection (the first one's time is recorded), and
        read the highest stored seq (another node's connection may have stored frames this
        one never saw) with the database's time. One statement: a claim that fails counts
        nothing (the mirror connects again)."""
        async with self._connection(timeout_s) as conn:
            return MirrorClaim(*await sql.mirror_claim(conn, session_id))

    async def mark_ended(self, session_id: uuid.UUID) -> datetime:
        async with self._connection() as conn:
            return await sql.mark_ended(conn, session_id)

    async def frames_between(
        self, session_id: uuid.UUID, after: int, upto: int, page: int = 1000
    ) -> list[tuple[int, str]]:
        """Stored frames with after < seq <= upto (at most `page`), as (seq, JSON text)."""
        async with self._connection() as conn:
            return await sql.frames_between(conn, session_id, after, upto, page)

    async def store_batch(
        self, batch: Sequence[PendingFrame], lock_timeout_s: float | None = None
    ) -> None:
        """Store `batch` in one transaction (a frame stored already is skipped); raises
        StorageUnavailable, SessionDeleted, or (given `lock_timeout_s`) LockWait if nothing
        was committed."""
        timeout_ms = None if lock_timeout_s is None else max(1, round(lock_timeout_s * 1000))
        async with self._connection() as conn:
            try:
                await sql.store_batch(conn, batch, timeout_ms)
            except asyncpg.LockNotAvailableError as exc:
                if timeout_ms is None:
                    raise  # a lock_timeout of the server's settings: a failure like any other
                raise LockWait(str(exc)) from exc

    async def existing_sessions(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        async with self._connection() as conn:
            return await sql.existing_sessions(conn, ids)

    async def stored_tails(
        self, ids: Sequence[uuid.UUID], timeout_s: float
    ) -> dict[uuid.UUID, tuple[int, datetime | None]]:
        """For each session: its highest stored seq and when it ended (None: not ended)."""
        async with self._connection(timeout_s) as conn:
            return await sql.stored_tails(conn, ids)

    async def tasks_of_other_sessions(
        self, session_id: uuid.UUID, task_ids: Sequence[uuid.UUID], timeout_s: float
    ) -> set[uuid.UUID]:
        async with self._connection(timeout_s) as conn:
            return await sql.tasks_of_other_sessions(conn, session_id, task_ids)
