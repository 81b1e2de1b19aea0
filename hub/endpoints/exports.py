"""Exports of a session: its frames as CSV (streamed) and its results as a FHIR Bundle."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hub import fhir
from hub.context import context
from hub.endpoints.audit import audit
from hub.endpoints.errors import not_found
from hub.endpoints.params import bad_query, parse_uuid
from hub.openapi import Operation, Param, uuid_path
from hub.storage import exports, reports, repository


async def frames_csv(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    ctx = context(request)
    async with ctx.autocommit.connect() as conn:
        if await repository.get_session(conn, session_id) is None:
            raise not_found("session")
    # Audited before the first byte: once the body streams, the status can no longer change.
    await audit(request, "export_csv", session_id)
    return StreamingResponse(
        exports.frames_csv(ctx.engine, session_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="session-{session_id}.csv"'},
    )


async def session_fhir(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    raw = request.query_params.get("include_name", "false")
    if raw not in ("true", "false"):
        raise bad_query("include_name", "must be true or false")
    ctx = context(request)
    async with ctx.sessionmaker() as db:
        report = await reports.session_report(db, session_id)
    child_name = None
    if report is not None and raw == "true":
        async with ctx.autocommit.connect() as conn:
            row = await repository.get_session(conn, session_id)
        child_name = row.child_name if row is not None else None
    if report is None:
        raise not_found("session")
    await audit(request, "export_fhir", session_id)
    body = fhir.bundle(report, ctx.catalogue, child_name)
    return Response(orjson.dumps(body), media_type="application/fhir+json")


OPERATIONS = [
    Operation(
        "GET",
        "/sessions/{session_id}/frames.csv",
        "frames_csv",
        "Every stored frame value of a session as CSV",
        "exports",
        frames_csv,
        str,
        params=(uuid_path("session_id", "session"),),
        errors=(404,),
        media_type="text/csv",
        description=(
            "Long format, UTF-8, with a header line: one row per stored value (`seq`, `kind`, "
            "`device_ts` (seconds since the epoch, the mirror's clock), `received_at` (the "
            "hub's clock, UTC), `task_id`, `task_name`, `event`, `status`, `metric`, `value`), "
            "in seq order. A task frame without result metrics has one row with `metric` and "
            "`value` empty, so every stored frame appears. Streamed from the database: any "
            "length of session in bounded memory."
        ),
    ),
    Operation(
        "GET",
        "/sessions/{session_id}/fhir",
        "session_fhir",
        "A session's task results as an HL7 FHIR R4 Bundle",
        "exports",
        session_fhir,
        dict[str, Any],
        params=(
            uuid_path("session_id", "session"),
            Param(
                "include_name",
                "query",
                {"type": "string", "enum": ["true", "false"]},
                "true: name the child (the subject's display); by default only `child_ref`",
            ),
        ),
        errors=(404, 422),
        media_type="application/fhir+json",
        description=(
            "A Bundle of type `collection`: one Observation per finished task (code: the task "
            "name; effectivePeriod: the device times of its first and last frame; components: "
            "its outcome, duration, and per metric the mean of its metric frames in the "
            "catalogue's UCUM unit, with the good range as reference range). The subject is "
            "the session's `child_ref` as an identifier, without the child's name unless "
            "`include_name=true`."
        ),
    ),
]
