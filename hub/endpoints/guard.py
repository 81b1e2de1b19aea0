"""The auth guard: who is calling, and may they call this endpoint for this session."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from hub.auth import ANONYMOUS_ADMIN, AuthError, Principal, Role
from hub.context import context
from hub.endpoints.errors import HTTPError, forbidden
from hub.endpoints.params import parse_uuid


def authenticate(request: Request) -> Principal:
    """The caller's Principal from `Authorization: Bearer …`; 401 without a valid one."""
    tokens = context(request).tokens
    if tokens is None:
        return ANONYMOUS_ADMIN
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("send a credential: Authorization: Bearer <token>")
    try:
        return tokens.verify(token.strip())
    except AuthError as exc:
        raise _unauthorized(str(exc)) from None


def _unauthorized(message: str) -> HTTPError:
    return HTTPError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def require_session(request: Request, session_id: uuid.UUID) -> Principal:
    """403 unless the caller may read this session (staff: any; a mirror: its own)."""
    principal: Principal = request.state.principal
    if not principal.may_read(session_id):
        raise forbidden("this credential is for another session")
    return principal


def guard(
    endpoint: Callable[[Request], Awaitable[Response]], roles: tuple[Role, ...]
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an endpoint: authenticate, check the role, and for a `session_id` in the path,
    the session scope. Endpoints reached through a task check its session themselves."""

    async def guarded(request: Request) -> Response:
        principal = authenticate(request)
        if principal.role not in roles:
            raise forbidden(f"role {principal.role!r} may not do this; needs {' or '.join(roles)}")
        request.state.principal = principal
        raw_session = request.path_params.get("session_id")
        if raw_session is not None:
            require_session(request, parse_uuid(raw_session, "session"))
        return await endpoint(request)

    return guarded
