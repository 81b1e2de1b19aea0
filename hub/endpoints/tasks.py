"""Tasks of a session and the metrics of a task."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from hub.context import context
from hub.endpoints.audit import audit
from hub.endpoints.bodies import decode_body, read_body
from hub.endpoints.errors import HTTPError, not_found
from hub.endpoints.guard import require_session
from hub.endpoints.params import parse_uuid, query_int
from hub.endpoints.responses import json_response
from hub.openapi import STAFF_AND_MIRROR, Operation, Param, uuid_path
from hub.schemas import FieldError, MetricOut, MetricsBatch, TaskCreate, TaskOut
from hub.storage import repository

# A page of a session's tasks: by default as many as a live session may have (the
# HUB_SESSION_MAX_TASKS default), so clients that read one page see every task of it.
TASKS_PAGE = 500
MAX_TASKS_PAGE = 1_000


async def create_task(request: Request) -> Response:
    ctx = context(request)
    session_id = parse_uuid(request.path_params["session_id"], "session")
    data: TaskCreate = decode_body(
        await read_body(request, ctx.settings.max_body_bytes), TaskCreate
    )
    async with ctx.autocommit.connect() as conn:
        try:
            row = await repository.create_task(
                conn,
                session_id,
                data,
                max_tasks=ctx.settings.session_max_tasks,
                max_state_bytes=ctx.settings.session_max_state_bytes,
            )
        except repository.LimitReached as exc:
            raise HTTPError(409, exc.code, str(exc)) from None
    if row is None:
        raise not_found("session")
    return json_response(row, 201)


async def list_tasks(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    limit = query_int(request, "limit", TASKS_PAGE, 1, MAX_TASKS_PAGE)
    cursor = request.query_params.get("cursor")
    async with context(request).autocommit.connect() as conn:
        try:
            page = await repository.list_tasks(conn, session_id, limit=limit, cursor=cursor)
        except repository.BadCursor as exc:
            raise HTTPError(
                422,
                "validation_error",
                f"query parameter cursor: {exc}",
                [FieldError("cursor", str(exc))],
            ) from None
    if page is None:
        raise not_found("session")
    rows, next_cursor = page
    await audit(request, "read_tasks", session_id)
    response = json_response(rows)
    if next_cursor is not None:
        # The body stays a plain list (what clients of the unpaged API read); the next page
        # is named in a header (RFC 8288), with the cursor also on its own.
        query = urlencode({"limit": limit, "cursor": next_cursor})
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
        response.headers["Next-Cursor"] = next_cursor
    return response


async def add_metrics(request: Request) -> Response:
    ctx = context(request)
    task_id = parse_uuid(request.path_params["task_id"], "task")
    batch: dict[str, float] = decode_body(
        await read_body(request, ctx.settings.max_body_bytes), MetricsBatch
    )
    async with ctx.sessionmaker() as db:
        session_id = await _session_of_task(request, db, task_id)
        rows = await repository.add_metrics(db, task_id, batch)
    ctx.live.task_results(session_id, task_id, batch)
    return json_response(rows, 201)


async def list_metrics(request: Request) -> Response:
    task_id = parse_uuid(request.path_params["task_id"], "task")
    async with context(request).autocommit.connect() as conn:
        session_id = await _session_of_task(request, conn, task_id)
        rows = await repository.list_metrics(conn, task_id)
    await audit(request, "read_metrics", session_id)
    return json_response(rows)


async def _session_of_task(
    request: Request, conn: AsyncConnection | AsyncSession, task_id: uuid.UUID
) -> uuid.UUID:
    """The task's session, if the task exists (404) and the caller may touch it (403)."""
    session_id = await repository.task_session(conn, task_id)
    if session_id is None:
        raise not_found("task")
    require_session(request, session_id)
    return session_id


OPERATIONS = [
    Operation(
        "POST",
        "/sessions/{session_id}/tasks",
        "create_task",
        "Record a task of a session",
        "tasks",
        create_task,
        TaskOut,
        status=201,
        body=TaskCreate,
        body_example={
            "task_name": "raise_hand",
            "duration_seconds": 15.5,
            "status": "success",
            "metrics": {"accuracy": 0.92},
        },
        params=(uuid_path("session_id", "session"),),
        errors=(404, 409, 413, 422),
        roles=STAFF_AND_MIRROR,
        description="A session has at most `HUB_SESSION_MAX_TASKS` tasks (500) of at most"
        " `HUB_SESSION_MAX_STATE_BYTES` in all, as over the live stream: past them, 409 with"
        " `too_many_tasks` or `session_state_too_large`.",
    ),
    Operation(
        "GET",
        "/sessions/{session_id}/tasks",
        "list_tasks",
        "List a session's tasks, oldest first",
        "tasks",
        list_tasks,
        list[TaskOut],
        params=(
            uuid_path("session_id", "session"),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_TASKS_PAGE}),
            Param("cursor", "query", {"type": "string"}, "`Next-Cursor` of the previous page"),
        ),
        errors=(404, 422, 503),
        roles=STAFF_AND_MIRROR,
        description="Includes the tasks of a live session as its mirror streams them. Pages of"
        f" `limit` tasks ({TASKS_PAGE} by default): when there are more, the answer has a"
        ' `Link: <…?limit=…&cursor=…>; rel="next"` header and the same cursor in'
        " `Next-Cursor`.",
    ),
    Operation(
        "POST",
        "/tasks/{task_id}/metrics",
        "add_metrics",
        "Record a batch of metrics of a task",
        "tasks",
        add_metrics,
        list[MetricOut],
        status=201,
        body=MetricsBatch,
        body_example={"accuracy": 0.92, "stability": 0.85, "max_angle": 170.0},
        params=(uuid_path("task_id", "task"),),
        errors=(404, 413, 422),
        roles=STAFF_AND_MIRROR,
    ),
    Operation(
        "GET",
        "/tasks/{task_id}/metrics",
        "list_metrics",
        "List the metrics of a task",
        "tasks",
        list_metrics,
        list[MetricOut],
        params=(uuid_path("task_id", "task"),),
        errors=(404, 503),
        roles=STAFF_AND_MIRROR,
    ),
]
