"""Console sign-ins: open one (from a login code or a pasted token), look one up, end one.

The cookie holds a random secret; only its SHA-256 is stored, and every lookup checks the
expiry and the sign-out, so ending a sign-in here ends it on every worker at once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from hub.storage.models import ConsoleSession


class CodeUsed(Exception):
    """The login code opened a console session already: each code is good once."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def open_session(
    db: AsyncSession,
    subject: str,
    role: str,
    expires_at: datetime,
    login_code: str | None = None,
) -> str:
    """A new console session; returns the cookie secret (shown to the browser only)."""
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    # Expired sign-ins are of no use to anyone: cleared as new ones come.
    await db.execute(
        delete(ConsoleSession).where(ConsoleSession.expires_at < now - timedelta(days=1))
    )
    inserted = await db.execute(
        insert(ConsoleSession)
        .values(
            id=_digest(secret),
            subject=subject,
            role=role,
            login_code=login_code,
            expires_at=expires_at,
        )
        .on_conflict_do_nothing(index_elements=[ConsoleSession.login_code])
        .returning(ConsoleSession.id)
    )
    if inserted.first() is None:
        await db.rollback()
        raise CodeUsed
    await db.commit()
    return secret


async def find_session(db: AsyncSession, secret: str) -> ConsoleSession | None:
    """The console session of this cookie secret, if it is signed in and not expired."""
    row = await db.scalar(
        select(ConsoleSession).where(
            ConsoleSession.id == _digest(secret),
            ConsoleSession.ended_at.is_(None),
            ConsoleSession.expires_at > datetime.now(UTC),
        )
    )
    return row


async def end_session(db: AsyncSession, secret: str) -> bool:
    """Sign out: the cookie secret opens nothing from now on. False if it was not signed in."""
    result = await db.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == _digest(secret), ConsoleSession.ended_at.is_(None))
        .values(ended_at=datetime.now(UTC))
    )
    await db.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
