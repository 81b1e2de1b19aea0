"""Credentials: signed, expiring tokens with a role, a subject and (for mirrors) one session.

Tokens are JWTs (PyJWT). The hub signs its own with HS256 and a secret; a clinic's identity
provider can sign instead with RS256/ES256 and the hub verifies with its public key
(HUB_AUTH_PUBLIC_KEY_FILE). Verification always pins the algorithms, so `alg: none` and
algorithm-confusion tokens are refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import secrets
import sys
import tempfile
import textwrap
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
# Clock skew tolerated between the token's issuer and the hub: a token is accepted up to this
# long after `exp` and before `iat`/`nbf` (README, Access control).
LEEWAY_S = 10
# Verified tokens remembered per process (see `TokenService.verify`); past this many, the
# oldest are forgotten first.
VERIFIED_CACHE_SIZE = 4096


class AuthError(Exception):
    """The credential is missing, malformed, expired, badly signed or of unknown role."""


def token_error(exc: jwt.PyJWTError, token: str) -> str:
    """The JWT library's complaint in words a person holding the token can act on; sent in
    401 answers and WebSocket close reasons (at most 123 bytes)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        try:
            expiry = int(jwt.decode(token, options={"verify_signature": False})["exp"])
        except (jwt.PyJWTError, KeyError, TypeError, ValueError, OverflowError):
            return "token expired"
        moment = datetime.datetime.fromtimestamp(expiry, tz=datetime.UTC)
        return f"token expired at {moment:%Y-%m-%d %H:%M:%S} UTC; get a new one"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token is for another audience (its `aud` does not name this hub)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the `{exc.claim}` claim"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not valid yet (`iat` or `nbf` in the future: check the clocks)"
    if isinstance(exc, (jwt.InvalidSignatureError, jwt.InvalidKeyError)):
        return "token signature does not match (signed with another secret or key)"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm is not accepted"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token (expected a JWT: three base64url parts separated by dots)"
    return "invalid token"


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
        # token -> (principal, the time.time() past which the token is refused)
        self._verified: dict[str, tuple[Principal, float]] = {}

    @property
    def secret(self) -> bytes:
        """The HS256 signing secret (login codes are signed with it too)."""
        return self._secret

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
        """The principal a token names, or AuthError. A token verified once is remembered
        until it expires: a console or API client sends the same token with every request,
        and checking its signature and claims again was a tenth of a history read's CPU
        (benchmarks/http_bench.py). What makes a token valid cannot change before its
        expiry (the keys are fixed for the life of the process; there is no revocation list
        — a token is withdrawn by rotating the secret, which restarts the hub)."""
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now <= known[1]:
                return known[0]
            del self._verified[token]
        principal, claims = self._verify(token)
        expiry = claims["exp"]
        if isinstance(expiry, (int, float)):  # checked by the decode: numeric
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (principal, float(expiry) + LEEWAY_S)
        return principal

    def _verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
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
        except jwt.PyJWTError as exc:  # InvalidKeyError (wrong key family) is not Invalid…
            raise AuthError(token_error(exc, token)) from None
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
        return Principal(subject=str(claims["sub"]), role=role, session_id=session_id), claims


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


TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """'90s', '30m', '8h', '7d' → seconds. A bare number is refused: `--ttl 8` meant as hours
    would otherwise make an 8-second token."""
    text = text.strip().lower()
    accepted = "a number with a unit: 90s, 30m, 8h or 7d"
    if not text or text[-1] not in TTL_UNITS:
        raise ValueError(f"ttl must be {accepted}; got {text!r}")
    try:
        value = int(text[:-1]) * TTL_UNITS[text[-1]]
    except ValueError:
        raise ValueError(f"ttl must be {accepted}; got {text!r}") from None
    if value <= 0:
        raise ValueError(f"ttl must be positive; got {text!r}")
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


def ensure_secret(settings: Settings) -> str | None:
    """Create the generated signing secret now if the hub uses one and it does not exist yet
    (`hub serve` does this before starting, so the admin token can be shown last); returns the
    first admin token then, None otherwise."""
    if settings.auth_disabled or settings.auth_secret:
        return None
    secret, created = load_or_create_secret(settings.data_dir)
    return (
        TokenService(secret).issue("admin", "first-admin", ADMIN_TOKEN_TTL_S) if created else None
    )


def show_first_admin(token: str, settings: Settings, base_url: str = "http://HOST:PORT") -> None:
    """The first admin token, framed so it stands out from the log lines, with a command that
    uses it. With HUB_LOG_FORMAT=json it is one log record like every other line."""
    days = ADMIN_TOKEN_TTL_S // 86400
    if settings.log_format == "json":
        logging.getLogger("hub.auth").warning(
            "first start: admin token (shown once, valid %d days): %s", days, token
        )
        return
    rule = "=" * 78
    print(
        f"\n{rule}\n"
        f"  First start: generated the signing secret {settings.data_dir / SECRET_FILE} (0600).\n"
        f"  Admin token, shown only this once (valid {days} days). Use it:\n\n"
        f"    export TOKEN={token}\n"
        f'    curl -H "Authorization: Bearer $TOKEN" {base_url}/sessions\n\n'
        "  More tokens: hub token create --role therapist --name NAME --ttl 8h\n"
        f"{rule}",
        file=sys.stderr,
        flush=True,
    )


def announce(service: TokenService | None, first_admin: str | None, settings: Settings) -> None:
    """Say at start what a person running the hub must know about authentication."""
    if service is None:
        message = (
            "AUTHENTICATION IS DISABLED (HUB_AUTH_DISABLED): anyone who reaches this hub can "
            "read and write children's session data. Development only."
        )
        if settings.log_format == "json":
            logging.getLogger("hub.auth").warning(message)
            return
        banner, text = "!" * 78, textwrap.indent(textwrap.fill(message, 76), "  ")
        print(
            f"{banner}\n{text}\n{banner}",
            file=sys.stderr,
            flush=True,
        )
    elif first_admin is not None:
        show_first_admin(first_admin, settings)
