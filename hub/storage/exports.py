"""A session's frames as CSV, streamed by PostgreSQL's COPY: the hub holds one chunk at a time,
whatever the session's length."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

# One row per stored value (long format): a metric frame gives a row per metric, a task frame a
# row per result metric, and a row with metric and value empty if it has none, so every stored
# frame has at least one row. Values are the stored JSON numbers' text: exactly as stored.
# The seq order is the primary key's; sorting by metric within a seq is an incremental sort.
CSV_QUERY = """
SELECT f.seq, f.kind, f.device_ts,
       to_char(f.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS received_at,
       f.task_id, t.task_name, f.payload ->> 'event' AS event, f.payload ->> 'status' AS status,
       v.key AS metric, v.value::text AS value
FROM frames f
LEFT JOIN tasks t ON t.id = f.task_id
LEFT JOIN LATERAL jsonb_each(
    CASE f.kind WHEN 'metrics' THEN f.payload -> 'values' ELSE f.payload -> 'metrics' END
) AS v ON true
WHERE f.session_id = $1
ORDER BY f.seq, v.key
"""
COLUMNS = (
    "seq",
    "kind",
    "device_ts",
    "received_at",
    "task_id",
    "task_name",
    "event",
    "status",
    "metric",
    "value",
)
# Chunks of COPY output waiting for the client: the memory bound of one export.
QUEUE_CHUNKS = 16
# A long session's COPY is expected to outlast the API's per-statement bound; this is its own.
EXPORT_TIMEOUT_S = 3_600.0


async def frames_csv(engine: AsyncEngine, session_id: uuid.UUID) -> AsyncIterator[bytes]:
    """The CSV (with its header line), chunk by chunk as PostgreSQL sends it. Slow readers slow
    the COPY down (the queue is bounded); a reader that stops cancels it."""
    # Chunks, then None at the end, or the COPY's error.
    queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue(QUEUE_CHUNKS)

    async def put(chunk: bytes | bytearray | memoryview) -> None:
        # asyncpg hands over bytearray chunks; Starlette sends bytes.
        await queue.put(bytes(chunk))

    async def copy() -> None:
        try:
            async with engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                try:
                    await driver.copy_from_query(
                        CSV_QUERY,
                        session_id,
                        output=put,
                        format="csv",
                        header=True,
                        timeout=EXPORT_TIMEOUT_S,
                    )
                except asyncio.CancelledError:
                    # A COPY stopped half-way leaves the connection mid-protocol: it must not
                    # go back to the pool, where the next checkout would find it unusable.
                    await conn.invalidate()
                    raise
        except Exception as exc:  # handed to the reader, which is still reading
            await queue.put(exc)
        else:
            await queue.put(None)

    task = asyncio.create_task(copy())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
        await task
    finally:
        # The reader left (the client went away) or the COPY failed: stop it either way.
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
