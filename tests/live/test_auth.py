"""Acceptance: access control. Who may call which endpoint, over HTTP and WebSocket; forged,
expired and out-of-scope credentials; the Origin of WebSocket upgrades; the hello timeout;
the signing secret of a fresh data directory, `hub token create`, and HUB_AUTH_DISABLED.

The matrix runs against a real hub process (the module's `hub_server`) over real sockets;
settings that change the hub's behaviour get a dedicated hub (`start_hub`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import hmac
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hub.auth import (
    ADMIN_TOKEN_TTL_S,
    LEEWAY_S,
    SECRET_FILE,
    AuthError,
    TokenService,
    load_or_create_secret,
    token_service,
)
from hub.endpoints.api import OPERATIONS
from hub.settings import Settings
from tests.support import ROOT
from tests.support.live import TEST_SECRET, TOKENS, HubProcess, token

ROLES = ("none", "admin", "therapist", "own_mirror", "other_mirror")
CLOSE_REASON_MAX_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


# Helpers ----------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(role: str, session: Any = None, exp_in: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"iss": "mirror-hub", "sub": f"test-{role}", "role": role, "iat": now}
    body["exp"] = now + exp_in
    if session is not None:
        body["session"] = session
    body.update(extra)
    return body


def signed(body: dict[str, Any], secret: str = TEST_SECRET) -> str:
    return jwt.encode(body, secret, algorithm="HS256")


def unsigned(header: dict[str, Any], body: dict[str, Any]) -> str:
    """A JWT with any header and an empty signature, written by hand (`alg: none` and worse)."""
    return f"{b64url(orjson.dumps(header))}.{b64url(orjson.dumps(body))}."


def flip_signature(good: str) -> str:
    head, payload, signature = good.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def swap_payload(good: str, body: dict[str, Any]) -> str:
    """Keep the header and signature of a valid token, put other claims in between."""
    head, _, signature = good.split(".")
    return f"{head}.{b64url(orjson.dumps(body))}.{signature}"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def bearer(credential: str | None) -> dict[str, str]:
    return {} if credential is None else {"Authorization": f"Bearer {credential}"}


@dataclasses.dataclass
class World:
    """A session with a task, its mirror's token, and another session's mirror token, all as
    `POST /sessions` issued them."""

    session_id: str
    task_id: str
    own_mirror: str
    other_mirror: str

    def credential(self, role: str) -> str | None:
        return {
            "none": None,
            "admin": token("admin"),
            "therapist": token("therapist"),
            "own_mirror": self.own_mirror,
            "other_mirror": self.other_mirror,
        }[role]


MATRIX_CHILD = "child-matrix"  # the child_ref of the world's own session


async def make_world(base: str) -> World:
    async with httpx.AsyncClient(base_url=base, headers=bearer(token("therapist"))) as http:
        own = await http.post(
            "/sessions", json={"child_name": "Matrix Child", "child_ref": MATRIX_CHILD}
        )
        other = await http.post("/sessions", json={"child_name": "Other Child"})
        assert own.status_code == other.status_code == 201, (own.text, other.text)
        session_id = own.json()["id"]
        task = await http.post(f"/sessions/{session_id}/tasks", json={"task_name": "squat"})
        assert task.status_code == 201, task.text
        # A result, so that the session has the metric the series row asks for.
        result = await http.post(f"/tasks/{task.json()['id']}/metrics", json={"accuracy": 0.5})
        assert result.status_code == 201, result.text
    return World(
        session_id, task.json()["id"], own.json()["mirror_token"], other.json()["mirror_token"]
    )


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a WebSocket hello ended: the first message's type, or the close code and reason."""

    first: str | None
    code: int | None = None
    reason: str = ""


async def say_hello(
    base_ws: str, session_id: str, endpoint: str, hello: dict[str, Any], origin: str | None = None
) -> Outcome:
    url = f"{base_ws}/ws/sessions/{session_id}/{endpoint}"
    async with connect(url, origin=origin, compression=None, open_timeout=10) as ws:
        await ws.send(orjson.dumps({"type": "hello", **hello}).decode())
        try:
            async with asyncio.timeout(10):
                message = orjson.loads(await ws.recv())
        except ConnectionClosed as exc:
            # No close frame from the hub (1006) means it dropped the connection.
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            return Outcome(None, code, exc.rcvd.reason if exc.rcvd is not None else "")
        return Outcome(message["type"])


