"""GET /sessions/{id}/frames.csv: one distinct seq per stored frame, every value as stored, a
header, UTF-8; every export audited."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid

import httpx
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

HEADER = [
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
]


async def stored(engine: AsyncEngine, session_id: str) -> dict[int, dict[str, object]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT seq, kind, device_ts, payload FROM frames WHERE session_id = :s"),
            {"s": uuid.UUID(session_id)},
        )
        return {r[0]: {"kind": r[1], "device_ts": r[2], "payload": r[3]} for r in rows}


async def streamed_session(hub: HubProcess) -> tuple[str, list[str]]:
    session_id = await create_session(hub.http, child_ref="child-csv")
    task_ids = [new_task_id() for _ in TASKS]
    await stream(hub, session_id, session_script(task_ids))
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        await send(mirror, metrics_frame(FRAMES + 1, **{"accuracy": 0.125, "sway_cm": 1e-7}))
        await wait_acked(mirror, FRAMES + 1)
    return session_id, task_ids


async def test_csv_has_every_stored_frame_and_value(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    session_id, task_ids = await streamed_session(hub_server)
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        response = await http.get(f"/sessions/{session_id}/frames.csv")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert "attachment" in response.headers["content-disposition"]
        audit = await http.get("/audit", params={"session_id": session_id})
    assert "export_csv" in {e["action"] for e in audit.json()["items"]}

    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8"))))
    assert rows[0] == HEADER
    records = [dict(zip(HEADER, r, strict=True)) for r in rows[1:]]
    frames = await stored(engine, session_id)
    assert sorted({int(r["seq"]) for r in records}) == sorted(frames) == list(range(1, FRAMES + 2))
    assert [int(r["seq"]) for r in records] == sorted(int(r["seq"]) for r in records)

    by_seq: dict[int, dict[str, float]] = {}
    for r in records:
        seq = int(r["seq"])
        frame = frames[seq]
        assert r["kind"] == frame["kind"]
        assert float(r["device_ts"]) == frame["device_ts"]
        assert r["received_at"].endswith("Z")
        if r["metric"]:
            by_seq.setdefault(seq, {})[r["metric"]] = float(r["value"])
        else:
            assert r["value"] == "", r
    for seq, frame in frames.items():
        payload = frame["payload"]
        assert isinstance(payload, dict)
        values = payload["values"] if frame["kind"] == "metrics" else payload.get("metrics", {})
        assert by_seq.get(seq, {}) == values, seq
    # Task frames carry their task's name, event and status.
    finished = [r for r in records if r["event"] == "finished"]
    assert [r["task_name"] for r in finished if r["metric"] == "accuracy"] == list(TASKS)
    assert {r["task_id"] for r in finished} == set(task_ids)
    assert {r["status"] for r in finished} == {"success"}


async def test_csv_values_are_the_stored_numbers_text(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    session_id = await create_session(hub_server.http)
    values = {"a": 0.1, "b": 123456789.123, "c": -2.5e-9, "d": 3.0}
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
        await send(mirror, metrics_frame(1, **values))
        await wait_acked(mirror, 1)
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        body = (await http.get(f"/sessions/{session_id}/frames.csv")).text
    rows = list(csv.DictReader(io.StringIO(body)))
    assert {r["metric"]: float(r["value"]) for r in rows} == values
    async with engine.connect() as conn:
        stored_values = await conn.scalar(
            text("SELECT payload -> 'values' FROM frames WHERE session_id = :s"),
            {"s": uuid.UUID(session_id)},
        )
    assert stored_values == values


async def test_csv_of_unknown_session_is_404(hub_server: HubProcess) -> None:
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        response = await http.get(f"/sessions/{uuid.uuid4()}/frames.csv")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


FILL = """
INSERT INTO frames (session_id, seq, kind, device_ts, received_at, payload)
SELECT :s, g, 'metrics', g, now(),
       jsonb_build_object('type', 'metrics', 'seq', g, 'ts', g,
                          'values', jsonb_build_object('accuracy', g / 1e6, 'stability', 0.5))
FROM generate_series(1, :n) g
"""


async def test_abandoned_exports_free_their_connections(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    """Readers that leave after the first chunk cancel their COPY: more of them than the hub's
    connection pool holds, and a whole export still follows."""
    session_id = await create_session(hub_server.http)
    async with engine.begin() as conn:
        await conn.execute(text(FILL), {"s": uuid.UUID(session_id), "n": 50_000})
    url = f"/sessions/{session_id}/frames.csv"
    logged_before = len(hub_server.logs())
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        for _ in range(30):
            async with http.stream("GET", url, timeout=30) as response:
                assert response.status_code == 200
                async for _chunk in response.aiter_raw():
                    break
        async with asyncio.timeout(60):
            whole = await http.get(url, timeout=60)
    assert whole.status_code == 200
    assert whole.content.count(b"\n") == 1 + 2 * 50_000
    logged = hub_server.logs()[logged_before:]
    assert "ERROR" not in logged and "Traceback" not in logged, logged
