"""Liveness and database reachability."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

import hub
from hub.context import context
from hub.endpoints.common import json_response
from hub.openapi import Operation
from hub.schemas import Health

DB_CHECK_TIMEOUT_S = 2.0
log = logging.getLogger("hub.health")


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
]
