"""Fixtures of the in-process node tests: nodes on one broker, sessions, a node whose
PostgreSQL goes through a proxy the test can stop."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.live.backplane.base import Backplane
from hub.live.backplane.memory import MemoryBackplane, MemoryBroker
from hub.settings import Settings
from hub.storage.frames import asyncpg_dsn
from tests.support.live import Proxy, pg_proxy
from tests.support.nodes import DrivenBackplane, GatedStore, Node, StartBehindProxy, StartNode


@pytest.fixture
async def start_node(
    settings: Settings, database_url: str, clean_db: AsyncEngine
) -> AsyncIterator[StartNode]:
    broker = MemoryBroker()
    started: list[Node] = []

    async def start(backplane: Backplane | None = None, **overrides: Any) -> Node:
        values: dict[str, Any] = {"backplane_heartbeat_ms": 60_000, **overrides}
        node_settings = dataclasses.replace(settings, **values)
        node = Node(
            node_settings,
            database_url,
            backplane or DrivenBackplane(broker),
            await GatedStore.connect(
                asyncpg_dsn(database_url),
                statement_timeout_s=node_settings.db_statement_timeout_s,
            ),
        )
        await node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        with contextlib.suppress(Exception):
            await node.shutdown()


@pytest.fixture
async def new_session(database_url: str) -> AsyncIterator[Callable[[], Awaitable[uuid.UUID]]]:
    async def create() -> uuid.UUID:
        session_id = uuid.uuid4()
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await conn.execute(
                "INSERT INTO sessions (id, child_name) VALUES ($1, 'Review Child')", session_id
            )
        finally:
            await conn.close()
        return session_id

    yield create


@pytest.fixture
async def node_behind_proxy(
    settings: Settings, database_url: str, clean_db: AsyncEngine
) -> AsyncIterator[StartBehindProxy]:
    """Starts a node on the same broker as a given node, whose PostgreSQL goes through a
    proxy the test can stop (that node's storage is down; the backplane is not)."""
    started: list[tuple[Node, Proxy]] = []

    async def start(peer: Node, **overrides: int) -> tuple[Node, Proxy]:
        proxy, dsn = pg_proxy(database_url)
        await proxy.start()
        backplane = peer.cluster.backplane
        assert isinstance(backplane, MemoryBackplane)
        values: dict[str, Any] = {"backplane_heartbeat_ms": 60_000, **overrides}
        node_settings = dataclasses.replace(settings, **values)
        node = Node(
            node_settings,
            dsn(),
            DrivenBackplane(backplane.broker),
            await GatedStore.connect(
                asyncpg_dsn(dsn()), statement_timeout_s=node_settings.db_statement_timeout_s
            ),
        )
        await node.start()
        started.append((node, proxy))
        return node, proxy

    yield start
    for node, proxy in started:
        if not proxy.running:
            await proxy.start()  # storage back, so the node can shut down cleanly
        with contextlib.suppress(Exception):
            await node.shutdown()
        await proxy.stop()
