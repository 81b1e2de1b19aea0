"""Backplanes between hub nodes: memory (one process), PostgreSQL LISTEN/NOTIFY, Redis."""

from __future__ import annotations

from hub.live.backplane.base import Backplane
from hub.live.backplane.memory import MemoryBackplane
from hub.settings import Settings


def make_backplane(settings: Settings, dsn: str) -> Backplane:
    """The backplane `HUB_BACKPLANE` names; `dsn` is the hub's PostgreSQL (asyncpg form)."""
    kind = settings.backplane_kind
    if kind == "postgres":
        from hub.live.backplane.postgres import PostgresBackplane

        return PostgresBackplane(dsn)
    if kind == "redis":
        from hub.live.backplane.redis import RedisBackplane

        return RedisBackplane(settings.backplane)
    return MemoryBackplane()
