"""The test run's PostgreSQL: embedded data folders, administrative statements, migrations."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hub.cli import alembic_config


@contextlib.contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A data folder for an embedded PostgreSQL, outside pytest's tmp tree: as root the server
    runs as its own system user, which must traverse every parent folder, and pytest resets
    its tmp root to 0700 whenever another pytest process starts."""
    path = Path(tempfile.mkdtemp(prefix="hub-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def admin_sql(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    def run(connection: object) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        config.attributes["configure_logger"] = False
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)
