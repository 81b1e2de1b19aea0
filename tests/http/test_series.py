"""One record per session: task results posted over HTTP and metrics streamed in frames are
the same data to every reader (the series, the task's metrics, the task list, a watcher's
snapshot); asking for a metric the session never had answers 404 naming those it has."""

from __future__ import annotations

import httpx
import pytest

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    new_task_id,
    open_client,
    recv,
    send,
    staff_headers,
    task_frame,
    wait_acked,
)


async def test_posted_and_streamed_metrics_are_one_series(hub_server: HubProcess) -> None:
    session_id = await create_session(hub_server.http)
    task_id = new_task_id()
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
            await send(mirror, task_frame(1, task_id, "started", "in_progress"))
            for seq in range(2, 5):
                await send(mirror, metrics_frame(seq, accuracy=seq / 10))
            await wait_acked(mirror, 4)
            async with open_client(hub_server.ws, session_id, "watch") as (first_watcher, _):
                assert (await recv(first_watcher))["type"] == "snapshot"
                # Posted while the session is live and watched (its room is in memory).
                posted = await http.post(
                    f"/tasks/{task_id}/metrics", json={"accuracy": 0.95, "max_angle": 170.0}
                )
                assert posted.status_code == 201, posted.text
                await send(mirror, metrics_frame(5, accuracy=0.5))
                await wait_acked(mirror, 5)
                async with open_client(hub_server.ws, session_id, "watch") as (watcher, _):
                    snapshot = await recv(watcher)
        live_task = {t["id"]: t for t in snapshot["tasks"]}[task_id]
        assert live_task["metrics"] == {"accuracy": 0.95, "max_angle": 170.0}

        series = await http.get(f"/sessions/{session_id}/series", params={"metric": "accuracy"})
        assert series.status_code == 200, series.text
        points = series.json()["points"]
        assert [(p["seq"], p["value"]) for p in points] == [
            (2, 0.2),
            (3, 0.3),
            (4, 0.4),
            (None, 0.95),  # the posted result, in time order
            (5, 0.5),
        ]
        only_posted = await http.get(
            f"/sessions/{session_id}/series", params={"metric": "max_angle"}
        )
        assert [(p["seq"], p["value"]) for p in only_posted.json()["points"]] == [(None, 170.0)]
        bucketed = await http.get(
            f"/sessions/{session_id}/series",
            params={"metric": "accuracy", "bucket_ms": "86400000"},
        )
        buckets = bucketed.json()["points"]
        assert len(buckets) in (1, 2)  # a day bucket (2 if the day turned)
        if len(buckets) == 1:
            assert buckets[0]["value"] == pytest.approx((0.2 + 0.3 + 0.4 + 0.95 + 0.5) / 5)
            assert buckets[0]["seq"] == 5

        # The same results in the task's metrics and in the task list.
        metrics = (await http.get(f"/tasks/{task_id}/metrics")).json()
        assert {(m["name"], m["value"]) for m in metrics} == {
            ("accuracy", 0.95),
            ("max_angle", 170.0),
        }
        tasks = (await http.get(f"/sessions/{session_id}/tasks")).json()
        assert tasks[0]["metrics"] == {"accuracy": 0.95, "max_angle": 170.0}

        # A watcher of the session loaded afresh from storage sees them too.
        async with open_client(hub_server.ws, session_id, "watch") as (watcher, _):
            snapshot = await recv(watcher)
        assert {t["id"]: t for t in snapshot["tasks"]}[task_id]["metrics"] == live_task["metrics"]


async def test_unknown_metric_names_the_known_ones(hub_server: HubProcess) -> None:
    session_id = await create_session(hub_server.http)
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        nothing = await http.get(f"/sessions/{session_id}/series", params={"metric": "accuracy"})
        assert nothing.status_code == 404
        assert (
            nothing.json()["message"] == "this session has no metric 'accuracy'; it has: none yet"
        )

        async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
            await send(mirror, metrics_frame(1, stability=0.8, accuracy=0.7))
            await wait_acked(mirror, 1)
        task = await http.post(f"/sessions/{session_id}/tasks", json={"task_name": "squat"})
        await http.post(f"/tasks/{task.json()['id']}/metrics", json={"depth": 0.4})

        unknown = await http.get(f"/sessions/{session_id}/series", params={"metric": "acuracy"})
        assert unknown.status_code == 404
        assert unknown.json() == {
            "error": "not_found",
            "message": "this session has no metric 'acuracy'; it has: accuracy, depth, stability",
            "fields": None,
        }
        # A known metric with nothing in the window is an empty series, not a 404.
        empty = await http.get(
            f"/sessions/{session_id}/series",
            params={"metric": "depth", "until": "2000-01-01T00:00:00Z"},
        )
        assert (empty.status_code, empty.json()["points"]) == (200, [])
