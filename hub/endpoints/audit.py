"""The access log: who read which session."""

from __future__ import annotations

import uuid

from starlette.requests import Request

from hub.auth import Principal
from hub.context import context
from hub.endpoints.errors import HTTPError
from hub.storage.audit_log import AuditBacklog


async def audit(request: Request, action: str, session_id: uuid.UUID | None) -> None:
    """Record that the caller read `session_id` (or a list, for None), before the answer.

    The row is queued, and written with others in one batch: if the queue stays full the
    read answers 503 and sends nothing (no unaudited reads). A session erased meanwhile gets
    no row: its erasure removes its trail, and the read came before the erasure."""
    principal: Principal = request.state.principal
    try:
        await context(request).audit.record(principal.subject, principal.role, action, session_id)
    except AuditBacklog as exc:
        raise HTTPError(503, "audit_backlog", str(exc), headers={"Retry-After": "1"}) from None