def hello_for(credential: str | None) -> dict[str, Any]:
    return {} if credential is None else {"token": credential}


def assert_unauthorized(response: httpx.Response, fragment: str = "") -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers.get("www-authenticate") == "Bearer", response.headers
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "unauthorized", body
    assert isinstance(body["message"], str) and body["message"], body
    assert fragment in body["message"], body


def assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.request.url, response.text)
    assert "www-authenticate" not in response.headers
    body = response.json()
    assert body["error"] == "forbidden", body
    assert isinstance(body["message"], str) and body["message"], body


def assert_policy_close(outcome: Outcome, fragment: str = "") -> None:
    assert outcome.code == 1008, outcome
    assert outcome.reason, "a 1008 close carries a short reason"
    assert len(outcome.reason.encode()) <= CLOSE_REASON_MAX_BYTES, outcome
    assert fragment in outcome.reason, outcome


# 1. The matrix of role and endpoint -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {session} and {task} are filled in from the World
    expected: tuple[int, ...]  # status per role, in ROLES order
    body: Any = None
    query: str = ""

    def url(self, world: World) -> str:
        url = self.path.format(session=world.session_id, task=world.task_id, child_ref=MATRIX_CHILD)
        return f"{url}?{self.query}" if self.query else url


STAFF = (401, 200, 200, 403, 403)
STAFF_CREATE = (401, 201, 201, 403, 403)
ADMIN = (401, 200, 403, 403, 403)
SESSION_SCOPED = (401, 200, 200, 200, 403)
SESSION_SCOPED_CREATE = (401, 201, 201, 201, 403)
PUBLIC = (200, 200, 200, 200, 200)

#                none admin therapist own-mirror other-mirror
HTTP_MATRIX = [
    Endpoint("POST", "/sessions", STAFF_CREATE, {"child_name": "Matrix"}),
    Endpoint("GET", "/sessions", STAFF),
    Endpoint("GET", "/sessions/{session}/series", STAFF, query="metric=accuracy"),
    Endpoint("GET", "/audit", ADMIN),
    Endpoint("GET", "/catalogue", STAFF),
    Endpoint("GET", "/sessions/{session}/report", STAFF),
    Endpoint("GET", "/sessions/{session}/frames.csv", STAFF),
    Endpoint("GET", "/sessions/{session}/fhir", STAFF),
    Endpoint("GET", "/children/{child_ref}/progress", STAFF),
    Endpoint("DELETE", "/sessions/{session}", ADMIN),
    Endpoint("GET", "/sessions/{session}", SESSION_SCOPED),
    Endpoint("POST", "/sessions/{session}/tasks", SESSION_SCOPED_CREATE, {"task_name": "squat"}),
    Endpoint("GET", "/sessions/{session}/tasks", SESSION_SCOPED),
    Endpoint("POST", "/tasks/{task}/metrics", SESSION_SCOPED_CREATE, {"accuracy": 0.5}),
    Endpoint("GET", "/tasks/{task}/metrics", SESSION_SCOPED),
    Endpoint("GET", "/health", PUBLIC),
    Endpoint("GET", "/health/live", PUBLIC),
    Endpoint("GET", "/health/ready", PUBLIC),
    Endpoint("GET", "/metrics", ADMIN),
    Endpoint("GET", "/docs", PUBLIC),
    Endpoint("GET", "/docs/protocol", PUBLIC),
    Endpoint("GET", "/", PUBLIC),
    Endpoint("GET", "/redoc", PUBLIC),
    Endpoint("GET", "/openapi.json", PUBLIC),
    Endpoint("GET", "/watch", PUBLIC, query="session={session}"),
]
HTTP_CASES = [
    pytest.param(endpoint, role, status, id=f"{endpoint.method} {endpoint.path} as {role}")
    for endpoint in HTTP_MATRIX
    for role, status in zip(ROLES, endpoint.expected, strict=True)
]


def test_matrix_covers_every_operation() -> None:
    """A new endpoint must get a row in the matrix, and its declared roles must agree."""
    template = {"{session_id}": "{session}", "{task_id}": "{task}"}
    rows = {(e.method, e.path): e for e in HTTP_MATRIX}
    for op in OPERATIONS:
        path = op.path
        for old, new in template.items():
            path = path.replace(old, new)
        assert (op.method, path) in rows, f"{op.method} {op.path} is missing from HTTP_MATRIX"
        expected = rows[op.method, path].expected
        allowed = {role for role, status in zip(ROLES, expected, strict=True) if status < 400}
        if op.roles is None:
            declared = set(ROLES)
        else:
            declared = {r for r in ("admin", "therapist") if r in op.roles}
            if "mirror" in op.roles:
                declared.add("own_mirror")
        assert allowed == declared, (op.method, op.path, op.roles)


