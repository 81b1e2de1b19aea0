"""Exports of a session: its frames as CSV (streamed) and its results as a FHIR Bundle."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hub.context import context
from hub.endpoints.audit import audit
from hub.endpoints.errors import not_found
from hub.endpoints.params import parse_uuid
from hub.openapi import Operation, uuid_path
from hub.storage import exports, repository


async def frames_csv(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    ctx = context(request)
    async with ctx.sessionmaker() as db:
        if await repository.get_session(db, session_id) is None:
            raise not_found("session")
    # Audited before the first byte: once the body streams, the status can no longer change.
    await audit(request, "export_csv", session_id)
    return StreamingResponse(
        exports.frames_csv(ctx.engine, session_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="session-{session_id}.csv"'},
    )


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
]
