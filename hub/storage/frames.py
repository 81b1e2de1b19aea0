"""The live path's storage: batched, idempotent frame inserts and the reads that resume needs.

Raw asyncpg rather than the ORM: one round trip stores hundreds of frames through `unnest`
arrays, and `ON CONFLICT DO NOTHING` on (session_id, seq) makes a resent frame a no-op. Task
side effects (tasks rows, result metrics) apply only to frames this very statement inserted,
so replaying a batch can never apply them twice. They cost what the batch changes: one row
per task it names, with only the metrics it names, never a rewrite per frame.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

if TYPE_CHECKING:
    from hub.storage.live_store import PendingFrame


# The kind, task and device time are the payload's `type`, `task_id` and `ts` (the frame's
# canonical JSON, so they read back exactly): four arrays to send instead of seven (asyncpg
# encodes arrays element by element, about 0.7 µs each).
# $5: PostgreSQL's lock_timeout in ms for this statement's transaction (NULL: unchanged), set
# in the same round trip: the rows are joined with the one-row CTE that sets it, so it is set
# before any row is inserted or its foreign key checked, and it ends with the transaction.
INSERT_FRAMES = """
WITH lock_timeout AS MATERIALIZED (
    SELECT set_config('lock_timeout', coalesce($5::text, current_setting('lock_timeout')), true)
)
INSERT INTO frames (session_id, seq, kind, task_id, device_ts, received_at, payload)
SELECT f.session_id, f.seq, f.payload ->> 'type', (f.payload ->> 'task_id')::uuid,
       (f.payload ->> 'ts')::float8, f.received_at, f.payload
FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::jsonb[])
    AS f(session_id, seq, received_at, payload), lock_timeout
ON CONFLICT DO NOTHING
"""
INSERT_FRAMES_RETURNING_TASKS = INSERT_FRAMES + " RETURNING session_id, seq, kind"

# One row per task of the batch, its frames merged in seq order: the latest status and
# duration, and only the result metrics the batch names (`||` merges them into the stored
# ones). Only into a task of the frame's own session.
UPSERT_TASKS = """
INSERT INTO tasks AS t (id, session_id, task_name, status, duration_seconds, metrics,
                        created_at, updated_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::float8[],
                     $6::jsonb[], $7::timestamptz[], $8::timestamptz[])
ON CONFLICT (id) DO UPDATE SET
    status = EXCLUDED.status,
    duration_seconds = COALESCE(EXCLUDED.duration_seconds, t.duration_seconds),
    metrics = t.metrics || EXCLUDED.metrics,
    updated_at = EXCLUDED.updated_at
WHERE t.session_id = EXCLUDED.session_id
"""

# Result metrics of finished tasks, only where the task belongs to the frame's session.
INSERT_RESULT_METRICS = """
INSERT INTO metrics (task_id, name, value, recorded_at)
SELECT m.task_id, m.name, m.value, m.recorded_at
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::timestamptz[])
    AS m(task_id, session_id, name, value, recorded_at)
WHERE EXISTS (SELECT 1 FROM tasks WHERE id = m.task_id AND session_id = m.session_id)
"""


@dataclasses.dataclass(slots=True)
class TaskChange:
    """What one batch changes in one task row: its frames merged in seq order."""

    session_id: uuid.UUID
    task_name: str
    status: str
    duration_seconds: float | None
    metrics: dict[str, float]
    first_at: datetime
    last_at: datetime


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def store_batch(
    conn: asyncpg.Connection, batch: Sequence[PendingFrame], lock_timeout_ms: int | None = None
) -> None:
    """Store `batch` in one transaction; raises if nothing was committed. With
    `lock_timeout_ms`, a statement that waits on a lock for longer fails with
    asyncpg.LockNotAvailableError (and nothing is committed)."""
    # A list per column, each its own comprehension: 7x faster than appending row by row.
    columns: tuple[list[Any], ...] = (
        [f.session_id for f in batch],
        [f.seq for f in batch],
        [f.received_at for f in batch],
        [f.text for f in batch],
    )
    lock_timeout = None if lock_timeout_ms is None else str(lock_timeout_ms)
    if not any(f.task is not None for f in batch):
        # One statement is atomic on its own: no BEGIN/COMMIT round trips around it.
        await conn.execute(INSERT_FRAMES, *columns, lock_timeout)
        return
    async with conn.transaction():  # the lock timeout holds for each of its statements
        inserted = {
            (r["session_id"], r["seq"])
            for r in await conn.fetch(INSERT_FRAMES_RETURNING_TASKS, *columns, lock_timeout)
            if r["kind"] == "task"
        }
        changes: dict[uuid.UUID, TaskChange] = {}
        results: tuple[list[Any], ...] = ([], [], [], [], [])
        for f in batch:
            task = f.task
            if task is None or (f.session_id, f.seq) not in inserted:
                continue
            change = changes.get(task.task_id)
            if change is None:
                changes[task.task_id] = TaskChange(
                    f.session_id,
                    task.task_name,
                    task.status,
                    task.duration_seconds,
                    dict(task.metrics),
                    f.received_at,
                    f.received_at,
                )
            elif change.session_id != f.session_id:
                continue  # another session's task id: its row is not this session's to change
            else:
                change.status = task.status
                if task.duration_seconds is not None:
                    change.duration_seconds = task.duration_seconds
                change.metrics.update(task.metrics)
                change.last_at = f.received_at
            if task.event == "finished":
                for name, value in task.metrics.items():
                    for column, item in zip(
                        results,
                        (task.task_id, f.session_id, name, value, f.received_at),
                        strict=True,
                    ):
                        column.append(item)
        if changes:
            await conn.execute(
                UPSERT_TASKS,
                list(changes),
                [c.session_id for c in changes.values()],
                [c.task_name for c in changes.values()],
                [c.status for c in changes.values()],
                [c.duration_seconds for c in changes.values()],
                [orjson.dumps(c.metrics).decode() for c in changes.values()],
                [c.first_at for c in changes.values()],
                [c.last_at for c in changes.values()],
            )
        if results[0]:
            await conn.execute(INSERT_RESULT_METRICS, *results)


async def tasks_of_other_sessions(
    conn: asyncpg.Connection, session_id: uuid.UUID, task_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of `task_ids` are stored as tasks of another session."""
    rows = await conn.fetch(
        "SELECT id FROM tasks WHERE id = ANY($1::uuid[]) AND session_id <> $2",
        list(task_ids),
        session_id,
    )
    return {r["id"] for r in rows}


