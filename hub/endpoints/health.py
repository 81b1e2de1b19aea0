"""Health: `/health` (the report), `/health/live` and `/health/ready` (the probes).

Liveness says the process serves HTTP; it never looks at PostgreSQL, so an orchestrator does
not restart hubs that are only waiting for their database (they keep streaming meanwhile).
Readiness says this node should get new traffic: the database answers, its schema is at the
migration head this code expects, and the node is not draining after SIGTERM. Both are cheap
enough to be polled every second: one short query with a timeout, the head read once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Literal

import sqlalchemy.exc
from alembic.script import ScriptDirectory
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

import hub
from hub.context import context
from hub.endpoints.responses import json_response
from hub.openapi import Operation
from hub.schemas import Health, Liveness, Readiness

DB_CHECK_TIMEOUT_S = 2.0
READY_DB_TIMEOUT_S = 1.0
log = logging.getLogger("hub.health")
# Databases found at the migration head; migrations only move forward while a hub runs.
_current: set[str] = set()


async def health(request: Request) -> Response:
    ctx = context(request)
    try:
        async with asyncio.timeout(DB_CHECK_TIMEOUT_S), ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        database_ok = True
    except Exception as exc:  # any failure to answer means "unavailable"
        log.warning("health check: database unavailable: %s", type(exc).__name__)
        database_ok = False
    body = Health(
        status="ok" if database_ok else "degraded",
        database="ok" if database_ok else "unavailable",
        version=hub.__version__,
        auth="disabled" if ctx.tokens is None else "enabled",
        live=ctx.live.stats(),
    )
    return json_response(body, 200 if database_ok else 503)


async def live(request: Request) -> Response:
    return json_response(Liveness(status="ok"))


@functools.cache
def migration_head() -> str | None:
    """The newest migration this code ships (read from the scripts once per process)."""
    from hub.cli import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def ready(request: Request) -> Response:
    ctx = context(request)
    key = ctx.engine.url.render_as_string()
    database: Literal["ok", "unavailable"] = "unavailable"
    migrations: Literal["current", "not_current", "unknown"] = (
        "current" if key in _current else "unknown"
    )
    try:
        async with asyncio.timeout(READY_DB_TIMEOUT_S), ctx.engine.connect() as conn:
            if key in _current:
                await conn.execute(text("SELECT 1"))
            else:
                try:
                    version = (
                        await conn.execute(text("SELECT version_num FROM alembic_version"))
                    ).scalar()
                except sqlalchemy.exc.ProgrammingError:  # no alembic_version: never migrated
                    version = None
                migrations = "current" if version == migration_head() else "not_current"
        database = "ok"
    except Exception as exc:  # any failure to answer in time means "unavailable"
        log.warning("readiness check: database unavailable: %s", type(exc).__name__)
    if migrations == "current":
        _current.add(key)
    draining = not ctx.live.accepting
    failed = [
        name
        for name, bad in (
            ("database", database != "ok"),
            ("migrations", migrations == "not_current"),  # unknown: the database failed
            ("draining", draining),
        )
        if bad
    ]
    body = Readiness(
        status="not_ready" if failed else "ready",
        database=database,
        migrations=migrations,
        draining=draining,
        failed=failed,
    )
    return json_response(body, 503 if failed else 200)


OPERATIONS = [
    Operation(
        "GET",
        "/health",
        "health",
        "Is the hub up and does the database answer?",
        "health",
        health,
        Health,
        other_responses=((503, Health, "The database does not answer"),),
        roles=None,
    ),
    Operation(
        "GET",
        "/health/live",
        "health_live",
        "Liveness probe: the process serves",
        "health",
        live,
        Liveness,
        roles=None,
        description="Never looks at PostgreSQL: a hub waiting for its database is alive.",
    ),
    Operation(
        "GET",
        "/health/ready",
        "health_ready",
        "Readiness probe: send this node traffic?",
        "health",
        ready,
        Readiness,
        other_responses=((503, Readiness, "Not ready; `failed` names the checks that failed"),),
        roles=None,
        description=(
            "Ready when the database answers within a second, its schema is at the migration "
            "head of this version, and the node is not draining after SIGTERM."
        ),
    ),
]
