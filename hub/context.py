"""The objects the app's lifespan builds, shared by every endpoint through `app.state.hub`."""

from __future__ import annotations

import dataclasses

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from hub.auth import TokenService
from hub.catalogue import DEFAULTS
from hub.live.node import LiveHub
from hub.schemas import Catalogue
from hub.settings import Settings
from hub.storage.audit_log import AuditLog


@dataclasses.dataclass
class HubContext:
    settings: Settings
    engine: AsyncEngine  # writes: a transaction each (through `sessionmaker`)
    sessionmaker: async_sessionmaker[AsyncSession]
    # History reads and one-statement writes: no BEGIN/COMMIT, one round trip per statement.
    autocommit: AsyncEngine
    live: LiveHub
    audit: AuditLog  # the audit trail's batched writer
    tokens: TokenService | None  # None: authentication switched off (development only)
    catalogue: Catalogue = dataclasses.field(default_factory=lambda: Catalogue(dict(DEFAULTS)))


def context(conn: HTTPConnection) -> HubContext:
    ctx: HubContext = conn.app.state.hub
    return ctx
