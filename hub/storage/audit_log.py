"""The audit trail: who read or watched which session."""

from __future__ import annotations

import uuid

from sqlalchemy import Uuid, bindparam, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from hub.schemas import AuditOut
from hub.storage.models import AuditEntry, Session

AUDIT_COLUMNS = (
    AuditEntry.id,
    AuditEntry.at,
    AuditEntry.actor,
    AuditEntry.role,
    AuditEntry.action,
    AuditEntry.session_id,
)
assert AuditOut.__struct_fields__ == tuple(c.key for c in AUDIT_COLUMNS)


async def record_access(
    db: AsyncSession, actor: str, role: str, action: str, session_id: uuid.UUID | None
) -> bool:
    """Write an audit row; False if the session no longer exists. The row is written only
    under a key-share lock on the session, so an erasure cannot slip between the check and
    the insert and leave a row naming an erased session behind."""
    row = select(literal(actor), literal(role), literal(action), literal(session_id, Uuid))
    if session_id is not None:
        exists = (
            select(Session.id)
            .where(Session.id == session_id)
            .with_for_update(read=True, key_share=True)
        )
        row = row.where(exists.exists())
    result = await db.execute(
        insert(AuditEntry).from_select(["actor", "role", "action", "session_id"], row)
    )
    await db.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_audit(
    conn: AsyncConnection, *, limit: int, session_id: uuid.UUID | None, before_id: int | None
) -> list[AuditOut]:
    query = select(*AUDIT_COLUMNS).order_by(AuditEntry.id.desc()).limit(bindparam("n"))
    if session_id is not None:
        query = query.where(AuditEntry.session_id == session_id)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return [AuditOut(*r) for r in await conn.execute(query, {"n": limit})]
