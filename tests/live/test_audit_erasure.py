"""Acceptance: every history read and every watch is in the audit trail, readable by admins;
`DELETE /sessions/{id}` erases a session with everything of it, closing its live clients.

Against a real hub process; the database is checked directly, table by table.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub.auth import Role
from tests.support.live import (
    TOKENS,
    HubProcess,
    metrics_frame,
    new_task_id,
    open_client,
    recv_until,
    send,
    task_frame,
    wait_acked,
)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def staff(role: Role, subject: str) -> dict[str, str]:
    return bearer(TOKENS.issue(role, subject, 3600))


async def new_session(http: httpx.AsyncClient, name: str) -> tuple[str, str]:
    """(session id, mirror token) of a new session."""
    response = await http.post("/sessions", json={"child_name": name, "child_age": 8})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["mirror_token"]


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> int:
    """Read until the hub closes the connection; its close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "the hub dropped the connection without a close frame"
            return exc.rcvd.code


async def hello_closes_with(base_ws: str, session_id: str, role: str, credential: str) -> int:
    async with connect(f"{base_ws}/ws/sessions/{session_id}/{role}", compression=None) as ws:
        await send(ws, {"type": "hello", "token": credential})
        return await closed_with(ws)


def audit_rows(page: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    return [(i["actor"], i["role"], i["action"], i["session_id"]) for i in page["items"]]


# Audit -------------------------------------------------------------------------------------


async def test_reads_and_watches_are_audited(hub_server: HubProcess) -> None:
    tag = uuid.uuid4().hex[:8]
    therapist = f"dr-audit-{tag}"
    admin = f"admin-audit-{tag}"
    async with httpx.AsyncClient(
        base_url=hub_server.http, headers=staff("therapist", therapist)
    ) as http:
        session_id, mirror_token = await new_session(http, "Audited Child")
        other_id, other_mirror = await new_session(http, "Unaudited Child")
        # Writes are not reads: creating sessions and tasks leaves no trail.
        task = await http.post(f"/sessions/{session_id}/tasks", json={"task_name": "squat"})
        assert task.status_code == 201, task.text
        task_id = task.json()["id"]
        assert (await http.post(f"/tasks/{task_id}/metrics", json={"a": 1.0})).status_code == 201

        # The reads, by different callers.
        assert (await http.get(f"/sessions/{session_id}")).status_code == 200
        mirror = bearer(mirror_token)
        assert (await http.get(f"/sessions/{session_id}/tasks", headers=mirror)).status_code == 200
        assert (await http.get(f"/tasks/{task_id}/metrics")).status_code == 200
        series = await http.get(
            f"/sessions/{session_id}/series",
            params={"metric": "a"},  # the metric posted above
            headers=staff("admin", admin),
        )
        assert series.status_code == 200, series.text
        assert (await http.get("/sessions", params={"limit": 1})).status_code == 200
        # Refused or failed reads are not reads.
        assert (
            await http.get(f"/sessions/{session_id}", headers=bearer(other_mirror))
        ).status_code == 403
        assert (await http.get(f"/sessions/{uuid.uuid4()}")).status_code == 404
        assert (
            await http.get(f"/tasks/{task_id}/metrics", headers=bearer(other_mirror))
        ).status_code == 403

    watcher_token = TOKENS.issue("therapist", therapist, 3600)
    async with open_client(hub_server.ws, session_id, "watch", token=watcher_token):
        pass  # the welcome came: the watch is on record

    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff("admin", admin)) as http:
        page = (await http.get("/audit", params={"session_id": session_id})).json()
        # Newest first; exactly these, nothing for the refused or failed reads.
        assert audit_rows(page) == [
            (therapist, "therapist", "watch", session_id),
            (admin, "admin", "read_series", session_id),
            (therapist, "therapist", "read_metrics", session_id),
            (f"mirror:{session_id}", "mirror", "read_tasks", session_id),
            (therapist, "therapist", "read_session", session_id),
        ]
        assert page["next_before_id"] is None
        ids = [item["id"] for item in page["items"]]
        assert ids == sorted(ids, reverse=True)
        assert all(item["at"] for item in page["items"])

        # The list read names no session; it is in the unfiltered trail.
        everything = (await http.get("/audit", params={"limit": 500})).json()
        assert (therapist, "therapist", "list_sessions", None) in audit_rows(everything)
        assert not [r for r in audit_rows(everything) if r[3] == other_id]

        # Paging: two at a time, with next_before_id.
        first = (await http.get("/audit", params={"session_id": session_id, "limit": 2})).json()
        assert [i["id"] for i in first["items"]] == ids[:2]
        assert first["next_before_id"] == ids[1]
        second = (
            await http.get(
                "/audit",
                params={"session_id": session_id, "limit": 2, "before_id": first["next_before_id"]},
            )
        ).json()
        assert [i["id"] for i in second["items"]] == ids[2:4]

        # Reading the audit trail is for admins only.
        refused = await http.get("/audit", headers=staff("therapist", therapist))
        assert refused.status_code == 403, refused.text
        refused = await http.get("/audit", headers=bearer(mirror_token))
        assert refused.status_code == 403, refused.text


