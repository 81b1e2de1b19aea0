"""The access log: who read which session."""

from __future__ import annotations

import uuid

from starlette.requests import Request

from hub.auth import Principal
from hub.context import context
from hub.endpoints.errors import not_found
from hub.storage import audit_log


async def audit(request: Request, action: str, session_id: uuid.UUID | None) -> None:
    """Record that the caller read `session_id` (or a list, for None)."""
    principal: Principal = request.state.principal
    async with context(request).sessionmaker() as db:
        recorded = await audit_log.record_access(
            db, principal.subject, principal.role, action, session_id
        )
    if not recorded:  # erased while we read it: as if it had never been there
        raise not_found("session")
