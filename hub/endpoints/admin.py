"""Admin only: the audit trail, and erasure of a session with everything of it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hub.auth import Principal
from hub.context import context
from hub.endpoints.common import json_response, not_found, parse_uuid
from hub.endpoints.sessions import query_int
from hub.openapi import Operation, Param, uuid_path
from hub.schemas import AuditOut, AuditPage, Deleted
from hub.storage import repository

MAX_PAGE = 500


async def list_audit(request: Request) -> Response:
    limit = query_int(request, "limit", 100, 1, MAX_PAGE)
    before_id = query_int(request, "before_id", 0, 1, 2**62) or None
    raw_session = request.query_params.get("session_id")
    session_id = parse_uuid(raw_session, "session") if raw_session else None
    async with context(request).sessionmaker() as db:
        rows = await repository.list_audit(
            db, limit=limit, session_id=session_id, before_id=before_id
        )
    items = [
        AuditOut(
            id=r.id, at=r.at, actor=r.actor, role=r.role, action=r.action, session_id=r.session_id
        )
        for r in rows
    ]
    next_before = items[-1].id if len(items) == limit else None
    return json_response(AuditPage(items=items, next_before_id=next_before))


async def delete_session(request: Request) -> Response:
    ctx = context(request)
    session_id = parse_uuid(request.path_params["session_id"], "session")
    # Close the live session first, so no mirror can write to it while it is erased.
    ctx.live.erase(session_id)
    try:
        async with ctx.sessionmaker() as db:
            existed = await repository.erase_session(db, session_id)
    except Exception:
        ctx.live.erased.discard(session_id)  # still there: usable again
        raise
    if not existed:
        raise not_found("session")
    # The erasure itself is audited, without naming the session (nothing of it may remain).
    principal: Principal = request.state.principal
    async with ctx.sessionmaker() as db:
        await repository.record_access(db, principal.subject, principal.role, "erase_session", None)
    return json_response(Deleted(deleted=session_id))


OPERATIONS = [
    Operation(
        "GET",
        "/audit",
        "list_audit",
        "Who read or watched which session, newest first",
        "admin",
        list_audit,
        AuditPage,
        params=(
            Param("session_id", "query", {"type": "string", "format": "uuid"}, "only this one"),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
            Param(
                "before_id",
                "query",
                {"type": "integer", "minimum": 1},
                "`next_before_id` of the previous page",
            ),
        ),
        errors=(404, 422),
        roles=("admin",),
    ),
    Operation(
        "DELETE",
        "/sessions/{session_id}",
        "delete_session",
        "Erase a session with its tasks, metrics, frames and audit trail",
        "admin",
        delete_session,
        Deleted,
        params=(uuid_path("session_id", "session"),),
        errors=(404,),
        roles=("admin",),
        description="A live session is closed first (its clients get close code 4004).",
    ),
]
