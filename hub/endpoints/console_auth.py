"""Console sign-in: a login link or a pasted token opens a console session kept in a cookie.

Only the `/console` routes read the cookie; the API and the WebSockets keep taking Bearer
tokens alone, so a cross-site request can never ride on a therapist's cookie there. The
console's own JavaScript gets a short-lived Bearer token from `POST /console/token` for its
API calls and its WebSocket `hello`.

CSRF: every cookie-authenticated request that changes state or hands out a token is a POST
that must carry the header `X-Mirror-Hub-Console: 1`. A cross-site page cannot send it: a
form cannot set headers, and a cross-origin fetch with a custom header needs a CORS preflight
this hub never approves. As a second line, a present `Origin` must be this hub's own and a
present `Sec-Fetch-Site` must be `same-origin`. The cookie is also SameSite=Strict.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hub.auth import ANONYMOUS_ADMIN, AuthError, Principal
from hub.context import context
from hub.endpoints.bodies import decode_body, read_body
from hub.endpoints.errors import HTTPError, forbidden
from hub.endpoints.responses import json_response
from hub.login_codes import CONSOLE_ROLES, token_expiry, verify_login_code
from hub.storage import console
from hub.storage.audit_log import AuditUnavailable

COOKIE = "hub_console"
COOKIE_PATH = "/console"
CSRF_HEADER = "x-mirror-hub-console"
# The console's Bearer tokens: long enough for a page to connect, short enough that one
# copied out of the browser is soon of no use. The page fetches a new one when it needs it.
PAGE_TOKEN_TTL_S = 300


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    code: str | None = None  # from a login link
    token: str | None = None  # pasted


def check_csrf(request: Request) -> None:
    """403 unless the request comes from the console's own script (see the module doc)."""
    if request.headers.get(CSRF_HEADER) != "1":
        raise forbidden(f"console requests must carry the header {CSRF_HEADER}: 1")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin != own:
        raise forbidden("console requests must come from this hub's own pages")
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        raise forbidden("console requests must come from this hub's own pages")


async def console_principal(conn: HTTPConnection) -> tuple[Principal, datetime] | None:
    """Who is signed in to the console on this request (and until when); None: nobody."""
    ctx = context(conn)
    if ctx.tokens is None:
        return ANONYMOUS_ADMIN, datetime.max.replace(tzinfo=UTC)
    secret = conn.cookies.get(COOKIE)
    if not secret or len(secret) > 100:
        return None
    async with ctx.sessionmaker() as db:
        row = await console.find_session(db, secret)
    if row is None or row.role not in CONSOLE_ROLES:
        return None
    return Principal(row.subject, row.role), row.expires_at


async def _audit(request: Request, principal: Principal, action: str) -> None:
    """Written before the answer (a sign-in nobody can find in the trail did not happen)."""
    try:
        await context(request).audit.record_durably(principal.subject, principal.role, action, None)
    except AuditUnavailable as exc:  # AuditBacklog included
        raise HTTPError(503, "audit_unavailable", str(exc), headers={"Retry-After": "1"}) from None


def _grant(request: Request, body: SignIn) -> tuple[Principal, int, str | None]:
    """The principal, the console session's end (epoch s) and the login code id, if any."""
    tokens = context(request).tokens
    assert tokens is not None
    if (body.code is None) == (body.token is None):
        raise HTTPError(422, "validation_error", "send either a sign-in code or a token")
    try:
        if body.code is not None:
            grant = verify_login_code(tokens, body.code)
            return grant.principal, int(time.time()) + grant.session_ttl_s, grant.code_id
        assert body.token is not None
        principal = tokens.verify(body.token.strip())
    except AuthError as exc:
        raise HTTPError(401, "unauthorized", str(exc)) from None
    if principal.role not in CONSOLE_ROLES:
        raise forbidden(
            f"a {principal.role} token cannot open the console; use a therapist or admin token"
        )
    expiry = token_expiry(body.token.strip())
    assert expiry is not None  # verify() requires `exp`
    return principal, expiry, None


async def sign_in(request: Request) -> Response:
    check_csrf(request)
    ctx = context(request)
    if ctx.tokens is None:
        return json_response({"subject": ANONYMOUS_ADMIN.subject, "role": "admin"})
    body: SignIn = decode_body(await read_body(request, 8192), SignIn)
    principal, until, code_id = _grant(request, body)
    expires_at = datetime.fromtimestamp(until, tz=UTC)
    async with ctx.sessionmaker() as db:
        try:
            secret = await console.open_session(
                db, principal.subject, principal.role, expires_at, login_code=code_id
            )
        except console.CodeUsed:
            raise HTTPError(
                401, "unauthorized", "this sign-in link was used already; ask for a new one"
            ) from None
    await _audit(request, principal, "console_sign_in")
    response = json_response({"subject": principal.subject, "role": principal.role})
    response.set_cookie(
        COOKIE,
        secret,
        max_age=max(1, until - int(time.time())),
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def sign_out(request: Request) -> Response:
    check_csrf(request)
    ctx = context(request)
    signed_in = await console_principal(request)
    secret = request.cookies.get(COOKIE)
    if ctx.tokens is not None and signed_in is not None and secret:
        async with ctx.sessionmaker() as db:
            await console.end_session(db, secret)
        await _audit(request, signed_in[0], "console_sign_out")
    response = Response(status_code=204)
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


async def page_token(request: Request) -> Response:
    """A short-lived Bearer token for the signed-in console's API calls and WebSockets."""
    check_csrf(request)
    signed_in = await console_principal(request)
    if signed_in is None:
        raise HTTPError(401, "unauthorized", "not signed in to the console")
    principal, expires_at = signed_in
    tokens = context(request).tokens
    if tokens is None:
        return json_response({"token": None, "expires_in": None, **_who(principal)})
    ttl = int(min(PAGE_TOKEN_TTL_S, expires_at.timestamp() - time.time()))
    if ttl < 1:
        raise HTTPError(401, "unauthorized", "the console sign-in has expired")
    token = tokens.issue(principal.role, principal.subject, ttl)
    response = json_response({"token": token, "expires_in": ttl, **_who(principal)})
    response.headers["Cache-Control"] = "no-store"
    return response


def _who(principal: Principal) -> dict[str, str]:
    return {"subject": principal.subject, "role": principal.role}


routes: list[BaseRoute] = [
    Route("/console/login", sign_in, methods=["POST"], include_in_schema=False),
    Route("/console/logout", sign_out, methods=["POST"], include_in_schema=False),
    Route("/console/token", page_token, methods=["POST"], include_in_schema=False),
]
