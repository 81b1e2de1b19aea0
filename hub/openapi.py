"""The OpenAPI 3.1 document, generated from the operations the endpoints declare.

Each endpoint module lists its `Operation`s; the app mounts them as routes
(`hub.endpoints.api`) and hands the same list to `build_openapi`, so the routes and the
document cannot drift apart. This module imports no endpoint: it only describes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

import hub
from hub.auth import Role
from hub.schemas import ErrorBody

REF = "#/components/schemas/{name}"
ERROR_TEXT = {
    401: "No valid credential",
    403: "Credential lacks the role or scope",
    404: "Not found (unknown or malformed id)",
    409: "The session is at one of its limits (`error` says which)",
    413: "Request body too large",
    422: "Validation failed; `fields` names each bad field",
    503: "Database unavailable, or the audit trail too far behind; retry",
}


# A mirror token reaches only its own session (checked per request).
STAFF_AND_MIRROR: tuple[Role, ...] = ("admin", "therapist", "mirror")


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    location: str  # "path" or "query"
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    endpoint: Callable[[Request], Awaitable[Response]]
    response: Any
    status: int = 200
    body: Any = None
    body_example: Any = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    # Other documented answers that carry a body other than ErrorBody: (status, type, text).
    other_responses: tuple[tuple[int, Any, str], ...] = ()
    description: str = ""
    # The success answer's media type (`response` is then its schema: str for text).
    media_type: str = "application/json"
    # Who may call it; None: public (no credential needed).
    roles: tuple[Role, ...] | None = ("admin", "therapist")


def uuid_path(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "string", "format": "uuid"}, f"{what} id", True)


def build_openapi(operations: list[Operation]) -> dict[str, Any]:
    types = {ErrorBody, *(op.response for op in operations)}
    types.update(t for op in operations for _, t, _ in op.other_responses)
    types.update(op.body for op in operations if op.body is not None)
    (schemas, components) = msgspec.json.schema_components(
        sorted(types, key=repr), ref_template=REF
    )
    by_type = dict(zip(sorted(types, key=repr), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": {
                str(op.status): {
                    "description": "Success",
                    "content": {op.media_type: {"schema": by_type[op.response]}},
                }
            },
        }
        description = op.description
        if op.roles is None:
            item["security"] = []
        else:
            description = f"{description}\n\nRoles: {', '.join(op.roles)}.".strip()
        if description:
            item["description"] = description
        if op.params:
            item["parameters"] = [
                {
                    "name": p.name,
                    "in": p.location,
                    "required": p.required,
                    "schema": p.schema,
                    **({"description": p.description} if p.description else {}),
                }
                for p in op.params
            ]
        if op.body is not None:
            media: dict[str, Any] = {"schema": by_type[op.body]}
            if op.body_example is not None:
                media["example"] = op.body_example
            item["requestBody"] = {"required": True, "content": {"application/json": media}}
        errors = op.errors if op.roles is None else (401, 403, *op.errors)
        for code in errors:
            item["responses"][str(code)] = {
                "description": ERROR_TEXT[code],
                "content": {"application/json": {"schema": by_type[ErrorBody]}},
            }
        for code, type_, text in op.other_responses:
            item["responses"][str(code)] = {
                "description": text,
                "content": {"application/json": {"schema": by_type[type_]}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mirror Hub",
            "version": hub.__version__,
            "description": (
                "Session history of virtual-mirror exercise sessions. The live stream runs over "
                "WebSockets (`/ws/sessions/{id}/mirror`, `/ws/sessions/{id}/watch`): see "
                "[the live protocol](/docs/protocol)."
            ),
        },
        "paths": paths,
        "security": [{"bearerAuth": []}],
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A token from `hub token create` or `POST /sessions`",
                }
            },
        },
    }