# Erasure -----------------------------------------------------------------------------------


async def rows_naming(engine: AsyncEngine, needles: list[str]) -> dict[str, int]:
    """For every table of the schema: how many rows mention any of `needles` anywhere (any
    column, JSON payloads included)."""
    found: dict[str, int] = {}
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
            )
        ).scalars()
        for table in list(tables):
            count = (
                await conn.execute(
                    text(f'SELECT count(*) FROM "{table}" AS t WHERE t::text LIKE ANY(:patterns)'),
                    {"patterns": [f"%{n}%" for n in needles]},
                )
            ).scalar_one()
            found[table] = count
    return found


async def counts(engine: AsyncEngine, session_id: str, task_ids: list[str]) -> dict[str, int]:
    """Rows of one session, table by table, through the columns that name it."""
    queries = {
        "sessions": "SELECT count(*) FROM sessions WHERE id = :sid",
        "tasks": "SELECT count(*) FROM tasks WHERE session_id = :sid",
        "frames": "SELECT count(*) FROM frames WHERE session_id = :sid",
        "audit_log": "SELECT count(*) FROM audit_log WHERE session_id = :sid",
        "metrics": "SELECT count(*) FROM metrics WHERE task_id = ANY(:tids)",
    }
    result = {}
    async with engine.connect() as conn:
        for table, query in queries.items():
            result[table] = (
                await conn.execute(
                    text(query),
                    {"sid": uuid.UUID(session_id), "tids": [uuid.UUID(t) for t in task_ids]},
                )
            ).scalar_one()
        # Every table with a session_id column is covered above (a new one would be missed).
        with_session_id = set(
            (
                await conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.columns"
                        " WHERE table_schema = current_schema() AND column_name = 'session_id'"
                    )
                )
            ).scalars()
        )
    assert with_session_id <= set(queries), with_session_id
    return result


