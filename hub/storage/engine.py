"""Async engines and session factory; `init_db` creates tables without Alembic (quick start)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hub.storage.models import Base


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    timeout_s: float | None = None,
    autocommit: bool = False,
) -> AsyncEngine:
    """`timeout_s` bounds each connect and each statement (the pre-ping included) on the
    client side: a database that stops answering (a partition, a stalled disk) raises
    TimeoutError instead of holding the caller until it answers. None waits for ever (the
    CLI's one-off schema work).

    `autocommit`: for reads of one statement, which need no transaction. Each statement is
    then one round trip, and so is the pre-ping (in a transaction it is BEGIN, ping,
    ROLLBACK). The pool never overflows: past `pool_size` busy connections a request waits
    for one, rather than opening (TLS attempt, backend fork) and closing one per request
    under a burst, which costs both processes more than the wait."""
    connect_args = {} if timeout_s is None else {"timeout": timeout_s, "command_timeout": timeout_s}
    extra: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        connect_args=connect_args,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        # Children's data must not end up in logs through echoed SQL parameters.
        echo=False,
        hide_parameters=True,
        **extra,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def init_db(engine: AsyncEngine) -> None:
    """Create all tables directly from the models (no migration history is recorded)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
