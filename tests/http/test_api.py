"""The session-history HTTP API: shapes, status codes and every error case."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.app import create_app
from hub.settings import Settings
from tests.support.live import staff_headers

CHILD = {"child_name": "Alice", "child_age": 7, "child_height_cm": 122.5, "child_weight_kg": 24.0}


async def make_session(client: httpx.AsyncClient, **overrides: object) -> dict[str, object]:
    response = await client.post("/sessions", json={**CHILD, **overrides})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_create_and_read_session(client: httpx.AsyncClient) -> None:
    created = await make_session(client)
    assert set(created) >= {"id", "created_at", *CHILD}
    assert {k: created[k] for k in CHILD} == CHILD
    assert created["ended_at"] is None
    response = await client.get(f"/sessions/{created['id']}")
    assert response.status_code == 200
    mirror_token = created.pop("mirror_token")
    assert isinstance(mirror_token, str) and mirror_token.count(".") == 2  # a JWT
    assert response.json() == created
    assert response.headers["content-type"] == "application/json"


async def test_optional_child_measures(client: httpx.AsyncClient) -> None:
    response = await client.post("/sessions", json={"child_name": "Bo"})
    assert response.status_code == 201
    assert response.json()["child_age"] is None


async def test_tasks_and_metrics_round_trip(client: httpx.AsyncClient) -> None:
    session = await make_session(client)
    task_body = {
        "task_name": "raise_hand",
        "duration_seconds": 15.5,
        "status": "success",
        "metrics": {"accuracy": 0.92},
    }
    response = await client.post(f"/sessions/{session['id']}/tasks", json=task_body)
    assert response.status_code == 201, response.text
    task = response.json()
    assert {k: task[k] for k in task_body} == task_body
    assert task["session_id"] == session["id"]

    second = await client.post(f"/sessions/{session['id']}/tasks", json={"task_name": "squat"})
    assert second.json()["status"] == "pending"
    listed = (await client.get(f"/sessions/{session['id']}/tasks")).json()
    assert [t["task_name"] for t in listed] == ["raise_hand", "squat"]

    batch = {"accuracy": 0.92, "stability": 0.85, "max_angle": 170}
    response = await client.post(f"/tasks/{task['id']}/metrics", json=batch)
    assert response.status_code == 201, response.text
    assert {m["name"]: m["value"] for m in response.json()} == batch
    listed_metrics = (await client.get(f"/tasks/{task['id']}/metrics")).json()
    assert {m["name"]: m["value"] for m in listed_metrics} == batch
    assert all(m["task_id"] == task["id"] for m in listed_metrics)


async def test_tasks_are_listed_in_pages(client: httpx.AsyncClient) -> None:
    session = await make_session(client)
    names = [f"task_{i:02}" for i in range(7)]
    for name in names:
        response = await client.post(f"/sessions/{session['id']}/tasks", json={"task_name": name})
        assert response.status_code == 201
    url = f"/sessions/{session['id']}/tasks"
    whole = await client.get(url)  # without paging parameters: the plain list, as before
    assert [t["task_name"] for t in whole.json()] == names and "link" not in whole.headers

    seen: list[str] = []
    response = await client.get(url, params={"limit": 3})
    pages = 1
    while "link" in response.headers:
        seen += [t["task_name"] for t in response.json()]
        link = response.headers["link"]
        assert link.endswith('>; rel="next"') and response.headers["next-cursor"] in link
        response = await client.get(link[1 : link.index(">")])
        pages += 1
    seen += [t["task_name"] for t in response.json()]
    assert seen == names and pages == 3 and "next-cursor" not in response.headers

    bad = await client.get(url, params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "cursor"
    too_many = await client.get(url, params={"limit": 100_000})
    assert too_many.status_code == 422 and too_many.json()["fields"][0]["field"] == "limit"


async def test_tasks_over_http_have_the_limits_of_a_live_session(
    settings: Settings, clean_db: AsyncEngine
) -> None:
    limited = dataclasses.replace(settings, session_max_tasks=2, session_max_state_bytes=30_000)
    app = create_app(limited)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://hub.test",
            headers=staff_headers("admin"),
        ) as client,
    ):
        session = await make_session(client)
        url = f"/sessions/{session['id']}/tasks"
        for name in ("a", "b"):
            assert (await client.post(url, json={"task_name": name})).status_code == 201
        refused = await client.post(url, json={"task_name": "c"})
        assert refused.status_code == 409 and refused.json()["error"] == "too_many_tasks"
        assert len((await client.get(url)).json()) == 2

        other = await make_session(client)
        url = f"/sessions/{other['id']}/tasks"
        big = {f"metric_{i:03}_{'x' * 80}": 0.5 for i in range(200)}  # about 20 KB
        first = await client.post(url, json={"task_name": "a", "metrics": big})
        assert first.status_code == 201
        refused = await client.post(url, json={"task_name": "b", "metrics": big})
        assert refused.status_code == 409
        assert refused.json()["error"] == "session_state_too_large"


@pytest.mark.parametrize(
    ("body", "bad_fields"),
    [
        ({"child_age": "seven"}, {"child_name", "child_age"}),
        ({"child_name": "", "child_age": -1}, {"child_name", "child_age"}),
        (
            {"child_name": "A", "child_height_cm": 900, "child_weight_kg": 0},
            {"child_height_cm", "child_weight_kg"},
        ),
        ({"child_name": "A", "favourite_colour": "red"}, {"favourite_colour"}),
        ([1, 2], {"$"}),
    ],
)
async def test_session_validation_names_every_bad_field(
    client: httpx.AsyncClient, body: object, bad_fields: set[str]
) -> None:
    response = await client.post("/sessions", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "validation_error"
    assert {f["field"] for f in error["fields"]} == bad_fields


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"child_name": "A",}'])
async def test_malformed_json_is_422(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/sessions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


async def test_metric_batch_validation(client: httpx.AsyncClient) -> None:
    session = await make_session(client)
    task = (await client.post(f"/sessions/{session['id']}/tasks", json={"task_name": "x"})).json()
    for bad, field in [
        ({"accuracy": "high"}, "accuracy"),
        ({"accuracy": None}, "accuracy"),
        ({}, "$"),
        ({"bad name!": 1.0}, "bad name!"),
        ({"accuracy": 1e300}, "accuracy"),
    ]:
        response = await client.post(f"/tasks/{task['id']}/metrics", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert field in {f["field"] for f in response.json()["fields"]}, (bad, response.text)


async def test_task_validation(client: httpx.AsyncClient) -> None:
    session = await make_session(client)
    response = await client.post(
        f"/sessions/{session['id']}/tasks",
        json={"task_name": "x", "status": "done", "duration_seconds": -3},
    )
    assert response.status_code == 422
    assert {f["field"] for f in response.json()["fields"]} == {"status", "duration_seconds"}


@pytest.mark.parametrize(
    "path",
    [
        "/sessions/{missing}",
        "/sessions/not-a-uuid",
        "/sessions/{missing}/tasks",
        "/sessions/12/tasks",
        "/tasks/{missing}/metrics",
        "/tasks/nope/metrics",
        "/sessions/{missing}/series?metric=accuracy",
        "/no/such/path",
    ],
)
async def test_unknown_or_malformed_ids_are_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path.format(missing=uuid.uuid4()))
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_posts_to_unknown_parents_are_404(client: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.post(f"/sessions/{missing}/tasks", json={"task_name": "x"})
    assert response.status_code == 404
    response = await client.post(f"/tasks/{missing}/metrics", json={"accuracy": 1})
    assert response.status_code == 404


async def test_oversized_body_is_413(client: httpx.AsyncClient, settings: object) -> None:
    big = {"child_name": "A" * 100_000}
    response = await client.post("/sessions", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_wrong_method_is_json_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


async def test_list_sessions_newest_first_with_cursor(client: httpx.AsyncClient) -> None:
    made = [await make_session(client, child_name=f"child{i}") for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/sessions", params=params)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [s["id"] for s in reversed(made)]


async def test_list_sessions_time_filter(client: httpx.AsyncClient) -> None:
    first = await make_session(client)
    second = await make_session(client)
    boundary = second["created_at"]
    newer = (await client.get("/sessions", params={"created_after": boundary})).json()
    older = (await client.get("/sessions", params={"created_before": boundary})).json()
    assert [s["id"] for s in newer["items"]] == [second["id"]]
    assert [s["id"] for s in older["items"]] == [first["id"]]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await client.get("/sessions", params={"created_after": future})).json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "abc"},
        {"limit": "1000"},
        {"cursor": "garbage"},
        {"created_after": "yesterday"},
        {"created_after": "2026-01-01T00:00:00"},
    ],
)
async def test_list_sessions_bad_query_is_422(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/sessions", params=params)
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == next(iter(params))


async def test_health_reports_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
