"""Shared fixtures: one real PostgreSQL database per test run, clean tables per test.

With DATABASE_URL set, the run creates a fresh database on that server (and drops it at the
end); without it, an embedded PostgreSQL is started in a temporary folder. Either way the
schema comes from the Alembic migrations, exactly as in production.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hub.app import create_app
from hub.settings import Settings, normalize_database_url
from tests.support.database import admin_sql, embedded_data_dir, upgrade
from tests.support.live import TEST_SECRET, HubProcess, staff_headers


@pytest.fixture
def pg_data_dir() -> Iterator[Path]:
    with embedded_data_dir() as path:
        yield path


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of an administrative database on the PostgreSQL server the tests use."""
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        yield normalize_database_url(configured)
        return
    from hub.storage.embedded import start_embedded

    with embedded_data_dir() as data_dir:
        embedded = start_embedded(data_dir)
        try:
            yield embedded.url
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database for this test run, migrated to head."""
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = create_async_engine(url)
    try:
        await upgrade(engine)
        await engine.dispose()
        yield url
    finally:
        await engine.dispose()
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(database_url)
    yield eng
    await eng.dispose()


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncEngine:
    """Every test starts from empty tables."""
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE sessions, tasks, metrics, frames, audit_log CASCADE"))
    return engine


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path,
        max_body_bytes=64 * 1024,
        auth_secret=TEST_SECRET,
        # The names the in-process clients use: httpx's base_url below, and "testserver" of
        # Starlette's TestClient (schemathesis' ASGI runs).
        allowed_hosts=("hub.test", "testserver"),
    )


@pytest.fixture
async def client(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """In-process HTTP client with the app's lifespan running (HTTP-layer tests only)."""
    app = create_app(settings)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(
            httpx.AsyncClient(
                transport=transport, base_url="http://hub.test", headers=staff_headers("admin")
            )
        )


@pytest.fixture(scope="module")
async def hub_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HubProcess]:
    """One real hub process (uvicorn on a free port) shared by a test module."""
    server = HubProcess(database_url, tmp_path_factory.mktemp("hub") / "hub.log")
    await server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            await server.stop()


@pytest.fixture
async def start_hub(
    database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[HubProcess]]]:
    """Start dedicated hub processes with extra settings (env vars); all stopped afterwards."""
    started: list[HubProcess] = []

    async def start(url: str | None = None, port: int | None = None, **env: str) -> HubProcess:
        log = tmp_path / f"hub{len(started)}.log"
        server = HubProcess(url or database_url, log, port, **env)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
