"""Console sign-in links: one-time login codes, and the expiry of a pasted token.

A login code is a JWT signed with the hub's HS256 secret like its tokens, but with its own
audience, so it is refused as a Bearer token (TokenService.verify accepts no `aud`), and it
lives LOGIN_CODE_TTL_S. It is single-use because the console stores its id (`jti`) with the
console session it opened, under a unique constraint (hub/storage/console.py).
"""

from __future__ import annotations

import dataclasses
import secrets
import time

import jwt

from hub.auth import ISSUER, LEEWAY_S, AuthError, Principal, Role, TokenService

LOGIN_AUDIENCE = "mirror-hub-console-login"
LOGIN_CODE_TTL_S = 10 * 60
CONSOLE_ROLES: tuple[Role, ...] = ("admin", "therapist")


@dataclasses.dataclass(frozen=True)
class LoginGrant:
    """What a redeemed login code allows: a console session for this principal, this long.
    `code_id` makes the code single-use (the console stores it with the session it opened)."""

    principal: Principal
    session_ttl_s: int
    code_id: str


def issue_login_code(service: TokenService, role: Role, subject: str, session_ttl_s: int) -> str:
    """A one-time code for `/console/login#code=…`, valid LOGIN_CODE_TTL_S to redeem; the
    console session it opens lasts `session_ttl_s`."""
    if role not in CONSOLE_ROLES:
        raise ValueError("a login link is for the console: role admin or therapist")
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": LOGIN_AUDIENCE,
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + LOGIN_CODE_TTL_S,
        "jti": secrets.token_hex(16),
        "ttl": session_ttl_s,
    }
    return jwt.encode(claims, service.secret, algorithm="HS256")


def verify_login_code(service: TokenService, code: str) -> LoginGrant:
    """The grant of a login code; AuthError if it is not one of ours, expired or malformed.
    Whether it was used already is the console's to check (it keeps the code ids)."""
    try:
        claims = jwt.decode(
            code,
            service.secret,
            algorithms=["HS256"],
            audience=LOGIN_AUDIENCE,
            options={"require": ["exp", "sub", "role", "jti", "ttl"]},
            leeway=LEEWAY_S,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("this sign-in link has expired; ask for a new one") from None
    except jwt.PyJWTError:
        raise AuthError("this is not a valid sign-in link") from None
    role, ttl, jti = claims["role"], claims["ttl"], claims["jti"]
    if role not in CONSOLE_ROLES or not isinstance(ttl, int) or ttl <= 0:
        raise AuthError("this is not a valid sign-in link")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 64:
        raise AuthError("this is not a valid sign-in link")
    return LoginGrant(Principal(str(claims["sub"]), role), ttl, jti)


def token_expiry(token: str) -> int | None:
    """The `exp` of a token that verify() accepted (so it is there and signed)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return int(exp) if isinstance(exp, (int, float)) else None
