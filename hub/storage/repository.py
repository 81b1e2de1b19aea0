"""History queries used by the HTTP endpoints: Core statements straight into response Structs.

Reads take an `AsyncConnection` of the autocommit read engine (one round trip per statement,
no BEGIN/COMMIT) and build `hub.schemas` Structs positionally from the rows: the columns of
each statement are listed in the Struct's field order, and no ORM object is made per row.
Writes take an `AsyncSession` (one transaction each). Functions return None when the parent
does not exist; HTTP concerns (status codes, JSON) stay in the endpoints. Metric series are in
`hub.storage.series`, the audit trail in `hub.storage.audit_log`.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    DateTime,
    Float,
    String,
    Uuid,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql import Select

from hub.schemas import MetricOut, MetricsBatch, SessionCreate, SessionOut, TaskCreate, TaskOut
from hub.storage.compiled import Compiled
from hub.storage.models import AuditEntry, Metric, Session, Task

# Timestamps outside this range are refused: PostgreSQL cannot bind every Python datetime.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class BadCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, ident = raw.partition("|")
        created_at = datetime.fromisoformat(when)
        if created_at.tzinfo is None or not EARLIEST <= created_at <= LATEST:
            raise ValueError("timestamp out of range")
        return created_at, uuid.UUID(ident)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise BadCursor("cursor is not one this API returned") from exc


# The columns of each response Struct, in its field order (checked at import).
SESSION_COLUMNS = (
    Session.id,
    Session.created_at,
    Session.child_name,
    Session.child_age,
    Session.child_height_cm,
    Session.child_weight_kg,
    Session.mirror_connected_at,
    Session.ended_at,
    Session.child_ref,
)
TASK_COLUMNS = (
    Task.id,
    Task.session_id,
    Task.task_name,
    Task.status,
    Task.duration_seconds,
    Task.metrics,
    Task.created_at,
    Task.updated_at,
)
METRIC_COLUMNS = (Metric.id, Metric.task_id, Metric.name, Metric.value, Metric.recorded_at)
for _struct, _columns in (
    (SessionOut, SESSION_COLUMNS),
    (TaskOut, TASK_COLUMNS),
    (MetricOut, METRIC_COLUMNS),
):
    assert _struct.__struct_fields__ == tuple(c.key for c in _columns), _struct


async def create_session(db: AsyncSession, data: SessionCreate) -> SessionOut:
    row = (
        await db.execute(
            insert(Session)
            .values(
                id=uuid.uuid4(),
                child_name=data.child_name,
                child_age=data.child_age,
                child_height_cm=data.child_height_cm,
                child_weight_kg=data.child_weight_kg,
                child_ref=data.child_ref,
            )
            .returning(*SESSION_COLUMNS)
        )
    ).one()
    await db.commit()
    return SessionOut(*tuple(row))


_GET_SESSION = select(*SESSION_COLUMNS).where(Session.id == bindparam("sid"))


async def get_session(conn: AsyncConnection, session_id: uuid.UUID) -> SessionOut | None:
    row = (await conn.execute(_GET_SESSION, {"sid": session_id})).first()
    return None if row is None else SessionOut(*row)


async def list_sessions(
    conn: AsyncConnection,
    *,
    limit: int,
    cursor: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    child_ref: str | None = None,
) -> tuple[list[SessionOut], str | None]:
    """Newest first; keyset pagination on (created_at, id) so pages stay stable under inserts."""
    query = select(*SESSION_COLUMNS).order_by(Session.created_at.desc(), Session.id.desc())
    if cursor is not None:
        at, ident = decode_cursor(cursor)
        query = query.where(
            or_(Session.created_at < at, and_(Session.created_at == at, Session.id < ident))
        )
    if created_after is not None:
        query = query.where(Session.created_at >= created_after)
    if created_before is not None:
        query = query.where(Session.created_at < created_before)
    if child_ref is not None:
        query = query.where(Session.child_ref == child_ref)
    rows = [SessionOut(*r) for r in await conn.execute(query.limit(limit + 1))]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


class LimitReached(Exception):
    """The session is at one of its limits; `code` as in the live protocol's `error`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _create_task() -> Select[Any]:
    """One statement (so one round trip, and no transaction to open): the session's row
    locked against erasure with the count and size of its tasks, and the new task inserted
    only if it stays within the limits. No row: no such session; a row without a task: a
    limit is reached (its count and size say which)."""
    room = (
        select(
            select(func.count()).where(Task.session_id == Session.id).scalar_subquery().label("n"),
            select(func.coalesce(func.sum(func.length(func.cast(Task.metrics, String))), 0))
            .where(Task.session_id == Session.id)
            .scalar_subquery()
            .label("size"),
        )
        .where(Session.id == bindparam("sid", type_=Uuid))
        .with_for_update(key_share=True, read=True, of=Session)
        .cte("room")
    )
    # Each task also carries its name, id, status and times: about 256 bytes.
    grown = room.c.size + (room.c.n + 1) * 256 + bindparam("metrics_len")
    values = select(
        bindparam("id", type_=Uuid),
        bindparam("sid", type_=Uuid),
        bindparam("task_name", type_=String),
        bindparam("status", type_=String),
        bindparam("duration_seconds", type_=Float),
        bindparam("metrics", type_=JSONB),
    ).where(room.c.n < bindparam("max_tasks"), grown <= bindparam("max_bytes"))
    fields = ["id", "session_id", "task_name", "status", "duration_seconds", "metrics"]
    new = insert(Task).from_select(fields, values).returning(*TASK_COLUMNS).cte("new")
    return select(room.c.n, room.c.size, *new.c).select_from(room.outerjoin(new, true()))


