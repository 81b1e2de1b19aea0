"""Session history: create, read, list (newest first, cursor pagination), metric series."""

from __future__ import annotations

import re

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from hub.context import context
from hub.endpoints.audit import audit
from hub.endpoints.bodies import decode_body, read_body
from hub.endpoints.errors import HTTPError, not_found
from hub.endpoints.params import bad_query, parse_uuid, query_int, query_time
from hub.endpoints.responses import json_response
from hub.openapi import STAFF_AND_MIRROR, Operation, Param, uuid_path
from hub.schemas import (
    CHILD_REF_PATTERN,
    METRIC_NAME_PATTERN,
    SeriesOut,
    SessionCreate,
    SessionCreated,
    SessionOut,
    SessionPage,
)
from hub.storage import repository, series

MAX_PAGE = 200
METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
MAX_POINTS = 10_000
CHILD_REF = re.compile(CHILD_REF_PATTERN)


async def create_session(request: Request) -> Response:
    ctx = context(request)
    data: SessionCreate = decode_body(
        await read_body(request, ctx.settings.max_body_bytes), SessionCreate
    )
    async with ctx.sessionmaker() as db:
        row = await repository.create_session(db, data)
    mirror_token = None
    if ctx.tokens is not None:
        mirror_token = ctx.tokens.issue(
            "mirror", f"mirror:{row.id}", ctx.settings.mirror_token_ttl_s, session_id=row.id
        )
    created = SessionCreated(**msgspec.structs.asdict(row), mirror_token=mirror_token)
    return json_response(created, 201)


async def get_session(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    async with context(request).autocommit.connect() as conn:
        row = await repository.get_session(conn, session_id)
    if row is None:
        raise not_found("session")
    await audit(request, "read_session", session_id)
    return json_response(row)


async def list_sessions(request: Request) -> Response:
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    after = query_time(request, "created_after")
    before = query_time(request, "created_before")
    cursor = request.query_params.get("cursor")
    child_ref = request.query_params.get("child_ref")
    if child_ref is not None and (len(child_ref) > 64 or not CHILD_REF.fullmatch(child_ref)):
        raise bad_query("child_ref", "must be a child reference such as child-0042")
    async with context(request).autocommit.connect() as conn:
        try:
            rows, next_cursor = await repository.list_sessions(
                conn,
                limit=limit,
                cursor=cursor,
                created_after=after,
                created_before=before,
                child_ref=child_ref,
            )
        except repository.BadCursor as exc:
            raise bad_query("cursor", str(exc)) from None
    await audit(request, "list_sessions", None)
    return json_response(SessionPage(items=rows, next_cursor=next_cursor))


async def metric_series(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    metric = request.query_params.get("metric", "")
    if len(metric) > 100 or not METRIC_NAME.fullmatch(metric):
        raise bad_query("metric", "is required: a metric name such as accuracy")
    bucket_ms = query_int(request, "bucket_ms", 0, 0, 86_400_000) or None
    limit = query_int(request, "limit", MAX_POINTS, 1, MAX_POINTS)
    since, until = query_time(request, "since"), query_time(request, "until")
    async with context(request).autocommit.connect() as conn:
        try:
            points = await series.metric_series(
                conn, session_id, metric, since=since, until=until, bucket_ms=bucket_ms, limit=limit
            )
        except series.UnknownMetric as exc:
            # The answer names the session's metrics: a read like any other.
            await audit(request, "read_series", session_id)
            known = ", ".join(exc.known) if exc.known else "none yet"
            raise HTTPError(
                404, "not_found", f"this session has no metric {metric!r}; it has: {known}"
            ) from None
    if points is None:
        raise not_found("session")
    await audit(request, "read_series", session_id)
    return json_response(
        SeriesOut(session_id=session_id, metric=metric, bucket_ms=bucket_ms, points=points)
    )


_TIME = {"type": "string", "format": "date-time"}

OPERATIONS = [
    Operation(
        "POST",
        "/sessions",
        "create_session",
        "Create a session for a child",
        "sessions",
        create_session,
        SessionCreated,
        status=201,
        body=SessionCreate,
        body_example={
            "child_name": "Alice",
            "child_age": 7,
            "child_height_cm": 122.5,
            "child_weight_kg": 24.0,
            "child_ref": "child-0042",
        },
        errors=(413, 422),
    ),
    Operation(
        "GET",
        "/sessions",
        "list_sessions",
        "List sessions, newest first",
        "sessions",
        list_sessions,
        SessionPage,
        params=(
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
            Param("cursor", "query", {"type": "string"}, "`next_cursor` of the previous page"),
            Param("created_after", "query", _TIME, "only sessions created at or after this"),
            Param("created_before", "query", _TIME, "only sessions created before this"),
            Param(
                "child_ref",
                "query",
                {"type": "string", "maxLength": 64, "pattern": CHILD_REF_PATTERN},
                "only the sessions of this child (its `child_ref`)",
            ),
        ),
        errors=(422, 503),
    ),
    Operation(
        "GET",
        "/sessions/{session_id}",
        "get_session",
        "Read one session",
        "sessions",
        get_session,
        SessionOut,
        params=(uuid_path("session_id", "session"),),
        errors=(404, 503),
        roles=STAFF_AND_MIRROR,
    ),
    Operation(
        "GET",
        "/sessions/{session_id}/series",
        "metric_series",
        "One metric of a session over time",
        "sessions",
        metric_series,
        SeriesOut,
        params=(
            uuid_path("session_id", "session"),
            Param(
                "metric",
                "query",
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 100,
                    "pattern": METRIC_NAME_PATTERN,
                },
                "metric name, e.g. accuracy",
                True,
            ),
            Param("since", "query", _TIME, "from this hub time (inclusive)"),
            Param("until", "query", _TIME, "to this hub time (exclusive)"),
            Param(
                "bucket_ms",
                "query",
                {"type": "integer", "minimum": 0, "maximum": 86_400_000},
                "average over buckets of this many milliseconds (0: every frame)",
            ),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_POINTS}),
        ),
        errors=(404, 422, 503),
        description=(
            "One series from both sources of a session's metrics: the metric frames the mirror "
            "streamed (`seq` set) and the task results recorded with `POST "
            "/tasks/{task_id}/metrics` or by a finished task frame (`seq` null). 404 for a "
            "metric the session never had; the message names those it has."
        ),
    ),
]
