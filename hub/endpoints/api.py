"""The HTTP API: every documented operation, and the routes the app mounts for them."""

from __future__ import annotations

from starlette.routing import Route

from hub.endpoints import (
    admin,
    catalogue,
    console_progress,
    exports,
    health,
    reports,
    sessions,
    tasks,
)
from hub.endpoints.guard import guard
from hub.openapi import Operation

# In the order of the OpenAPI document.
OPERATIONS: list[Operation] = [
    *sessions.OPERATIONS,
    *tasks.OPERATIONS,
    *reports.OPERATIONS,
    *console_progress.OPERATIONS,
    *exports.OPERATIONS,
    *catalogue.OPERATIONS,
    *admin.OPERATIONS,
    *health.OPERATIONS,
]


def route(op: Operation) -> Route:
    """The route for one operation, behind the auth guard unless it is public."""
    endpoint = op.endpoint if op.roles is None else guard(op.endpoint, op.roles)
    return Route(op.path, endpoint, methods=[op.method], name=op.operation_id)


def routes() -> list[Route]:
    return [route(op) for op in OPERATIONS]
