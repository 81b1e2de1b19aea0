"""A realistic session script (tasks with metrics between) streamed by real mirrors and
followed by real watchers, for the fan-out and scale-out tests."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.live import (
    HubProcess,
    metrics_frame,
    open_client,
    recv,
    send,
    task_frame,
    wait_acked,
)

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
