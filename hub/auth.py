"""Credentials: signed, expiring tokens with a role, a subject and (for mirrors) one session.

Tokens are JWTs (PyJWT). The hub signs its own with HS256 and a secret; a clinic's identity
provider can sign instead with RS256/ES256 and the hub verifies with its public key
(HUB_AUTH_PUBLIC_KEY_FILE). Verification always pins the algorithms, so `alg: none` and
algorithm-confusion tokens are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal, get_args

import jwt

from hub.settings import Settings

Role = Literal["admin", "therapist", "mirror"]
ROLES: tuple[Role, ...] = get_args(Role)
ISSUER = "mirror-hub"
SECRET_FILE = "auth-secret"
LEEWAY_S = 10  # clock skew tolerated between the token's issuer and the hub


class AuthError(Exception):
    """The credential is missing, malformed, expired, badly signed or of unknown role."""


@dataclasses.dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    session_id: uuid.UUID | None = None  # the one session a mirror token may write

    def may_write(self, session_id: uuid.UUID) -> bool:
        return self.role == "mirror" and self.session_id == session_id

    def may_read(self, session_id: uuid.UUID) -> bool:
        return self.role in ("admin", "therapist") or self.may_write(session_id)


# Used when authentication is switched off for development: everything is allowed.
ANONYMOUS_ADMIN = Principal(subject="anonymous (auth disabled)", role="admin")


class TokenService:
    def __init__(
        self, secret: bytes, public_key: str | None = None, audience: str | None = None
    ) -> None:
        self._secret = secret
        self._public_key = public_key
        # An identity provider signs tokens for many applications: with an audience set, only
        # those whose `aud` names this hub are accepted.
        self._audience = audience

    def issue(
        self,
        role: Role,
        subject: str,
        ttl_s: int,
        session_id: uuid.UUID | None = None,
    ) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if (role == "mirror") != (session_id is not None):
            raise ValueError("a mirror token needs exactly one session; other roles none")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": subject,
            "role": role,
            "iat": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(8),
        }
        if session_id is not None:
            claims["session"] = str(session_id)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") == "HS256":
                claims = jwt.decode(
                    token,
                    self._secret,
                    algorithms=["HS256"],
                    options={"require": ["exp", "sub", "role"]},
                    leeway=LEEWAY_S,
                )
            elif self._public_key is not None:
                required = ["exp", "sub", "role"] + (["aud"] if self._audience else [])
                claims = jwt.decode(
                    token,
                    self._public_key,
                    algorithms=["RS256", "ES256"],
                    audience=self._audience,
                    options={"require": required, "verify_aud": self._audience is not None},
                    leeway=LEEWAY_S,
                )
            else:
                raise AuthError("token algorithm is not accepted")
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as exc:  # InvalidKeyError (wrong key family) is not Invalid…
            raise AuthError(f"invalid token: {exc}") from None
        role = claims.get("role")
        if role not in ROLES:
            raise AuthError("token has no valid role")
        session = claims.get("session")
        if session is not None and not isinstance(session, str):
            raise AuthError("token names a malformed session")
        try:
            session_id = uuid.UUID(session) if session is not None else None
        except ValueError:
            raise AuthError("token names a malformed session") from None
        if role == "mirror" and session_id is None:
            raise AuthError("mirror token names no session")
        return Principal(subject=str(claims["sub"]), role=role, session_id=session_id)


def load_or_create_secret(data_dir: Path) -> tuple[bytes, bool]:
    """The signing secret kept in the data directory (0600); True if it was created now."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_bytes().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48).encode()
    # Written in full under a temporary name, then linked into place: link fails if the file
    # exists, so of several processes starting at once (workers) exactly one creates it, and
    # none can read it half-written.
    fd, temporary = tempfile.mkstemp(dir=data_dir, prefix=".secret-")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes().strip(), False
    finally:
        os.unlink(temporary)
    return secret, True


def parse_ttl(text: str) -> int:
    """'8h', '30m', '90s', '7d' or plain seconds → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            value = int(text[:-1]) * units[text[-1]]
        else:
            value = int(text)
    except ValueError:
        raise ValueError(f"ttl must look like 8h, 30m, 90s or 7d; got {text!r}") from None
    if value <= 0:
        raise ValueError("ttl must be positive")
    return value


ADMIN_TOKEN_TTL_S = 30 * 86400


def token_service(settings: Settings) -> tuple[TokenService | None, str | None]:
    """The hub's TokenService (None when auth is disabled), and an admin token to show the
    operator when the secret was generated just now — the one time it is printed."""
    if settings.auth_disabled:
        return None, None
    public_key = (
        settings.auth_public_key_file.read_text() if settings.auth_public_key_file else None
    )
    if public_key is not None and settings.auth_audience is None:
        logging.getLogger("hub.auth").warning(
            "HUB_AUTH_PUBLIC_KEY_FILE is set without HUB_AUTH_AUDIENCE: any token that key "
            "signed with a role claim is accepted, whatever application it was issued for"
        )
    audience = settings.auth_audience
    if settings.auth_secret:
        return TokenService(settings.auth_secret.encode(), public_key, audience), None
    secret, created = load_or_create_secret(settings.data_dir)
    service = TokenService(secret, public_key, audience)
    first_admin = service.issue("admin", "first-admin", ADMIN_TOKEN_TTL_S) if created else None
    return service, first_admin


def announce(service: TokenService | None, first_admin: str | None, data_dir: Path) -> None:
    """Say at start what a person running the hub must know about authentication."""
    if service is None:
        banner = "!" * 78
        print(
            f"{banner}\n  AUTHENTICATION IS DISABLED (HUB_AUTH_DISABLED): anyone who reaches "
            f"this hub\n  can read and write children's session data. Development only.\n{banner}",
            file=sys.stderr,
            flush=True,
        )
    elif first_admin is not None:
        print(
            f"Generated a signing secret in {data_dir / SECRET_FILE} (0600).\n"
            f"Admin token (shown once, valid {ADMIN_TOKEN_TTL_S // 86400} days):\n\n"
            f"    {first_admin}\n\n"
            "Make more with: hub token create --role therapist --name NAME --ttl 8h",
            file=sys.stderr,
            flush=True,
        )
