"""GET /sessions/{id}/report equals the same aggregates computed here, with other SQL, over
the frames the hub stored from a real stream; a missing seq shows in its completeness."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    new_task_id,
    open_client,
    send,
    staff_headers,
    wait_acked,
)
from tests.support.streams import FRAMES, TASKS, session_script, stream

# Per task and metric, from each value as text (numeric: no float rounding on the way), the
# last one by DISTINCT ON rather than an aggregate.
EXPECTED = """
WITH v AS (
    SELECT f.task_id, e.key, e.value::numeric AS value, f.seq
    FROM frames f CROSS JOIN LATERAL jsonb_each_text(f.payload -> 'values') AS e
    WHERE f.session_id = :s AND f.payload ->> 'type' = 'metrics'
), last AS (
    SELECT DISTINCT ON (task_id, key) task_id, key, value FROM v ORDER BY task_id, key, seq DESC
)
SELECT v.task_id, v.key, count(*), min(v.value), avg(v.value), max(v.value), last.value
FROM v JOIN last ON last.task_id IS NOT DISTINCT FROM v.task_id AND last.key = v.key
GROUP BY v.task_id, v.key, last.value
"""


async def expected_summaries(engine: AsyncEngine, session_id: str) -> dict[tuple[str, str], list]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(EXPECTED), {"s": uuid.UUID(session_id)})
    return {(str(r[0]) if r[0] else "", r[1]): [r[2], *(float(x) for x in r[3:])] for r in rows}


def got_summaries(report: dict) -> dict[tuple[str, str], list]:
    got = {}
    for task in report["tasks"]:
        for name, m in task["metrics"].items():
            got[task["task_id"], name] = [m["count"], m["min"], m["mean"], m["max"], m["last"]]
    for name, m in report["outside_tasks"].items():
        got["", name] = [m["count"], m["min"], m["mean"], m["max"], m["last"]]
    return got


async def test_report_equals_sql_over_the_stored_frames(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    session_id = await create_session(hub_server.http, child_ref="child-7")
    task_ids = [new_task_id() for _ in TASKS]
    await stream(hub_server, session_id, session_script(task_ids))
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
        # Metric frames outside any task.
        for seq in range(FRAMES + 1, FRAMES + 6):
            await send(mirror, metrics_frame(seq, accuracy=seq / 1000, sway_cm=1.5))
        await wait_acked(mirror, FRAMES + 5)

    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        response = await http.get(f"/sessions/{session_id}/report")
        audit = await http.get("/audit", params={"session_id": session_id})
    assert response.status_code == 200, response.text
    assert "read_report" in {e["action"] for e in audit.json()["items"]}
    report = response.json()
    assert report["child_ref"] == "child-7"
    assert [t["task_id"] for t in report["tasks"]] == task_ids
    assert [t["task_name"] for t in report["tasks"]] == list(TASKS)
    assert {t["status"] for t in report["tasks"]} == {"success"}
    assert all(t["duration_seconds"] == 12.5 for t in report["tasks"])
    assert all(t["results"] == {"accuracy": 0.9, "max_angle": 170.0} for t in report["tasks"])

    expected = await expected_summaries(engine, session_id)
    got = got_summaries(report)
    assert set(got) == set(expected) and len(got) == 3 * 3 + 2
    for key, (count, low, mean, high, last) in expected.items():
        assert got[key][0] == count, key
        assert got[key][1:] == pytest.approx([low, mean, high, last], rel=1e-12), key

    async with engine.connect() as conn:
        spans = await conn.execute(
            text(
                "SELECT task_id, count(*), min(device_ts), max(device_ts) FROM frames"
                " WHERE session_id = :s AND task_id IS NOT NULL GROUP BY task_id"
            ),
            {"s": uuid.UUID(session_id)},
        )
        by_task = {str(r[0]): r[1:] for r in spans}
    for task in report["tasks"]:
        count, first, last = by_task[task["task_id"]]
        assert task["frames"] == count
        assert datetime.fromisoformat(task["first_frame_at"]) == datetime.fromtimestamp(first, UTC)
        assert datetime.fromisoformat(task["last_frame_at"]) == datetime.fromtimestamp(last, UTC)

    assert report["completeness"] == {
        "frames_stored": FRAMES + 5,
        "first_seq": 1,
        "last_seq": FRAMES + 5,
        "missing_ranges": [],
        "missing_count": 0,
        "mirror_disconnections": 1,  # the stream's connection, then another one
    }


async def test_report_names_missing_seqs(hub_server: HubProcess, engine: AsyncEngine) -> None:
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
        for seq in range(1, 21):
            await send(mirror, metrics_frame(seq, accuracy=0.5))
        await wait_acked(mirror, 20)
    # Storage lost rows (a restore from an older backup, a hand-made DELETE): the report says so.
    async with engine.begin() as conn:
        await conn.execute(
            text("DELETE FROM frames WHERE session_id = :s AND seq IN (1, 2, 7, 10, 11, 12)"),
            {"s": uuid.UUID(session_id)},
        )
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        report = (await http.get(f"/sessions/{session_id}/report")).json()
    assert report["completeness"]["missing_ranges"] == [[1, 2], [7, 7], [10, 12]]
    assert report["completeness"]["missing_count"] == 6
    assert report["completeness"]["frames_stored"] == 14
    assert report["completeness"]["mirror_disconnections"] == 0  # one connection
    assert report["outside_tasks"]["accuracy"]["count"] == 14


async def test_report_of_unknown_session_is_404(hub_server: HubProcess) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        response = await http.get(f"/sessions/{uuid.uuid4()}/report")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
