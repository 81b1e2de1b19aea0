"""Async engines and session factory; `init_db` creates tables without Alembic (quick start)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hub.storage.models import Base

# A pooled connection unused for longer than this is pinged before it is handed out.
IDLE_PING_S = 1.0


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a connection on checkout only if it sat in the pool for IDLE_PING_S: a dead one
    (the server restarted, a proxy dropped it) is replaced before a request uses it, as
    with `pool_pre_ping`, but a busy pool does not pay a round trip per checkout (three
    outside autocommit: BEGIN, ping, ROLLBACK)."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "connect")
    def connected(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkin")
    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if time.monotonic() - record.info.get("idle_since", 0.0) < IDLE_PING_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            error = DisconnectionError(f"ping failed: {type(exc).__name__}")
            error.invalidate_pool = True  # the others are likely just as dead
            raise error from exc


def make_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    timeout_s: float | None = None,
    autocommit: bool = False,
) -> AsyncEngine:
    """`timeout_s` bounds each connect and each statement (the ping included) on the
    client side: a database that stops answering (a partition, a stalled disk) raises
    TimeoutError instead of holding the caller until it answers. None waits for ever (the
    CLI's one-off schema work).

    `autocommit`: for reads of one statement, which need no transaction. Each statement is
    then one round trip, and so is the idle ping (in a transaction it is BEGIN, ping,
    ROLLBACK). The pool never overflows: past `pool_size` busy connections a request waits
    for one, rather than opening (TLS attempt, backend fork) and closing one per request
    under a burst, which costs both processes more than the wait."""
    connect_args = {} if timeout_s is None else {"timeout": timeout_s, "command_timeout": timeout_s}
    extra: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args=connect_args,
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
        # Children's data must not end up in logs through echoed SQL parameters.
        echo=False,
        hide_parameters=True,
        **extra,
    )
    _ping_when_idle(engine)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def init_db(engine: AsyncEngine) -> None:
    """Create all tables directly from the models (no migration history is recorded)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
