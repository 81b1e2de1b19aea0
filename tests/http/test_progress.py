"""GET /children/{child_ref}/progress: per visit, exercise and metric, the session mean of the
streamed values; it agrees with each visit's report, and other children do not show."""

from __future__ import annotations

import httpx
import pytest

from tests.support.live import HubProcess, create_session, new_task_id, staff_headers, token
from tests.support.streams import TASKS, session_script, stream


async def test_progress_is_each_visits_mean(hub_server: HubProcess) -> None:
    visits = []
    for _ in range(2):
        session_id = await create_session(hub_server.http, child_ref="child-progress")
        await stream(hub_server, session_id, session_script([new_task_id() for _ in TASKS]))
        visits.append(session_id)
    other = await create_session(hub_server.http, child_ref="child-other")
    await stream(hub_server, other, session_script([new_task_id() for _ in TASKS]))

    async with httpx.AsyncClient(
        base_url=hub_server.http, headers=staff_headers("therapist")
    ) as http:
        response = await http.get("/children/child-progress/progress")
        assert response.status_code == 200, response.text
        progress = response.json()
        reports = {s: (await http.get(f"/sessions/{s}/report")).json() for s in visits}
        assert (await http.get("/children/nobody/progress")).status_code == 404
        assert (await http.get("/children/bad%20ref!/progress")).status_code == 422
        admin = staff_headers("admin")
        assert (
            await http.get("/children/child-progress/progress", headers=admin)
        ).status_code == 200

    assert progress["child_ref"] == "child-progress" and progress["sessions"] == 2
    points = progress["points"]
    assert {p["session_id"] for p in points} == set(visits)
    # Oldest visit first.
    assert [p["session_id"] for p in points] == sorted(
        (p["session_id"] for p in points), key=visits.index
    )
    expected = {
        (s, task["task_name"], name): (m["mean"], m["count"])
        for s, report in reports.items()
        for task in report["tasks"]
        for name, m in task["metrics"].items()
    }
    got = {(p["session_id"], p["task_name"], p["metric"]): (p["mean"], p["count"]) for p in points}
    assert set(got) == set(expected) and len(got) == 2 * 3 * 3
    for key, (mean, count) in expected.items():
        assert got[key][1] == count
        assert got[key][0] == pytest.approx(mean, rel=1e-12)


async def test_progress_needs_staff(hub_server: HubProcess) -> None:
    session_id = await create_session(hub_server.http, child_ref="child-guarded")
    async with httpx.AsyncClient(base_url=hub_server.http) as http:
        assert (await http.get("/children/child-guarded/progress")).status_code == 401
        mirror = {"Authorization": f"Bearer {token('mirror', session_id)}"}
        assert (
            await http.get("/children/child-guarded/progress", headers=mirror)
        ).status_code == 403
