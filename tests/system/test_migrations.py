"""Migrations: up, down, up again; the models and the migrations do not drift; the CLIs work."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from hub.storage.models import Base
from tests.support import ROOT
from tests.support.database import admin_sql, upgrade

TABLES = {
    "sessions",
    "tasks",
    "metrics",
    "frames",
    "audit_log",
    "console_sessions",
    "alembic_version",
}


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    name = f"hub_mig_{uuid.uuid4().hex[:12]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_up_down_up_and_no_drift(empty_database: str) -> None:
    engine = create_async_engine(empty_database)
    try:
        await upgrade(engine, "head")
        assert await tables(empty_database) == TABLES

        def downgrade_all(connection: Connection) -> None:
            from alembic import command

            from hub.cli import alembic_config

            config = alembic_config()
            config.attributes["connection"] = connection
            config.attributes["configure_logger"] = False
            command.downgrade(config, "base")

        async with engine.begin() as conn:
            await conn.run_sync(downgrade_all)
        assert await tables(empty_database) == {"alembic_version"}

        await upgrade(engine, "head")

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
            # The schema's own constraints hold whatever path writes the data.
            with pytest.raises(Exception, match="ck_sessions_child_age_range"):
                await conn.execute(
                    text("INSERT INTO sessions (id, child_name, child_age) VALUES (:i, 'x', 99)"),
                    {"i": uuid.uuid4()},
                )
    finally:
        await engine.dispose()


async def test_sessions_recorded_before_the_connection_count_stay_uncounted(
    empty_database: str,
) -> None:
    """The migration adding `mirror_connections` leaves existing rows NULL (their report
    says not counted, not zero) and new sessions start at 0."""
    engine = create_async_engine(empty_database)
    old, new = uuid.uuid4(), uuid.uuid4()
    insert = text("INSERT INTO sessions (id, child_name) VALUES (:i, 'x')")
    count = text("SELECT mirror_connections FROM sessions WHERE id = :i")
    try:
        await upgrade(engine, "7d2e4c9a1f60")
        async with engine.begin() as conn:
            await conn.execute(insert, {"i": old})
        await upgrade(engine, "head")
        async with engine.begin() as conn:
            await conn.execute(insert, {"i": new})
            assert (await conn.execute(count, {"i": old})).scalar_one() is None
            assert (await conn.execute(count, {"i": new})).scalar_one() == 0
    finally:
        await engine.dispose()


def run(args: list[str], url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_alembic_and_hub_db_commands(empty_database: str) -> None:
    alembic = [sys.executable, "-m", "alembic"]
    hub_db = [sys.executable, "-m", "hub", "db"]
    for step in (
        [*alembic, "upgrade", "head"],
        [*alembic, "downgrade", "-1"],
        [*alembic, "upgrade", "head"],
        [*alembic, "check"],
        [*hub_db, "downgrade", "--yes"],
        [*hub_db, "upgrade"],
    ):
        result = run(step, empty_database)
        assert result.returncode == 0, (step, result.stdout, result.stderr)
    current = run([*hub_db, "current"], empty_database)
    history = run([*hub_db, "history"], empty_database)
    assert "(head)" in current.stdout, current
    assert "initial schema" in history.stdout, history
