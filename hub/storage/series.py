"""One metric of a session over time: the values the mirror streamed and the task results."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Float, bindparam, func, literal, or_, select, union, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from hub.schemas import SeriesPoint
from hub.storage.models import Frame, Metric, Session, Task

MAX_KNOWN_METRICS = 50


class UnknownMetric(LookupError):
    def __init__(self, known: list[str]) -> None:
        super().__init__("no such metric")
        self.known = known  # the metrics the session has (the first MAX_KNOWN_METRICS)


_SESSION_EXISTS = select(Session.id).where(Session.id == bindparam("sid"))


async def metric_series(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    metric: str,
    *,
    since: datetime | None,
    until: datetime | None,
    bucket_ms: int | None,
    limit: int,
) -> list[SeriesPoint] | None:
    """One metric of a session over time, averaged per bucket: the values the mirror streamed
    (metric frames, by hub time of arrival) and the task results recorded for it (POST
    /tasks/{id}/metrics, a finished task's metrics; seq None), one series in time order.
    None if the session does not exist; UnknownMetric if it never had this metric."""
    if (await conn.execute(_SESSION_EXISTS, {"sid": session_id})).first() is None:
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
        SeriesPoint(t, float(v), None if s is None else int(s))
        for t, v, s in await conn.execute(query.limit(limit))
    ]
    if not rows and not await _has_metric(conn, session_id, metric):
        raise UnknownMetric(await _metric_names(conn, session_id))
    return rows


async def _has_metric(conn: AsyncConnection, session_id: uuid.UUID, metric: str) -> bool:
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
    return bool(await conn.scalar(select(or_(streamed.exists(), results.exists()))))


async def _metric_names(conn: AsyncConnection, session_id: uuid.UUID) -> list[str]:
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
    return list((await conn.scalars(query)).all())
