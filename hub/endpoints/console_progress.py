"""A child's progress across visits (GET /children/{child_ref}/progress), for the console's
progress page: per exercise, each metric's session mean."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hub.context import context
from hub.endpoints.audit import audit
from hub.endpoints.errors import not_found
from hub.endpoints.params import bad_query
from hub.endpoints.responses import json_response
from hub.endpoints.sessions import CHILD_REF
from hub.openapi import Operation, Param
from hub.schemas import CHILD_REF_PATTERN, ChildProgress
from hub.storage import progress


async def child_progress(request: Request) -> Response:
    child_ref = request.path_params["child_ref"]
    if len(child_ref) > 64 or not CHILD_REF.fullmatch(child_ref):
        raise bad_query("child_ref", "must be a child reference such as child-0042")
    async with context(request).sessionmaker() as db:
        found = await progress.child_progress(db, child_ref)
    if found is None:
        raise not_found("child")
    # The child's sessions were read: one audit row for the list, like GET /sessions.
    await audit(request, "read_progress", None)
    return json_response(found)


OPERATIONS = [
    Operation(
        "GET",
        "/children/{child_ref}/progress",
        "child_progress",
        "A child's progress: each metric's session mean per exercise, visit by visit",
        "reports",
        child_progress,
        ChildProgress,
        params=(
            Param(
                "child_ref",
                "path",
                {"type": "string", "maxLength": 64, "pattern": CHILD_REF_PATTERN},
                "the child's pseudonymous reference (`child_ref` of its sessions)",
                True,
            ),
        ),
        errors=(404, 422),
        description=(
            "Over the metric frames of the child's newest 100 sessions, grouped by session, "
            "exercise (task name) and metric, oldest visit first; `sessions` counts all of "
            "the child's sessions. 404 when no session has this `child_ref`."
        ),
    ),
]
