"""Alembic environment (async): the URL comes from the hub's settings, embedded PG included.

Callers that already hold a connection (the test suite) pass it in
`config.attributes["connection"]`; otherwise a short-lived async engine is made here.

Logging: the `alembic` command configures it from alembic.ini's sections. The hub's own
commands (`hub serve`, `hub db …`) have configured it already (hub/logs.py) and build their
Config without a file, so fileConfig is skipped: it would replace the hub's configuration,
raise the root logger to WARNING and add a second line format.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from hub.settings import Settings
from hub.storage.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Several hubs started at once on one database (machines behind a balancer, `hub db upgrade`
# beside `hub serve`) each run the migrations: one at a time, each after the last committed,
# so that the later ones find the database at head instead of failing halfway through.
MIGRATION_LOCK_KEY = 0x6D6972726F72  # "mirror": any constant the hub uses for nothing else


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=target_metadata, compare_server_default=True
    )
    with context.begin_transaction():
        # Held until this transaction ends (migrations are one transaction in PostgreSQL).
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    # asyncpg waits 60 s for a connection by default; an unreachable server should be said
    # sooner (hub.cli_errors explains the error).
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args={"timeout": 10})
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
        return
    settings = Settings.from_env()
    if settings.database_url is not None:
        asyncio.run(run_async_migrations(settings.database_url))
        return
    from hub.storage.embedded import start_embedded

    embedded = start_embedded(settings.data_dir)
    try:
        asyncio.run(run_async_migrations(embedded.url))
    finally:
        embedded.stop()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
