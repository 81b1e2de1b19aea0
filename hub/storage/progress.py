"""A child's progress across visits: per exercise and metric, each session's mean, in SQL
over the stored metric frames of the child's newest sessions."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hub.schemas import ChildProgress, ProgressPoint

MAX_SESSIONS = 100

COUNT = text("SELECT count(*) FROM sessions WHERE child_ref = :c")
MEANS = text(
    """
WITH visits AS (
    SELECT id, created_at FROM sessions WHERE child_ref = :c
    ORDER BY created_at DESC, id DESC LIMIT :n
)
SELECT s.id, s.created_at, t.task_name, v.key, avg(v.value::float8), count(*)
FROM visits s
JOIN frames f ON f.session_id = s.id AND f.kind = 'metrics'
JOIN tasks t ON t.id = f.task_id
CROSS JOIN LATERAL jsonb_each(f.payload -> 'values') AS v
WHERE jsonb_typeof(v.value) = 'number'
GROUP BY s.id, s.created_at, t.task_name, v.key
ORDER BY s.created_at, s.id, t.task_name, v.key
"""
)


async def child_progress(db: AsyncSession, child_ref: str) -> ChildProgress | None:
    """None when no session has this child_ref."""
    # The first statement of the transaction: the count and the means see the same snapshot.
    await db.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    sessions = int((await db.execute(COUNT, {"c": child_ref})).scalar_one())
    rows = (await db.execute(MEANS, {"c": child_ref, "n": MAX_SESSIONS})).all() if sessions else []
    await db.rollback()  # read only: nothing to keep
    if not sessions:
        return None
    points = [
        ProgressPoint(
            session_id=r[0],
            created_at=r[1],
            task_name=r[2],
            metric=r[3],
            mean=float(r[4]),
            count=int(r[5]),
        )
        for r in rows
    ]
    return ChildProgress(child_ref=child_ref, sessions=sessions, points=points)
