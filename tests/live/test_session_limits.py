"""A session's limits, against a real hub: a frame over one is refused with its documented
`error` (not stored, not published, not acked), the connection stays open, and the mirror goes
on with the same seq. A task id of another session is refused, naming it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    new_task_id,
    open_client,
    recv,
    recv_until,
    send,
    staff_headers,
    task_frame,
    wait_acked,
)

LIMITS = {
    "HUB_SESSION_MAX_TASKS": "2",
    "HUB_TASK_MAX_METRICS": "3",
    "HUB_SESSION_MAX_METRICS": "5",
}


async def stored_tasks(hub: HubProcess, session_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(headers=staff_headers()) as client:
        response = await client.get(f"{hub.http}/sessions/{session_id}/tasks")
    response.raise_for_status()
    tasks: list[dict[str, object]] = response.json()
    return tasks


async def test_frames_over_a_sessions_limits_are_refused_and_the_stream_goes_on(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(**LIMITS)
    session_id = await create_session(hub.http)
    one, two, three = new_task_id(), new_task_id(), new_task_id()
    async with (
        open_client(hub.ws, session_id, "watch") as (watcher, _),
        open_client(hub.ws, session_id, "mirror") as (mirror, _),
    ):
        assert (await recv_until(watcher, "snapshot"))["tasks"] == []
        await send(mirror, task_frame(1, one, "started", "in_progress", metrics={"a": 1, "b": 1}))
        await send(mirror, task_frame(2, two, "started", "in_progress"))
        await wait_acked(mirror, 2)

        refusals = [
            (task_frame(3, three, "started", "pending"), "too_many_tasks", str(three)),
            (task_frame(3, one, "status", "in_progress", metrics={"c": 1, "d": 1}), None, "task"),
            (metrics_frame(3, e=1, f=1, g=1, h=1), "too_many_metric_names", "session"),
        ]
        for frame, code, named in refusals:
            await send(mirror, frame)
            error = await recv(mirror)
            assert error["type"] == "error", error
            assert error["code"] == (code or "too_many_metric_names")
            assert named in error["message"]
            assert error["seq"] == error["expected_seq"] == 3  # refused: seq 3 is still free

        # A batch: the frames before the one at fault are taken, the rest are not.
        batch = [metrics_frame(3, a=2), task_frame(4, three, "started", "pending")]
        batch.append(metrics_frame(5, a=3))
        await send(mirror, {"type": "batch", "frames": batch})
        error = await recv(mirror)
        assert (error["code"], error["seq"], error["expected_seq"]) == ("too_many_tasks", 4, 4)
        await wait_acked(mirror, 3)

        # The connection is open and seq 4 is the next one: the mirror goes on.
        await send(mirror, task_frame(4, one, "finished", "success", metrics={"c": 0.5}))
        await wait_acked(mirror, 4)

        seen = []
        while len(seen) < 4:
            message = await recv(watcher)
            if message["type"] in ("metrics", "task"):
                seen.append(message["seq"])
        assert seen == [1, 2, 3, 4]  # nothing refused reached the watcher

    tasks = await stored_tasks(hub, session_id)
    assert sorted(str(t["id"]) for t in tasks) == sorted([str(one), str(two)])
    assert {str(t["id"]): t["metrics"] for t in tasks}[str(one)] == {"a": 1, "b": 1, "c": 0.5}


async def test_a_task_id_of_another_session_is_refused_naming_it(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    # Frames are stored only every 3 s here: a task can be in one session's memory only.
    hub = await start_hub(HUB_FLUSH_INTERVAL_MS="3000")
    first, second = await create_session(hub.http), await create_session(hub.http)
    shared, fresh, live_only = new_task_id(), new_task_id(), new_task_id()
    async with (
        open_client(hub.ws, first, "watch") as (watcher, _),
        open_client(hub.ws, first, "mirror") as (mirror, _),
    ):
        await send(mirror, task_frame(1, shared, "started", "in_progress"))
        await wait_acked(mirror, 1)
        await send(mirror, task_frame(2, live_only, "started", "pending"))
        while (await recv(watcher)).get("seq") != 2:  # in the first session's room
            pass
        async with open_client(hub.ws, second, "mirror") as (other, _):
            for taken in (shared, live_only):  # stored / only in memory so far
                await send(other, task_frame(1, taken, "started", "in_progress"))
                error = await recv(other)
                assert error["code"] == "task_id_in_use" and str(taken) in error["message"]
                assert error["seq"] == error["expected_seq"] == 1
            await send(other, task_frame(1, fresh, "started", "in_progress"))
            await wait_acked(other, 1)
            await wait_acked(mirror, 2)
    assert [t["id"] for t in await stored_tasks(hub, second)] == [str(fresh)]
    assert {t["id"] for t in await stored_tasks(hub, first)} == {str(shared), str(live_only)}
