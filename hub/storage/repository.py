"""History queries (select()) used by the HTTP endpoints.

Every function takes an AsyncSession and returns plain model objects or None when the parent
does not exist; HTTP concerns (status codes, JSON) stay in the endpoints.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from sqlalchemy import (
    BigInteger,
    Float,
    String,
    Uuid,
    and_,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from hub.schemas import MetricsBatch, SessionCreate, TaskCreate
from hub.storage.models import AuditEntry, Frame, Metric, Session, Task

# Timestamps outside this range are refused: PostgreSQL cannot bind every Python datetime.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


class BadCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, session_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{session_id}".encode()
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


async def create_session(db: AsyncSession, data: SessionCreate) -> Session:
    row = Session(
        child_name=data.child_name,
        child_age=data.child_age,
        child_height_cm=data.child_height_cm,
        child_weight_kg=data.child_weight_kg,
        child_ref=data.child_ref,
    )
    db.add(row)
    await db.commit()
    await db.refresh(row)
    return row


async def get_session(db: AsyncSession, session_id: uuid.UUID) -> Session | None:
    return await db.get(Session, session_id)


async def list_sessions(
    db: AsyncSession,
    *,
    limit: int,
    cursor: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    child_ref: str | None = None,
) -> tuple[Sequence[Session], str | None]:
    """Newest first; keyset pagination on (created_at, id) so pages stay stable under inserts."""
    query = select(Session).order_by(Session.created_at.desc(), Session.id.desc())
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
    rows = (await db.scalars(query.limit(limit + 1))).all()
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


async def create_task(
    db: AsyncSession,
    session_id: uuid.UUID,
    data: TaskCreate,
    *,
    max_tasks: int,
    max_state_bytes: int,
) -> Task | None:
    """The new task, or None if there is no such session. Raises LimitReached if the session
    has `max_tasks` tasks, or its tasks would pass `max_state_bytes` (as JSON, roughly): the
    limits a live session has, so a session filled over HTTP cannot be any larger."""
    if await db.get(Session, session_id) is None:
        return None
    count, size = (
        await db.execute(
            select(
                func.count(),
                func.coalesce(func.sum(func.length(func.cast(Task.metrics, String))), 0),
            ).where(Task.session_id == session_id)
        )
    ).one()
    if count >= max_tasks:
        raise LimitReached(
            "too_many_tasks", f"the session has {count} tasks; the limit is {max_tasks}"
        )
    # Each task also carries its name, id, status and times: about 256 bytes.
    grown = size + (count + 1) * 256 + len(orjson.dumps(dict(data.metrics)))
    if grown > max_state_bytes:
        raise LimitReached(
            "session_state_too_large",
            f"the session's tasks would take about {grown} bytes; the limit is {max_state_bytes}",
        )
    row = Task(
        session_id=session_id,
        task_name=data.task_name,
        status=data.status,
        duration_seconds=data.duration_seconds,
        metrics=dict(data.metrics),
    )
    db.add(row)
    await db.commit()
    await db.refresh(row)
    return row


async def list_tasks(
    db: AsyncSession, session_id: uuid.UUID, *, limit: int, cursor: str | None = None
) -> tuple[Sequence[Task], str | None] | None:
    """Oldest first, a page of at most `limit`, and the cursor of the next page (None: this
    was the last); keyset pagination on (created_at, id), like `list_sessions`."""
    if await db.get(Session, session_id) is None:
        return None
    query = select(Task).where(Task.session_id == session_id).order_by(Task.created_at, Task.id)
    if cursor is not None:
        at, ident = decode_cursor(cursor)
        query = query.where(or_(Task.created_at > at, and_(Task.created_at == at, Task.id > ident)))
    rows = (await db.scalars(query.limit(limit + 1))).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor


async def get_task(db: AsyncSession, task_id: uuid.UUID) -> Task | None:
    return await db.get(Task, task_id)


async def add_metrics(db: AsyncSession, task: Task, batch: MetricsBatch) -> Sequence[Metric]:
    """Record task results, as a finished task frame's metrics are: rows in `metrics`, merged
    into the task's `metrics` (what the task list and a watcher's snapshot show)."""
    rows = [Metric(task_id=task.id, name=name, value=value) for name, value in batch.items()]
    db.add_all(rows)
    await db.execute(
        update(Task)
        .where(Task.id == task.id)
        .values(metrics=Task.metrics.op("||")(cast(dict(batch), JSONB)), updated_at=func.now())
    )
    await db.commit()
    for row in rows:
        await db.refresh(row)
    return rows


async def list_metrics(db: AsyncSession, task: Task) -> Sequence[Metric]:
    query = select(Metric).where(Metric.task_id == task.id).order_by(Metric.recorded_at, Metric.id)
    return (await db.scalars(query)).all()


class UnknownMetric(LookupError):
    def __init__(self, known: list[str]) -> None:
        super().__init__("no such metric")
        self.known = known  # the metrics the session has (the first MAX_KNOWN_METRICS)


MAX_KNOWN_METRICS = 50


async def metric_series(
    db: AsyncSession,
    session_id: uuid.UUID,
    metric: str,
    *,
    since: datetime | None,
    until: datetime | None,
    bucket_ms: int | None,
    limit: int,
) -> list[tuple[datetime, float, int | None]] | None:
    """One metric of a session over time, averaged per bucket: the values the mirror streamed
    (metric frames, by hub time of arrival) and the task results recorded for it (POST
    /tasks/{id}/metrics, a finished task's metrics; seq None), one series in time order.
    None if the session does not exist; UnknownMetric if it never had this metric."""
    if await db.get(Session, session_id) is None:
        return None
    value = Frame.payload["values"][metric].as_float()
    streamed = select(Frame.received_at.label("t"), value.label("v"), Frame.seq.label("seq")).where(
        Frame.session_id == session_id, Frame.kind == "metrics", value.is_not(None)
    )
    results = (
        select(Metric.recorded_at, Metric.value, literal(None, BigInteger))
        .join(Task, Task.id == Metric.task_id)
        .where(Task.session_id == session_id, Metric.name == metric)
    )
    if since is not None:
        streamed = streamed.where(Frame.received_at >= since)
        results = results.where(Metric.recorded_at >= since)
    if until is not None:
        streamed = streamed.where(Frame.received_at < until)
        results = results.where(Metric.recorded_at < until)
    points = union_all(streamed, results).subquery()
    if bucket_ms:
        seconds = bucket_ms / 1000.0
        epoch = func.extract("epoch", points.c.t)
        bucket = func.to_timestamp(func.floor(epoch / seconds) * seconds)
        query = (
            select(bucket.label("t"), func.avg(points.c.v).cast(Float), func.max(points.c.seq))
            .group_by(bucket)
            .order_by(bucket)
        )
    else:
        query = select(points.c.t, points.c.v, points.c.seq).order_by(
            points.c.t, points.c.seq.nulls_last()
        )
    rows = [
        (t, float(v), None if s is None else int(s))
        for t, v, s in (await db.execute(query.limit(limit))).all()
    ]
    if not rows and not await _has_metric(db, session_id, metric):
        raise UnknownMetric(await _metric_names(db, session_id))
    return rows


async def _has_metric(db: AsyncSession, session_id: uuid.UUID, metric: str) -> bool:
    streamed = select(Frame.seq).where(
        Frame.session_id == session_id,
        Frame.kind == "metrics",
        Frame.payload["values"].has_key(metric),
    )
    results = (
        select(Metric.id)
        .join(Task, Task.id == Metric.task_id)
        .where(Task.session_id == session_id, Metric.name == metric)
    )
    return bool(await db.scalar(select(or_(streamed.exists(), results.exists()))))


async def _metric_names(db: AsyncSession, session_id: uuid.UUID) -> list[str]:
    """Every metric name of a session (error path only: reads all its frames)."""
    streamed = select(func.jsonb_object_keys(Frame.payload["values"]).label("name")).where(
        Frame.session_id == session_id, Frame.kind == "metrics"
    )
    results = (
        select(Metric.name)
        .join(Task, Task.id == Metric.task_id)
        .where(Task.session_id == session_id)
    )
    names = union(streamed, results).subquery()
    query = select(names.c.name).order_by(names.c.name).limit(MAX_KNOWN_METRICS)
    return list((await db.scalars(query)).all())


async def record_access(
    db: AsyncSession, actor: str, role: str, action: str, session_id: uuid.UUID | None
) -> bool:
    """Write an audit row; False if the session no longer exists. The row is written only
    under a key-share lock on the session, so an erasure cannot slip between the check and
    the insert and leave a row naming an erased session behind."""
    row = select(literal(actor), literal(role), literal(action), literal(session_id, Uuid))
    if session_id is not None:
        exists = (
            select(Session.id)
            .where(Session.id == session_id)
            .with_for_update(read=True, key_share=True)
        )
        row = row.where(exists.exists())
    result = await db.execute(
        insert(AuditEntry).from_select(["actor", "role", "action", "session_id"], row)
    )
    await db.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_audit(
    db: AsyncSession, *, limit: int, session_id: uuid.UUID | None, before_id: int | None
) -> Sequence[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if session_id is not None:
        query = query.where(AuditEntry.session_id == session_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return (await db.scalars(query)).all()


async def erase_session(db: AsyncSession, session_id: uuid.UUID) -> bool:
    """Delete the session with everything of it (tasks, metrics, frames: ON DELETE CASCADE)
    and its audit trail, which names it. False if there was no such session."""
    deleted = await db.execute(delete(Session).where(Session.id == session_id))
    await db.execute(delete(AuditEntry).where(AuditEntry.session_id == session_id))
    await db.commit()
    return bool(deleted.rowcount)  # type: ignore[attr-defined]
