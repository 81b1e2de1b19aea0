"""The audit trail is written in batches off the request path, and still complete: every read
under load, every row queued when the hub stops gracefully, a full queue answered 503 (never
an unaudited read), and GET /audit shows the reads answered before it.

Against real hub processes; the trail is also counted in the database directly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.auth import Role
from tests.support.live import TOKENS, HubProcess, create_session

StartHub = Callable[..., Awaitable[HubProcess]]
# Batches that never fill up and never come due on their own: rows leave the queue only
# when someone waits for them (GET /audit, a watch) or when the hub stops.
HELD = {"HUB_AUDIT_FLUSH_MS": "3600000", "HUB_AUDIT_BATCH_ROWS": "100000"}


def caller(subject: str, role: Role = "therapist") -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue(role, subject, 3600)}"}


async def rows_of(engine: AsyncEngine, session_id: str) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT actor, action FROM audit_log WHERE session_id = :sid ORDER BY id"),
            {"sid": uuid.UUID(session_id)},
        )
        return [(actor, action) for actor, action in result]


async def test_every_one_of_100_concurrent_reads_is_audited(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    session_id = await create_session(hub_server.http)
    readers = [f"dr-load-{i}" for i in range(100)]
    paths = [f"/sessions/{session_id}/tasks", f"/sessions/{session_id}"]
    async with httpx.AsyncClient(base_url=hub_server.http, timeout=30) as http:
        answers = await asyncio.gather(
            *(http.get(paths[i % 2], headers=caller(who)) for i, who in enumerate(readers))
        )
        assert [a.status_code for a in answers] == [200] * 100, {a.text for a in answers}
        page = await http.get(
            "/audit", params={"session_id": session_id, "limit": 500}, headers=caller("a", "admin")
        )
    assert page.status_code == 200, page.text
    expected = sorted(
        (who, "read_tasks" if i % 2 == 0 else "read_session") for i, who in enumerate(readers)
    )
    assert sorted((i["actor"], i["action"]) for i in page.json()["items"]) == expected
    assert sorted(await rows_of(engine, session_id)) == expected


async def test_get_audit_shows_the_reads_answered_before_it(
    start_hub: StartHub, engine: AsyncEngine
) -> None:
    hub = await start_hub(**HELD)
    session_id = await create_session(hub.http)
    async with httpx.AsyncClient(base_url=hub.http, timeout=30) as http:
        for path in ("", "/tasks", ""):
            read = await http.get(f"/sessions/{session_id}{path}", headers=caller("dr-own"))
            assert read.status_code == 200, read.text
        assert await rows_of(engine, session_id) == []  # still queued: nothing is due
        page = await http.get(
            "/audit", params={"session_id": session_id}, headers=caller("admin-own", "admin")
        )
    assert page.status_code == 200, page.text
    assert [(i["actor"], i["action"]) for i in page.json()["items"]] == [
        ("dr-own", "read_session"),
        ("dr-own", "read_tasks"),
        ("dr-own", "read_session"),
    ]


async def test_queued_rows_are_written_before_a_graceful_stop_completes(
    start_hub: StartHub, engine: AsyncEngine
) -> None:
    hub = await start_hub(**HELD)
    session_id = await create_session(hub.http)
    async with httpx.AsyncClient(base_url=hub.http, timeout=30) as http:
        reads = await asyncio.gather(
            *(
                http.get(f"/sessions/{session_id}/tasks", headers=caller(f"dr-stop-{i}"))
                for i in range(40)
            )
        )
    assert {r.status_code for r in reads} == {200}
    assert await rows_of(engine, session_id) == []  # answered, and only queued
    assert await hub.stop() == 0
    written = await rows_of(engine, session_id)
    assert sorted(written) == sorted((f"dr-stop-{i}", "read_tasks") for i in range(40))
    assert "audit rows not written" not in hub.logs()


async def test_a_full_queue_answers_503_and_the_hub_carries_on(
    start_hub: StartHub, engine: AsyncEngine
) -> None:
    hub = await start_hub(HUB_AUDIT_QUEUE_ROWS="3", **HELD)
    session_id = await create_session(hub.http)
    tasks = f"/sessions/{session_id}/tasks"
    async with httpx.AsyncClient(base_url=hub.http, timeout=30) as http:
        for _ in range(3):
            assert (await http.get(tasks, headers=caller("dr-full"))).status_code == 200
        refused = await http.get(tasks, headers=caller("dr-refused"))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        body = refused.json()
        assert body["error"] == "audit_backlog"
        assert "3 rows behind" in body["message"], body
        # Writes are not audited: they go on; the session and the hub are fine.
        posted = await http.post(tasks, json={"task_name": "squat"}, headers=caller("dr-full"))
        assert posted.status_code == 201, posted.text
        assert (await http.get("/health/live")).status_code == 200

        # GET /audit writes the queue out (it has room again); the refused read left no row.
        page = await http.get(
            "/audit", params={"session_id": session_id}, headers=caller("admin-full", "admin")
        )
        assert page.status_code == 200, page.text
        assert [i["actor"] for i in page.json()["items"]] == ["dr-full"] * 3
        again = await http.get(tasks, headers=caller("dr-refused"))
        assert again.status_code == 200, again.text
        assert [t["task_name"] for t in again.json()] == ["squat"]
    await hub.stop()
    assert await rows_of(engine, session_id) == [("dr-full", "read_tasks")] * 3 + [
        ("dr-refused", "read_tasks")
    ]
