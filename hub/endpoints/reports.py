"""A session's report: per task results and the stream's completeness (JSON)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hub.context import context
from hub.endpoints.audit import audit
from hub.endpoints.errors import not_found
from hub.endpoints.params import parse_uuid
from hub.endpoints.responses import json_response
from hub.openapi import Operation, uuid_path
from hub.schemas import SessionReport
from hub.storage import reports


async def session_report(request: Request) -> Response:
    session_id = parse_uuid(request.path_params["session_id"], "session")
    async with context(request).sessionmaker() as db:
        report = await reports.session_report(db, session_id)
    if report is None:
        raise not_found("session")
    await audit(request, "read_report", session_id)
    return json_response(report)


OPERATIONS = [
    Operation(
        "GET",
        "/sessions/{session_id}/report",
        "session_report",
        "A session's report: per task results and completeness",
        "reports",
        session_report,
        SessionReport,
        params=(uuid_path("session_id", "session"),),
        errors=(404,),
        description=(
            "Computed from the stored frames in one consistent snapshot. Per task: status, "
            "recorded duration, the device times of its first and last frame, and for each "
            "metric its count, min, mean, max and last value over the metric frames. "
            "Completeness: frames stored, the seq range and the seqs missing from it."
        ),
    ),
]