async def test_delete_erases_everything_and_closes_live_clients(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    admin = staff("admin", "admin-erasure")
    async with httpx.AsyncClient(base_url=hub_server.http, headers=admin) as http:
        session_id, mirror_token = await new_session(http, "Erased Child")
        keep_id, keep_mirror = await new_session(http, "Kept Child")
        # Over HTTP: a task with metrics, in both sessions.
        for sid in (session_id, keep_id):
            task = await http.post(f"/sessions/{sid}/tasks", json={"task_name": "squat"})
            assert task.status_code == 201, task.text
            metrics = await http.post(f"/tasks/{task.json()['id']}/metrics", json={"a": 0.5})
            assert metrics.status_code == 201, metrics.text

        streamed_task = new_task_id()
        async with (
            open_client(hub_server.ws, session_id, "mirror", token=mirror_token) as (mirror, _),
            open_client(hub_server.ws, session_id, "watch") as (watcher, _),
            open_client(hub_server.ws, keep_id, "mirror", token=keep_mirror) as (keep, _),
            open_client(hub_server.ws, keep_id, "watch") as (keep_watcher, _),
        ):
            # Over the stream: a task with result metrics, metric frames; acked = stored.
            await send(mirror, task_frame(1, streamed_task, "started", "in_progress"))
            for seq in range(2, 6):
                await send(mirror, metrics_frame(seq, accuracy=seq / 10))
            await send(
                mirror,
                task_frame(
                    6,
                    streamed_task,
                    "finished",
                    "success",
                    duration_seconds=3.0,
                    metrics={"accuracy": 0.9},
                ),
            )
            await wait_acked(mirror, 6)
            for seq in range(1, 4):
                await send(keep, metrics_frame(seq))
            await wait_acked(keep, 3)
            # History reads of both sessions put them in the audit trail.
            for sid in (session_id, keep_id):
                assert (await http.get(f"/sessions/{sid}")).status_code == 200
                assert (await http.get(f"/sessions/{sid}/tasks")).status_code == 200
                series = await http.get(f"/sessions/{sid}/series", params={"metric": "accuracy"})
                assert series.status_code == 200
            # Audit rows are written in batches: GET /audit has every row queued before it written.
            assert (await http.get("/audit")).status_code == 200

            task_ids = [
                str(t)
                for t in (
                    await _scalars(
                        engine, "SELECT id FROM tasks WHERE session_id = :sid", session_id
                    )
                )
            ]
            assert streamed_task in task_ids and len(task_ids) == 2
            before = await counts(engine, session_id, task_ids)
            assert all(before.values()), before  # every table holds something of it
            # The metrics of the streamed task came through the live path.
            assert before["metrics"] == 2 and before["frames"] == 6, before
            kept_task_ids = [
                str(t)
                for t in await _scalars(
                    engine, "SELECT id FROM tasks WHERE session_id = :sid", keep_id
                )
            ]
            kept_before = await counts(engine, keep_id, kept_task_ids)

            # Frames in flight while the erasure happens: stored then erased, or never stored.
            for seq in range(7, 40):
                await send(mirror, metrics_frame(seq))
            erased = await http.delete(f"/sessions/{session_id}")
            assert erased.status_code == 200, erased.text
            assert erased.json() == {"deleted": session_id}

            # Its live clients are closed with 4004; the other session's keep going.
            assert await closed_with(mirror) == 4004
            assert await closed_with(watcher) == 4004
            await send(keep, metrics_frame(4))
            await wait_acked(keep, 4)
            assert (await recv_until(keep_watcher, "metrics"))["seq"] == 1

        after = await counts(engine, session_id, task_ids)
        assert after == dict.fromkeys(after, 0), after
        anywhere = await rows_naming(engine, [session_id, *task_ids])
        assert anywhere == dict.fromkeys(anywhere, 0), anywhere
        kept_after = await counts(engine, keep_id, kept_task_ids)
        assert kept_after == {**kept_before, "frames": kept_before["frames"] + 1}, kept_after

        # Gone for everyone: HTTP 404, WebSocket 4004, a second DELETE 404.
        again = await http.delete(f"/sessions/{session_id}")
        assert again.status_code == 404, again.text
        assert again.json()["error"] == "not_found"
        assert (await http.get(f"/sessions/{session_id}")).status_code == 404
        assert (await http.get(f"/tasks/{task_ids[0]}/metrics")).status_code == 404
        assert await hello_closes_with(hub_server.ws, session_id, "mirror", mirror_token) == 4004
        watcher_token = TOKENS.issue("therapist", "dr-late", 3600)
        assert await hello_closes_with(hub_server.ws, session_id, "watch", watcher_token) == 4004
        # Nothing of it came back through those attempts.
        assert await counts(engine, session_id, task_ids) == after
        # The kept session is whole.
        assert (await http.get(f"/sessions/{keep_id}")).status_code == 200


async def test_delete_of_an_idle_session_and_of_unknown_ids(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    """A session not live in the hub's memory is erased the same way; unknown and malformed
    ids are 404."""
    async with httpx.AsyncClient(
        base_url=hub_server.http, headers=staff("admin", "admin-idle")
    ) as http:
        session_id, mirror_token = await new_session(http, "Idle Child")
        async with open_client(hub_server.ws, session_id, "mirror", token=mirror_token) as (
            mirror,
            _,
        ):
            await send(mirror, metrics_frame(1))
            await wait_acked(mirror, 1)
        assert (await http.get(f"/sessions/{session_id}")).status_code == 200
        assert (await http.delete(f"/sessions/{session_id}")).status_code == 200
        assert await counts(engine, session_id, []) == {
            "sessions": 0,
            "tasks": 0,
            "frames": 0,
            "audit_log": 0,
            "metrics": 0,
        }
        for unknown in (str(uuid.uuid4()), "not-a-uuid"):
            response = await http.delete(f"/sessions/{unknown}")
            assert response.status_code == 404, response.text


async def _scalars(engine: AsyncEngine, query: str, session_id: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(query), {"sid": uuid.UUID(session_id)})).scalars())