@pytest.mark.parametrize(("endpoint", "role", "status"), HTTP_CASES)
async def test_http_matrix(
    hub_server: HubProcess, endpoint: Endpoint, role: str, status: int
) -> None:
    world = await make_world(hub_server.http)
    async with httpx.AsyncClient(base_url=hub_server.http) as http:
        response = await http.request(
            endpoint.method,
            endpoint.url(world),
            json=endpoint.body,
            headers=bearer(world.credential(role)),
        )
    if status == 401:
        assert_unauthorized(response)
    elif status == 403:
        assert_forbidden(response)
    else:
        assert response.status_code == status, (role, response.text)


WS_MATRIX = {
    # endpoint: first message per role, or the close code
    "mirror": ("1008", "1008", "1008", "welcome", "1008"),
    "watch": ("1008", "welcome", "welcome", "1008", "1008"),
}
WS_CASES = [
    pytest.param(endpoint, role, expected, id=f"{endpoint} as {role}")
    for endpoint, row in WS_MATRIX.items()
    for role, expected in zip(ROLES, row, strict=True)
]


@pytest.mark.parametrize(("endpoint", "role", "expected"), WS_CASES)
async def test_websocket_matrix(
    hub_server: HubProcess, endpoint: str, role: str, expected: str
) -> None:
    world = await make_world(hub_server.http)
    outcome = await say_hello(
        hub_server.ws, world.session_id, endpoint, hello_for(world.credential(role))
    )
    if expected == "welcome":
        assert outcome == Outcome("welcome"), outcome
    else:
        assert_policy_close(outcome)


# 2. Forged, expired and malformed credentials ----------------------------------------------


def _alg_none(role: str, sid: str) -> str:
    return unsigned({"alg": "none", "typ": "JWT"}, claims(role, sid if role == "mirror" else None))


def _rs256_unknown_key(role: str, sid: str) -> str:
    body = claims(role, sid if role == "mirror" else None)
    return jwt.encode(body, rsa_key(), algorithm="RS256")


def _scoped(role: str, sid: str, **extra: Any) -> dict[str, Any]:
    return claims(role, sid if role == "mirror" else None, **extra)


# Each: a credential built for `role` (which the endpoint would accept if it were sound) and
# a fragment of the reason the hub must give.
BAD_CREDENTIALS: dict[str, tuple[Callable[[str, str], str], str]] = {
    "tampered-signature": (
        lambda r, s: flip_signature(signed(_scoped(r, s))),
        "signature does not match",
    ),
    # A therapist's valid token, its claims rewritten to admin: the signature no longer fits.
    "tampered-payload": (
        lambda r, s: swap_payload(signed(_scoped(r, s)), claims("admin", s, sub="forged")),
        "signature does not match",
    ),
    "expired": (lambda r, s: signed(_scoped(r, s, exp_in=-(LEEWAY_S + 50))), "expired at 20"),
    "other-secret": (
        lambda r, s: signed(_scoped(r, s), "another-secret-" + "y" * 40),
        "signature does not match",
    ),
    "alg-none": (_alg_none, "not accepted"),
    "alg-none-signed-anyway": (
        lambda r, s: _alg_none(r, s) + signed(_scoped(r, s)).split(".")[2],
        "not accepted",
    ),
    "rs256-without-public-key": (_rs256_unknown_key, "not accepted"),
    "long-non-ascii-alg": (
        lambda r, s: unsigned({"alg": "é" * 100, "typ": "JWT"}, _scoped(r, s)),
        "not accepted",
    ),
    "unknown-role": (lambda r, s: signed(claims("superuser", s)), "role"),
    "role-wrong-case": (lambda r, s: signed(claims(r.capitalize(), s)), "role"),
    "mirror-without-session": (lambda r, s: signed(claims("mirror")), "no session"),
    "mirror-with-malformed-session": (lambda r, s: signed(claims("mirror", "no-uuid")), "session"),
    "mirror-with-non-string-session": (lambda r, s: signed(claims("mirror", 12345)), "session"),
    "missing-exp": (
        lambda r, s: signed({k: v for k, v in _scoped(r, s).items() if k != "exp"}),
        "exp",
    ),
    "not-a-jwt": (lambda r, s: "not-a-jwt", "malformed token"),
}


