"""The session report: each task's results and the stream's completeness, computed in SQL
over the stored frames, all in one REPEATABLE READ snapshot (a mirror still streaming cannot
make the counts of one part disagree with another)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hub.schemas import Completeness, MetricSummary, SessionReport, TaskReport

MAX_RANGES = 1_000

SESSION = text(
    "SELECT id, child_ref, created_at, mirror_connected_at, ended_at, mirror_connections"
    " FROM sessions WHERE id = :s"
)
TASKS = text(
    "SELECT id, task_name, status, duration_seconds, metrics FROM tasks"
    " WHERE session_id = :s ORDER BY created_at, id"
)
# Frames naming each task, and the device times of the first and last.
TASK_SPANS = text(
    "SELECT task_id, count(*), min(device_ts), max(device_ts) FROM frames"
    " WHERE session_id = :s AND task_id IS NOT NULL GROUP BY task_id"
)
# Every value of every metric frame, summarised per task (NULL: no task) and metric.
METRIC_SUMMARIES = text(
    """
SELECT f.task_id, v.key,
       count(*), min(v.value::float8), avg(v.value::float8), max(v.value::float8),
       (array_agg(v.value::float8 ORDER BY f.seq DESC))[1]
FROM frames f, jsonb_each(f.payload -> 'values') AS v
WHERE f.session_id = :s AND f.kind = 'metrics' AND jsonb_typeof(v.value) = 'number'
GROUP BY f.task_id, v.key
"""
)
TOTALS = text("SELECT count(*), min(seq), max(seq) FROM frames WHERE session_id = :s")
# Holes between stored seqs, and before the first (seqs start at 1).
GAPS = text(
    """
SELECT seq + 1, next - 1 FROM (
    SELECT seq, lead(seq) OVER (ORDER BY seq) AS next FROM frames WHERE session_id = :s
) AS s
WHERE next > seq + 1
ORDER BY seq
LIMIT :limit
"""
)


def _device_time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _summary(row: Any) -> MetricSummary:
    return MetricSummary(count=row[2], min=row[3], mean=row[4], max=row[5], last=row[6])


async def session_report(db: AsyncSession, session_id: uuid.UUID) -> SessionReport | None:
    """The report of `session_id`, or None if there is no such session."""
    # The first statement of the transaction: every read below sees the same snapshot.
    await db.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    params = {"s": session_id}
    session = (await db.execute(SESSION, params)).one_or_none()
    if session is None:
        return None
    spans = {r[0]: r for r in await db.execute(TASK_SPANS, params)}
    summaries: dict[uuid.UUID | None, dict[str, MetricSummary]] = {}
    for row in await db.execute(METRIC_SUMMARIES, params):
        summaries.setdefault(row[0], {})[row[1]] = _summary(row)
    tasks = []
    for task_id, name, status, duration, results in await db.execute(TASKS, params):
        span = spans.get(task_id)
        tasks.append(
            TaskReport(
                task_id=task_id,
                task_name=name,
                status=status,
                duration_seconds=duration,
                first_frame_at=_device_time(span[2]) if span else None,
                last_frame_at=_device_time(span[3]) if span else None,
                frames=span[1] if span else 0,
                metrics=dict(sorted(summaries.get(task_id, {}).items())),
                results=results,
            )
        )
    stored, first, last = (await db.execute(TOTALS, params)).one()
    ranges: list[tuple[int, int]] = []
    missing = 0
    if first is not None:
        missing = last - stored  # seqs are unique and at least 1: what is not stored of 1..last
        if first > 1:
            ranges.append((1, first - 1))
        gaps = await db.execute(GAPS, {**params, "limit": MAX_RANGES})
        ranges.extend((a, b) for a, b in gaps)
    await db.rollback()  # read only: nothing to keep
    return SessionReport(
        session_id=session.id,
        child_ref=session.child_ref,
        created_at=session.created_at,
        mirror_connected_at=session.mirror_connected_at,
        ended_at=session.ended_at,
        tasks=tasks,
        outside_tasks=dict(sorted(summaries.get(None, {}).items())),
        completeness=Completeness(
            frames_stored=stored,
            first_seq=first,
            last_seq=last,
            missing_ranges=ranges[:MAX_RANGES],
            missing_count=missing,
            # Each connection after the first followed a lost one. NULL: not counted (the
            # session was recorded by a hub before the count).
            mirror_disconnections=(
                None
                if session.mirror_connections is None
                else max(session.mirror_connections - 1, 0)
            ),
        ),
    )
