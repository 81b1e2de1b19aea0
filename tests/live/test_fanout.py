"""Acceptance: many mirrors and watchers; every frame delivered once, in order, stored once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.support.live import (
    HubProcess,
    create_session,
)
from tests.support.streams import FRAMES, TASKS, session_script, stream, watch

MIRRORS = 20
WATCHERS = 3


@pytest.mark.timeout(180)
async def test_many_mirrors_and_watchers(hub_server: HubProcess, database_url: str) -> None:
    sessions = [await create_session(hub_server.http) for _ in range(MIRRORS)]
    scripts = {s: session_script([str(uuid.uuid4()) for _ in TASKS]) for s in sessions}
    readies = {s: [asyncio.Event() for _ in range(WATCHERS)] for s in sessions}
    watchers = {
        s: [asyncio.create_task(watch(hub_server, s, e, FRAMES)) for e in readies[s]]
        for s in sessions
    }
    async with asyncio.timeout(30):
        for events in readies.values():
            for event in events:
                await event.wait()
    await asyncio.gather(*(stream(hub_server, s, scripts[s]) for s in sessions))
    results = {s: await asyncio.gather(*tasks) for s, tasks in watchers.items()}

    for session_id, per_watcher in results.items():
        for seqs in per_watcher:
            assert seqs == list(range(1, FRAMES + 1)), f"session {session_id}: gap/dup/order"

    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        for session_id, frames in scripts.items():
            stored = await conn.fetch(
                "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
            )
            assert [r["seq"] for r in stored] == list(range(1, FRAMES + 1))
            tasks = await conn.fetch(
                "SELECT id::text, task_name, status, duration_seconds, metrics::text"
                " FROM tasks WHERE session_id = $1::uuid ORDER BY created_at",
                session_id,
            )
            finished = [f for f in frames if f["type"] == "task" and f["event"] == "finished"]
            assert [t["id"] for t in tasks] == [f["task_id"] for f in finished]
            assert [t["task_name"] for t in tasks] == list(TASKS)
            assert all(t["status"] == "success" and t["duration_seconds"] == 12.5 for t in tasks)
            results_count = await conn.fetchval(
                "SELECT count(*) FROM metrics m JOIN tasks t ON t.id = m.task_id"
                " WHERE t.session_id = $1::uuid",
                session_id,
            )
            assert results_count == 2 * len(TASKS)
    finally:
        await conn.close()