@pytest.mark.parametrize("bad", list(BAD_CREDENTIALS))
@pytest.mark.parametrize("channel", ["http", "mirror", "watch"])
async def test_bad_credentials_are_refused(hub_server: HubProcess, bad: str, channel: str) -> None:
    world = await make_world(hub_server.http)
    make, fragment = BAD_CREDENTIALS[bad]
    role = "mirror" if channel == "mirror" else "therapist"
    credential = make(role, world.session_id)
    if channel == "http":
        async with httpx.AsyncClient(base_url=hub_server.http) as http:
            response = await http.get(f"/sessions/{world.session_id}", headers=bearer(credential))
        assert_unauthorized(response, fragment)
    else:
        outcome = await say_hello(hub_server.ws, world.session_id, channel, {"token": credential})
        assert_policy_close(outcome, fragment)


async def test_http_credential_forms(hub_server: HubProcess) -> None:
    world = await make_world(hub_server.http)
    url = f"/sessions/{world.session_id}"
    therapist = token("therapist")
    async with httpx.AsyncClient(base_url=hub_server.http) as http:
        ok = await http.get(url, headers={"Authorization": f"bearer  {therapist}"})
        assert ok.status_code == 200, ok.text  # the scheme is case-insensitive (RFC 7235)
        for header in (f"Basic {therapist}", "Bearer", therapist, f"Token {therapist}"):
            assert_unauthorized(await http.get(url, headers={"Authorization": header}))
        # Never from the URL: URLs end up in logs.
        assert_unauthorized(await http.get(url, params={"token": therapist}))
        assert_unauthorized(await http.get(url, params={"access_token": therapist}))
        assert_unauthorized(await http.get(url, headers={"Cookie": f"token={therapist}"}))


async def test_websocket_hello_without_credential_and_empty_token(hub_server: HubProcess) -> None:
    world = await make_world(hub_server.http)
    for endpoint in ("mirror", "watch"):
        for hello in ({}, {"token": None}, {"token": ""}):
            outcome = await say_hello(hub_server.ws, world.session_id, endpoint, hello)
            assert_policy_close(outcome, "credential required")


async def test_mirror_token_of_another_session_is_refused_everywhere(
    hub_server: HubProcess,
) -> None:
    world = await make_world(hub_server.http)
    async with httpx.AsyncClient(base_url=hub_server.http) as http:
        for method, url, body in (
            ("GET", f"/sessions/{world.session_id}", None),
            ("GET", f"/sessions/{world.session_id}/tasks", None),
            ("POST", f"/sessions/{world.session_id}/tasks", {"task_name": "x"}),
            ("GET", f"/tasks/{world.task_id}/metrics", None),
            ("POST", f"/tasks/{world.task_id}/metrics", {"accuracy": 1.0}),
        ):
            response = await http.request(
                method, url, json=body, headers=bearer(world.other_mirror)
            )
            assert_forbidden(response)
    outcome = await say_hello(
        hub_server.ws, world.session_id, "mirror", {"token": world.other_mirror}
    )
    assert_policy_close(outcome, "not this session's mirror")


