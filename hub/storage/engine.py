"""Async engine and session factory; `init_db` creates tables without Alembic (quick start)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hub.storage.models import Base


def make_engine(
    database_url: str, *, pool_size: int = 10, timeout_s: float | None = None
) -> AsyncEngine:
    """`timeout_s` bounds each connect and each statement (the pre-ping included) on the
    client side: a database that stops answering (a partition, a stalled disk) raises
    TimeoutError instead of holding the caller until it answers. None waits for ever (the
    CLI's one-off schema work)."""
    connect_args = {} if timeout_s is None else {"timeout": timeout_s, "command_timeout": timeout_s}
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
        # Children's data must not end up in logs through echoed SQL parameters.
        echo=False,
        hide_parameters=True,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def init_db(engine: AsyncEngine) -> None:
    """Create all tables directly from the models (no migration history is recorded)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