async def watch_until_closed(base_ws: str, session_id: str, timeout: float) -> str:
    """Watch a session until the hub closes the connection: its close code, or "stuck"."""
    credential = TOKENS.issue("therapist", "dr-racing", 3600)
    async with connect(f"{base_ws}/ws/sessions/{session_id}/watch", compression=None) as ws:
        await send(ws, {"type": "hello", "token": credential})
        try:
            return str(await closed_with(ws, timeout))
        except TimeoutError:
            return "stuck"


async def test_watchers_arriving_during_an_erasure(
    hub_server: HubProcess, engine: AsyncEngine
) -> None:
    """Watchers that connect while a session is being erased are closed with 4004 like the
    rest (none is left watching a session that no longer exists), and neither they nor
    history reads running at the same time leave an audit row naming the erased session
    behind. A race: several rounds of it at once."""
    admin = staff("admin", "admin-race")
    rounds = 6
    async with httpx.AsyncClient(base_url=hub_server.http, headers=admin) as http:
        sessions = [await new_session(http, f"Racing Child {i}") for i in range(rounds)]

        async def erase_while_watchers_join(session_id: str, mirror_token: str) -> list[str]:
            async with open_client(hub_server.ws, session_id, "mirror", token=mirror_token) as (
                mirror,
                _,
            ):
                watchers = [
                    asyncio.create_task(watch_until_closed(hub_server.ws, session_id, 5.0))
                    for _ in range(10)
                ]
                reads = [
                    asyncio.create_task(http.get(f"/sessions/{session_id}{path}", params=query))
                    for path, query in [("", {}), ("/tasks", {}), ("/series", {"metric": "a"})] * 3
                ]
                erased = await http.delete(f"/sessions/{session_id}")
                assert erased.status_code == 200, erased.text
                outcomes = await asyncio.gather(*watchers)
                for read in await asyncio.gather(*reads):
                    assert read.status_code in (200, 404), read.text
                assert await closed_with(mirror) == 4004
            return outcomes

        outcomes = await asyncio.gather(*(erase_while_watchers_join(*s) for s in sessions))
    ids = [session_id for session_id, _ in sessions]
    left = await rows_naming(engine, ids)
    problems = {
        "outcomes other than 4004": sorted({o for round_ in outcomes for o in round_} - {"4004"}),
        "rows left": {table: n for table, n in left.items() if n},
    }
    assert problems == {"outcomes other than 4004": [], "rows left": {}}, problems