def test_token_service_verification_rules() -> None:
    """Unit checks of TokenService that need no hub: the clock-skew leeway, issue's checks."""
    sid = uuid.uuid4()
    # Within the clock-skew leeway an expired token still passes; past it, not.
    assert TOKENS.verify(TOKENS.issue("therapist", "t", -(LEEWAY_S // 2))).role == "therapist"
    with pytest.raises(AuthError, match="expired"):
        TOKENS.verify(TOKENS.issue("therapist", "t", -(LEEWAY_S + 5)))
    with pytest.raises(ValueError):
        TOKENS.issue("mirror", "m", 60)  # a mirror token needs its session
    with pytest.raises(ValueError):
        TOKENS.issue("therapist", "t", 60, session_id=sid)
    with pytest.raises(ValueError):
        TOKENS.issue("root", "r", 60)
    mirror = TOKENS.verify(TOKENS.issue("mirror", "m", 60, session_id=sid))
    assert (mirror.role, mirror.session_id, mirror.subject) == ("mirror", sid, "m")
    assert mirror.may_write(sid) and not mirror.may_write(uuid.uuid4())


def test_identity_provider_keys() -> None:
    """RS256/ES256 tokens of an identity provider verify with its public key; nothing else
    does: not another key, not an HS256 token keyed with the public PEM (algorithm
    confusion), not `none`, and not a token naming the other asymmetric family."""
    key = rsa_key()
    pem = public_pem(key)
    with_idp = TokenService(TEST_SECRET.encode(), pem)
    idp_token = jwt.encode(claims("therapist"), key, algorithm="RS256")
    assert with_idp.verify(idp_token).role == "therapist"
    assert with_idp.verify(signed(claims("admin"))).role == "admin"  # the hub's own still work
    head = b64url(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = b64url(orjson.dumps(claims("admin")))
    mac = hmac.new(pem.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(AuthError):
        with_idp.verify(f"{head}.{body}.{b64url(mac)}")
    with pytest.raises(AuthError):
        with_idp.verify(jwt.encode(claims("admin"), rsa_key(), algorithm="RS256"))  # other key
    with pytest.raises(AuthError):
        with_idp.verify(unsigned({"alg": "none"}, claims("admin")))
    with pytest.raises(AuthError):
        with_idp.verify(unsigned({"alg": "RS256"}, claims("admin")))  # no signature at all
    # An ES256 token against an RSA key (anyone can write one): refused, not an exception
    # PyJWT raises outside InvalidTokenError (InvalidKeyError), which would be a 500.
    with pytest.raises(AuthError):
        with_idp.verify(jwt.encode(claims("admin"), ec_key(), algorithm="ES256"))
    with_ec = TokenService(TEST_SECRET.encode(), public_pem(ec_key()))
    with pytest.raises(AuthError):
        with_ec.verify(idp_token)


async def test_identity_provider_key_on_a_hub(
    start_hub: Callable[..., Awaitable[HubProcess]], tmp_path: Path
) -> None:
    key = rsa_key()
    key_file = tmp_path / "idp.pem"
    key_file.write_text(public_pem(key))
    hub = await start_hub(HUB_AUTH_PUBLIC_KEY_FILE=str(key_file))
    world = await make_world(hub.http)  # the hub's own HS256 tokens still work
    therapist = jwt.encode(claims("therapist", sub="dr-idp"), key, algorithm="RS256")
    mismatched = jwt.encode(claims("admin"), ec_key(), algorithm="ES256")
    async with httpx.AsyncClient(base_url=hub.http) as http:
        ok = await http.get(f"/sessions/{world.session_id}", headers=bearer(therapist))
        assert ok.status_code == 200, ok.text
        refused = await http.get(f"/sessions/{world.session_id}", headers=bearer(mismatched))
        assert_unauthorized(refused)
    assert await say_hello(hub.ws, world.session_id, "watch", {"token": therapist}) == Outcome(
        "welcome"
    )
    outcome = await say_hello(hub.ws, world.session_id, "watch", {"token": mismatched})
    assert_policy_close(outcome)


# Origin of the upgrade, and the hello timeout ----------------------------------------------


async def refused_upgrade(base_ws: str, session_id: str, endpoint: str, origin: str) -> int:
    url = f"{base_ws}/ws/sessions/{session_id}/{endpoint}"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, origin=origin, open_timeout=10):
            pass
    return refused.value.response.status_code


@pytest.mark.parametrize("endpoint", ["mirror", "watch"])
async def test_cross_origin_upgrade_is_refused(hub_server: HubProcess, endpoint: str) -> None:
    world = await make_world(hub_server.http)
    credential = world.own_mirror if endpoint == "mirror" else token("therapist")
    for origin in (
        "http://evil.example",
        "https://evil.example",
        "null",
        f"http://127.0.0.1:{hub_server.port}.evil.example",
        f"http://evil.example:{hub_server.port}",
    ):
        assert await refused_upgrade(hub_server.ws, world.session_id, endpoint, origin) == 403
    # The hub's own origin (its pages) and clients that send none (devices) are accepted.
    for origin in (f"http://127.0.0.1:{hub_server.port}", None):
        outcome = await say_hello(
            hub_server.ws, world.session_id, endpoint, {"token": credential}, origin
        )
        assert outcome == Outcome("welcome"), (origin, outcome)


async def test_allowed_origins_setting(start_hub: Callable[..., Awaitable[HubProcess]]) -> None:
    hub = await start_hub(HUB_ALLOWED_ORIGINS="https://clinic.example, https://other.example/")
    world = await make_world(hub.http)
    for origin in (
        "https://clinic.example",
        "https://other.example",
        f"http://127.0.0.1:{hub.port}",
    ):
        outcome = await say_hello(
            hub.ws, world.session_id, "watch", hello_for(token("admin")), origin
        )
        assert outcome == Outcome("welcome"), (origin, outcome)
    outcome = await say_hello(
        hub.ws, world.session_id, "mirror", {"token": world.own_mirror}, "https://clinic.example"
    )
    assert outcome == Outcome("welcome"), outcome
    for origin in ("http://clinic.example", "https://evil.example", "https://clinic.example.evil"):
        assert await refused_upgrade(hub.ws, world.session_id, "watch", origin) == 403


async def test_missing_hello_times_out_with_4000(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_HELLO_TIMEOUT_S="1")
    world = await make_world(hub.http)
    for endpoint in ("mirror", "watch"):
        url = f"{hub.ws}/ws/sessions/{world.session_id}/{endpoint}"
        async with connect(url, compression=None) as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(10):
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
            assert time.monotonic() - started < 4.5  # the 1 s setting, not the 5 s default


# Documentation behind a credential ---------------------------------------------------------


async def test_public_docs_off_needs_a_credential(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    """README: HUB_PUBLIC_DOCS (default true) makes /docs, /redoc and /openapi.json readable
    without a credential; set to false, they need one."""
    hub = await start_hub(HUB_PUBLIC_DOCS="false")
    async with httpx.AsyncClient(base_url=hub.http) as http:
        assert (await http.get("/health")).status_code == 200
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/protocol"):
            assert_unauthorized(await http.get(path))
            response = await http.get(path, headers=bearer(token("therapist")))
            assert response.status_code == 200, (path, response.text)


# 3. A fresh data directory, `hub token create`, HUB_AUTH_DISABLED ---------------------------


def test_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # does not exist yet
    secret, created = load_or_create_secret(data_dir)
    assert created and len(secret) >= 32
    path = data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == secret
    assert load_or_create_secret(data_dir) == (secret, False)
    assert path.read_bytes() == secret


def test_token_service_prints_a_first_admin_token_only_when_it_creates_the_secret(
    tmp_path: Path,
) -> None:
    settings = Settings(database_url=None, data_dir=tmp_path, auth_secret=None)
    started = int(time.time())
    service, first_admin = token_service(settings)
    assert service is not None and first_admin is not None
    principal = service.verify(first_admin)
    assert (principal.role, principal.subject, principal.session_id) == (
        "admin",
        "first-admin",
        None,
    )
    secret = (tmp_path / SECRET_FILE).read_bytes()
    decoded = jwt.decode(first_admin, secret, algorithms=["HS256"])
    assert abs(decoded["exp"] - (started + ADMIN_TOKEN_TTL_S)) <= 60
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600

    again, none = token_service(settings)
    assert again is not None and none is None  # not a second time
    assert again.verify(first_admin).role == "admin"  # the same secret: old tokens stay valid
    assert (tmp_path / SECRET_FILE).read_bytes() == secret

    # A configured secret: nothing is written to the data directory, no admin token.
    other = tmp_path / "configured"
    service, first_admin = token_service(
        Settings(database_url=None, data_dir=other, auth_secret=TEST_SECRET)
    )
    assert service is not None and first_admin is None
    assert not (other / SECRET_FILE).exists()
    assert service.verify(token("therapist")).role == "therapist"
    # Disabled: no service at all.
    assert token_service(Settings(database_url=None, data_dir=other, auth_disabled=True)) == (
        None,
        None,
    )


def hub_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HUB_AUTH_SECRET", "HUB_AUTH_DISABLED", "HUB_AUTH_PUBLIC_KEY_FILE")
    }
    env["HUB_DATA_DIR"] = str(data_dir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # cwd: a folder without a .env, so only this environment counts.
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env,
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_token_create(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    started = int(time.time())
    result = hub_cli(
        data_dir, "token", "create", "--role", "therapist", "--name", "Dr Who", "--ttl", "8h"
    )
    assert result.returncode == 0, result.stderr
    issued = result.stdout.strip()
    assert issued.count(".") == 2 and "\n" not in issued, result.stdout
    secret = (data_dir / SECRET_FILE).read_bytes()
    assert stat.S_IMODE((data_dir / SECRET_FILE).stat().st_mode) == 0o600
    principal = TokenService(secret).verify(issued)
    assert (principal.role, principal.subject) == ("therapist", "Dr Who")
    decoded = jwt.decode(issued, secret, algorithms=["HS256"])
    assert abs(decoded["exp"] - (started + 8 * 3600)) <= 60, decoded
    with pytest.raises(AuthError):  # not valid for a hub with another secret
        TOKENS.verify(issued)

    # The same secret again, and a mirror token for one session.
    session_id = str(uuid.uuid4())
    result = hub_cli(
        data_dir, "token", "create", "--role", "mirror", "--name", "m1", "--session", session_id
    )
    assert result.returncode == 0, result.stderr
    mirror = TokenService(secret).verify(result.stdout.strip())
    assert (mirror.role, str(mirror.session_id)) == ("mirror", session_id)


@pytest.mark.parametrize(
    "args",
    [
        ["--role", "therapist", "--name", "X", "--ttl", "8x"],
        ["--role", "therapist", "--name", "X", "--ttl", "0"],
        ["--role", "therapist", "--name", "X", "--ttl=-1h"],
        ["--role", "therapist", "--name", "X", "--ttl", "h"],
        ["--role", "therapist", "--name", "X", "--ttl", ""],
        ["--role", "mirror", "--name", "M"],
        ["--role", "mirror", "--name", "M", "--session", "not-a-uuid"],
        ["--role", "therapist", "--name", "X", "--session", "8f6f3f3e-4cc5-4b53-9f3f-3b7c1f0e0a11"],
        ["--role", "root", "--name", "X"],
    ],
    ids=lambda args: " ".join(args),
)
def test_cli_token_create_refuses_bad_input(tmp_path: Path, args: list[str]) -> None:
    result = hub_cli(tmp_path / "data", "token", "create", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "", "no token may be printed"
    assert result.stderr.strip(), "the reason is said"


async def test_auth_disabled(start_hub: Callable[..., Awaitable[HubProcess]]) -> None:
    hub = await start_hub(HUB_AUTH_DISABLED="true")
    async with httpx.AsyncClient(base_url=hub.http) as http:
        health = (await http.get("/health")).json()
        assert health["auth"] == "disabled", health
        created = await http.post("/sessions", json={"child_name": "Dev"})
        assert created.status_code == 201, created.text
        assert created.json()["mirror_token"] is None
        session_id = created.json()["id"]
        for path in ("/sessions", f"/sessions/{session_id}", "/audit"):
            response = await http.get(path)
            assert response.status_code == 200, (path, response.text)
    for endpoint in ("mirror", "watch"):
        assert await say_hello(hub.ws, session_id, endpoint, {}) == Outcome("welcome")
    logs = hub.logs()
    assert "AUTHENTICATION IS DISABLED" in logs, logs
    # Reads are still audited, under the anonymous subject.
    async with httpx.AsyncClient(base_url=hub.http) as http:
        audit = (await http.get("/audit", params={"session_id": session_id})).json()
    assert {item["actor"] for item in audit["items"]} == {"anonymous (auth disabled)"}


def test_token_errors_are_in_our_words() -> None:
    """What a person holding a bad token reads in the 401 or the close reason: the problem,
    not the JWT library's wording (`Not enough segments`), and for an expired token when."""
    expired = signed(claims("therapist", exp_in=-3600))
    exp = jwt.decode(expired, options={"verify_signature": False})["exp"]
    when = datetime.datetime.fromtimestamp(exp, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    cases = {
        "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24": "malformed token",
        "a.b": "malformed token",
        flip_signature(signed(claims("therapist"))): "token signature does not match",
        expired: f"token expired at {when} UTC",
    }
    for credential, words in cases.items():
        with pytest.raises(AuthError) as caught:
            TOKENS.verify(credential)
        assert str(caught.value).startswith(words), caught.value
        assert "segments" not in str(caught.value)


def test_cli_ttl_needs_a_unit(tmp_path: Path) -> None:
    """`--ttl 8` used to make an 8-second token; now it is refused, naming the units."""
    result = hub_cli(
        tmp_path / "data", "token", "create", "--role", "therapist", "--name", "X", "--ttl", "8"
    )
    assert result.returncode == 2 and result.stdout == "", result
    for unit in ("90s", "30m", "8h", "7d"):
        assert unit in result.stderr, result.stderr
