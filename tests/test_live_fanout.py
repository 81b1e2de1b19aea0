"""Acceptance: many mirrors and watchers; every frame delivered once, in order, stored once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from tests.live_support import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    recv,
    send,
    task_frame,
    wait_acked,
)

MIRRORS = 20
WATCHERS = 3
FRAMES = 300
TASKS = ("raise_hand", "squat", "balance")


def session_script(task_ids: list[str]) -> list[dict[str, Any]]:
    """FRAMES frames: each task starts, streams metrics, and finishes with results."""
    frames: list[dict[str, Any]] = []
    per_task = FRAMES // len(TASKS)
    for task_id, name in zip(task_ids, TASKS, strict=True):
        start = len(frames) + 1
        frames.append(task_frame(start, task_id, "started", "in_progress", task_name=name))
        for i in range(per_task - 2):
            seq = len(frames) + 1
            frame = metrics_frame(seq, accuracy=(i % 100) / 100, stability=0.8, max_angle=90 + i)
            frame["task_id"] = task_id
            frames.append(frame)
        frames.append(
            task_frame(
                len(frames) + 1,
                task_id,
                "finished",
                "success",
                task_name=name,
                duration_seconds=12.5,
                metrics={"accuracy": 0.9, "max_angle": 170.0},
            )
        )
    return frames


async def watch(
    hub: HubProcess,
    session_id: str,
    ready: asyncio.Event,
    n: int,
    welcomes: list[dict[str, Any]] | None = None,
) -> list[int]:
    seqs: list[int] = []
    async with open_client(hub.ws, session_id, "watch") as (ws, welcome):
        if welcomes is not None:
            welcomes.append(welcome)
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot"
        ready.set()
        while len(seqs) < FRAMES:
            message = await recv(ws, timeout=30)
            if message["type"] in ("metrics", "task"):
                seqs.append(message["seq"])
    return seqs


async def stream(
    hub: HubProcess,
    session_id: str,
    frames: list[dict[str, Any]],
    welcomes: list[dict[str, Any]] | None = None,
) -> None:
    async with open_client(hub.ws, session_id, "mirror") as (ws, welcome):
        if welcomes is not None:
            welcomes.append(welcome)
        assert welcome["last_seq"] == 0
        # Mixed single frames and batches, as real mirrors send after a reconnect.
        i = 0
        while i < len(frames):
            if i % 50 == 10:
                await send(ws, {"type": "batch", "frames": frames[i : i + 25]})
                i += 25
            else:
                await send(ws, frames[i])
                i += 1
        await wait_acked(ws, len(frames), timeout=60)


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
