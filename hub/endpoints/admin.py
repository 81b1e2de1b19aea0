"""Admin only: the audit trail, and erasure of a session with everything of it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from hub.auth import Principal
from hub.context import context
from hub.endpoints.errors import not_found
from hub.endpoints.params import parse_uuid, query_int
from hub.endpoints.responses import json_response
from hub.openapi import Operation, Param, uuid_path
from hub.schemas import AuditPage, Deleted
from hub.storage import audit_log, repository

MAX_PAGE = 500


async def list_audit(request: Request) -> Response:
    limit = query_int(request, "limit", 100, 1, MAX_PAGE)
    before_id = query_int(request, "before_id", 0, 1, 2**62) or None
    raw_session = request.query_params.get("session_id")
    session_id = parse_uuid(raw_session, "session") if raw_session else None
    ctx = context(request)
    await ctx.audit.flush()  # the caller sees every read answered before this one
    async with ctx.autocommit.connect() as conn:
        items = await audit_log.list_audit(
            conn, limit=limit, session_id=session_id, before_id=before_id
        )
    next_before = items[-1].id if len(items) == limit else None
    return json_response(AuditPage(items=items, next_before_id=next_before))


async def delete_session(request: Request) -> Response:
    ctx = context(request)
    session_id = parse_uuid(request.path_params["session_id"], "session")
    # The rows go first, in one transaction. Only once that committed are the live clients
    # told 4004 ("never come back"): if storage fails, nothing changed, the answer is 503 and
    # the mirror goes on streaming. Frames it sends between the commit and the close fail
    # their foreign key when flushed and are dropped with the session.
    async with ctx.sessionmaker() as db:
        existed = await repository.erase_session(db, session_id)
    if not existed:
        raise not_found("session")
    ctx.live.erase(session_id)  # here and, through the backplane, on every node
    # The erasure itself is audited, without naming the session (nothing of it may remain).
    principal: Principal = request.state.principal
    await ctx.audit.record_durably(principal.subject, principal.role, "erase_session", None)
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
        errors=(404, 422, 503),
        roles=("admin",),
        description="Reads answered before this one are in it: the audit trail is written in"
        " batches, and this read waits for the rows still queued.",
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
        errors=(404, 503),
        roles=("admin",),
        description="Once the erasure is committed, the session's live clients are closed "
        "with close code 4004. While the database is unavailable the answer is 503 and "
        "nothing changes.",
    ),
]