async def existing_sessions(conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    rows = await conn.fetch("SELECT id FROM sessions WHERE id = ANY($1::uuid[])", list(ids))
    return {r["id"] for r in rows}


async def frames_between(
    conn: asyncpg.Connection, session_id: uuid.UUID, after: int, upto: int, limit: int
) -> list[tuple[int, str]]:
    """Stored frames with after < seq <= upto, as (seq, JSON text), in seq order."""
    rows = await conn.fetch(
        "SELECT seq, payload::text AS text FROM frames"
        " WHERE session_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
        session_id,
        after,
        upto,
        limit,
    )
    return [(r["seq"], r["text"]) for r in rows]


async def mirror_claim(
    conn: asyncpg.Connection, session_id: uuid.UUID
) -> tuple[datetime | None, int, float]:
    """For a mirror connecting, in one statement: count the connection and record the first
    one's time (returned; None if the session is gone), and read the highest stored seq and
    the time by the database's clock, the one clock every hub node shares."""
    row = await conn.fetchrow(
        "WITH s AS (UPDATE sessions"
        " SET mirror_connected_at = coalesce(mirror_connected_at, now()),"
        " mirror_connections = mirror_connections + 1"
        " WHERE id = $1 RETURNING mirror_connected_at)"
        " SELECT (SELECT mirror_connected_at FROM s) AS connected_at,"
        " coalesce(max(seq), 0) AS seq, extract(epoch FROM clock_timestamp())::float8 AS at"
        " FROM frames WHERE session_id = $1",
        session_id,
    )
    assert row is not None
    return row["connected_at"], row["seq"], row["at"]


async def stored_tails(
    conn: asyncpg.Connection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, datetime | None]]:
    """For each session: its highest stored seq and when it ended (None: not ended)."""
    rows = await conn.fetch(
        "SELECT s.id, s.ended_at,"
        " (SELECT coalesce(max(seq), 0) FROM frames WHERE session_id = s.id) AS seq"
        " FROM sessions s WHERE s.id = ANY($1::uuid[])",
        list(ids),
    )
    return {r["id"]: (r["seq"], r["ended_at"]) for r in rows}


async def load_session_state(
    conn: asyncpg.Connection, session_id: uuid.UUID, max_tasks: int = 1_000_000
) -> dict[str, Any] | None:
    """What a live session needs when it (re)enters memory; None if the session does not exist.
    At most `max_tasks` tasks (the oldest): memory stays bounded whatever storage holds."""
    row = await conn.fetchrow(
        "SELECT id, created_at, child_name, child_age, child_height_cm, child_weight_kg,"
        " mirror_connected_at, ended_at,"
        " (SELECT coalesce(max(seq), 0) FROM frames WHERE session_id = s.id) AS last_seq,"
        " (SELECT payload::text FROM frames WHERE session_id = s.id AND kind = 'metrics'"
        "  ORDER BY seq DESC LIMIT 1) AS last_metrics"
        " FROM sessions s WHERE id = $1",
        session_id,
    )
    if row is None:
        return None
    tasks = await conn.fetch(
        "SELECT id, task_name, status, duration_seconds, metrics::text AS metrics, created_at,"
        " updated_at FROM tasks WHERE session_id = $1 ORDER BY created_at, id LIMIT $2",
        session_id,
        max_tasks,
    )
    return {"session": dict(row), "tasks": [dict(t) for t in tasks]}


async def mark_ended(conn: asyncpg.Connection, session_id: uuid.UUID) -> datetime:
    value: datetime = await conn.fetchval(
        "UPDATE sessions SET ended_at = coalesce(ended_at, now()) WHERE id = $1 RETURNING ended_at",
        session_id,
    )
    return value