_CREATE_TASK = _create_task()


async def create_task(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    data: TaskCreate,
    *,
    max_tasks: int,
    max_state_bytes: int,
) -> TaskOut | None:
    """The new task, or None if there is no such session. Raises LimitReached if the session
    has `max_tasks` tasks, or its tasks would pass `max_state_bytes` (as JSON, roughly): the
    limits a live session has, so a session filled over HTTP cannot be any larger."""
    metrics = dict(data.metrics)
    params = {
        "sid": session_id,
        "id": uuid.uuid4(),
        "task_name": data.task_name,
        "status": data.status,
        "duration_seconds": data.duration_seconds,
        "metrics": metrics,
        "metrics_len": len(orjson.dumps(metrics)),
        "max_tasks": max_tasks,
        "max_bytes": max_state_bytes,
    }
    row = (await conn.execute(_CREATE_TASK, params)).first()
    if row is None:
        return None
    count, size, *task = row
    if task[0] is not None:
        return TaskOut(*task)
    if count >= max_tasks:
        raise LimitReached(
            "too_many_tasks", f"the session has {count} tasks; the limit is {max_tasks}"
        )
    grown = size + (count + 1) * 256 + params["metrics_len"]
    raise LimitReached(
        "session_state_too_large",
        f"the session's tasks would take about {grown} bytes; the limit is {max_state_bytes}",
    )


def _tasks_page(after: bool) -> Select[Any]:
    """A page of a session's tasks in one statement: the session's id LEFT JOINed to its
    tasks, so that no row means no session and one row of NULLs a session without tasks."""
    page = select(*TASK_COLUMNS).where(Task.session_id == Session.id)
    if after:
        at = bindparam("at", type_=DateTime(timezone=True))
        ident = bindparam("ident", type_=Uuid)
        page = page.where(or_(Task.created_at > at, and_(Task.created_at == at, Task.id > ident)))
    tasks = page.order_by(Task.created_at, Task.id).limit(bindparam("n")).lateral()
    return (
        select(*tasks.c)
        .select_from(Session)
        .outerjoin(tasks, true())
        .where(Session.id == bindparam("sid"))
        .order_by(tasks.c.created_at, tasks.c.id)
    )


_TASKS_FIRST_PAGE, _TASKS_NEXT_PAGE = Compiled(_tasks_page(False)), Compiled(_tasks_page(True))


async def list_tasks(
    conn: AsyncConnection, session_id: uuid.UUID, *, limit: int, cursor: str | None = None
) -> tuple[list[TaskOut], str | None] | None:
    """Oldest first, a page of at most `limit`, and the cursor of the next page (None: this
    was the last); keyset pagination on (created_at, id), like `list_sessions`."""
    params: dict[str, object] = {"sid": session_id, "n": limit + 1}
    if cursor is not None:
        params["at"], params["ident"] = decode_cursor(cursor)
    query = _TASKS_FIRST_PAGE if cursor is None else _TASKS_NEXT_PAGE
    rows = await query.fetch(conn, params)
    if not rows:
        return None
    tasks = [TaskOut(*r) for r in rows if r[0] is not None]
    next_cursor = None
    if len(tasks) > limit:
        tasks = tasks[:limit]
        next_cursor = encode_cursor(tasks[-1].created_at, tasks[-1].id)
    return tasks, next_cursor


# The session a task belongs to (None: no such task).
_TASK_SESSION = select(Task.session_id).where(Task.id == bindparam("tid"))


async def task_session(
    conn: AsyncConnection | AsyncSession, task_id: uuid.UUID
) -> uuid.UUID | None:
    result = await conn.execute(_TASK_SESSION, {"tid": task_id})
    return result.scalar_one_or_none()


async def add_metrics(db: AsyncSession, task_id: uuid.UUID, batch: MetricsBatch) -> list[MetricOut]:
    """Record task results, as a finished task frame's metrics are: rows in `metrics`, merged
    into the task's `metrics` (what the task list and a watcher's snapshot show)."""
    rows = (
        await db.execute(
            insert(Metric)
            .values([{"task_id": task_id, "name": n, "value": v} for n, v in batch.items()])
            .returning(*METRIC_COLUMNS)
        )
    ).all()
    await db.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(metrics=Task.metrics.op("||")(cast(dict(batch), JSONB)), updated_at=func.now())
    )
    await db.commit()
    return sorted((MetricOut(*r) for r in rows), key=lambda m: m.id)


_LIST_METRICS = (
    select(*METRIC_COLUMNS)
    .where(Metric.task_id == bindparam("tid"))
    .order_by(Metric.recorded_at, Metric.id)
)


async def list_metrics(conn: AsyncConnection, task_id: uuid.UUID) -> list[MetricOut]:
    return [MetricOut(*r) for r in await conn.execute(_LIST_METRICS, {"tid": task_id})]


async def erase_session(db: AsyncSession, session_id: uuid.UUID) -> bool:
    """Delete the session with everything of it (tasks, metrics, frames: ON DELETE CASCADE)
    and its audit trail, which names it. False if there was no such session."""
    deleted = await db.execute(delete(Session).where(Session.id == session_id))
    await db.execute(delete(AuditEntry).where(AuditEntry.session_id == session_id))
    await db.commit()
    return bool(deleted.rowcount)  # type: ignore[attr-defined]
