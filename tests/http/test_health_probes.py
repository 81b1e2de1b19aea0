"""The probes: /health/live never depends on PostgreSQL; /health/ready says whether this node
should get traffic (database answers, schema at the migration head, not draining)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from hub.app import create_app
from hub.settings import Settings
from hub.storage.embedded import start_embedded
from tests.support.database import admin_sql, upgrade
from tests.support.live import TEST_SECRET, HubProcess


async def probe(http: str, path: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{http}{path}", timeout=10)
    body: dict[str, Any] = response.json()
    return response.status_code, body


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_probes_while_postgresql_is_down(
    start_hub: Callable[..., Awaitable[HubProcess]], pg_data_dir: Path
) -> None:
    pg = await asyncio.to_thread(start_embedded, pg_data_dir)
    try:
        engine = create_async_engine(pg.url)
        await upgrade(engine)
        await engine.dispose()
        hub = await start_hub(pg.url)
        assert await probe(hub.http, "/health/live") == (200, {"status": "ok"})
        status, body = await probe(hub.http, "/health/ready")
        assert (status, body["failed"], body["migrations"]) == (200, [], "current")

        await asyncio.to_thread(pg.stop)
        assert await probe(hub.http, "/health/live") == (200, {"status": "ok"})
        status, body = await probe(hub.http, "/health/ready")
        assert status == 503
        assert body["failed"] == ["database"]
        assert body["database"] == "unavailable"

        pg = await asyncio.to_thread(start_embedded, pg_data_dir)
        # The pool reconnects on the next request: ready at once, no waiting period.
        status, body = await probe(hub.http, "/health/ready")
        assert (status, body["failed"]) == (200, [])
    finally:
        await asyncio.to_thread(pg.stop)


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
            yield app, client


async def test_not_ready_before_migrations(server_url: str, tmp_path: Path) -> None:
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        settings = Settings(
            database_url=url,
            data_dir=tmp_path,
            auth_secret=TEST_SECRET,
            allowed_hosts=("hub.test",),
        )
        async with app_client(settings) as (_, client):
            response = await client.get("/health/ready")
            assert response.status_code == 503
            assert response.json()["failed"] == ["migrations"]
            assert response.json()["migrations"] == "not_current"
            engine = create_async_engine(url)
            await upgrade(engine, "188dbe1b7db7")  # the first migration only
            response = await client.get("/health/ready")
            assert response.json()["failed"] == ["migrations"]
            await upgrade(engine)
            await engine.dispose()
            response = await client.get("/health/ready")
            assert response.status_code == 200
            assert response.json() == {
                "status": "ready",
                "database": "ok",
                "migrations": "current",
                "draining": False,
                "failed": [],
            }
    finally:
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_not_ready_while_draining(settings: Settings) -> None:
    async with app_client(settings) as (app, client):
        assert (await client.get("/health/ready")).status_code == 200
        await app.state.hub.live.shutdown()  # what SIGTERM starts
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["failed"] == ["draining"]
        assert (await client.get("/health/live")).status_code == 200
