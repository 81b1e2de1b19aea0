"""Console sign-in: login codes and pasted tokens open a cookie session; the cookie only works
on /console, hands out short-lived Bearer tokens, is CSRF-guarded, and sign-out ends it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.app import create_app
from hub.auth import TokenService
from hub.cli import main as hub_main
from hub.login_codes import LOGIN_AUDIENCE, issue_login_code
from hub.settings import Settings
from tests.support.live import TEST_SECRET, TOKENS, token

CSRF = {"X-Mirror-Hub-Console": "1"}


@contextlib.asynccontextmanager
async def browser(settings: Settings, base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client without any Authorization header, keeping cookies like a browser."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
async def web(settings: Settings, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(settings, "http://hub.test") as client:
        yield client


def login_code(role: str = "therapist", ttl_s: int = 3600) -> str:
    return issue_login_code(TOKENS, role, f"dr-{role}", ttl_s)  # type: ignore[arg-type]


async def sign_in(web: httpx.AsyncClient, **body: str) -> httpx.Response:
    return await web.post("/console/login", json=body, headers=CSRF)


async def page_token(web: httpx.AsyncClient) -> httpx.Response:
    return await web.post("/console/token", headers=CSRF)


async def test_login_code_opens_a_cookie_session_once(web: httpx.AsyncClient) -> None:
    code = login_code()
    answer = await sign_in(web, code=code)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"subject": "dr-therapist", "role": "therapist"}
    cookie = answer.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/console", "max-age="):
        assert attribute in cookie, cookie
    assert "secure" not in cookie  # plain http here; see the https test

    minted = await page_token(web)
    assert minted.status_code == 200, minted.text
    assert minted.headers["cache-control"] == "no-store"
    body = minted.json()
    assert 0 < body["expires_in"] <= 300
    principal = TOKENS.verify(body["token"])
    assert (principal.subject, principal.role) == ("dr-therapist", "therapist")
    # The page token is a Bearer token like any other: the API takes it.
    bearer = {"Authorization": f"Bearer {body['token']}"}
    assert (await web.get("/sessions", headers=bearer)).status_code == 200
    # ...but a therapist's cannot reach the admin-only pages.
    assert (await web.get("/audit", headers=bearer)).status_code == 403
    assert (await web.get("/metrics", headers=bearer)).status_code == 403

    # The same link a second time (another browser): refused.
    web.cookies.clear()
    again = await sign_in(web, code=code)
    assert again.status_code == 401
    assert "used already" in again.json()["message"]


async def test_the_cookie_works_only_on_the_console(web: httpx.AsyncClient) -> None:
    assert (await sign_in(web, code=login_code())).status_code == 200
    # The API and its admin pages never read the cookie: no CSRF through them.
    assert (await web.get("/sessions")).status_code == 401
    assert (await web.post("/sessions", json={"child_name": "X"})).status_code == 401
    # Console pages do.
    page = await web.get("/console/sessions")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    # Signed in already: the sign-in page sends the browser on, but only within the console.
    for asked, sent_to in (
        ("/console/sessions", "/console/sessions"),
        ("//evil.example/console", "/console"),
        ("https://evil.example/", "/console"),
    ):
        again = await web.get("/console/login", params={"next": asked})
        assert again.status_code == 303 and again.headers["location"] == sent_to, asked


async def test_console_pages_send_strangers_to_sign_in(web: httpx.AsyncClient) -> None:
    for path in ("/console", "/console/sessions", "/console/live/x", "/console/children/c-1"):
        answer = await web.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/login?next=/console")
    assert (await web.get("/console/login")).status_code == 200
    assert (await page_token(web)).status_code == 401


async def test_pasted_tokens_staff_only(web: httpx.AsyncClient) -> None:
    mirror = token("mirror", "00000000-0000-0000-0000-000000000001")
    refused = await sign_in(web, token=mirror)
    assert refused.status_code == 403
    assert "mirror token cannot open the console" in refused.json()["message"]
    assert "set-cookie" not in refused.headers
    assert (await web.get("/console")).status_code == 303

    assert (await sign_in(web, token="not-a-token")).status_code == 401
    # A login code is not a Bearer token, nor the other way round.
    assert (
        await web.get("/sessions", headers={"Authorization": f"Bearer {login_code()}"})
    ).status_code == 401
    assert (await sign_in(web, code=token("therapist"))).status_code == 401

    admin = await sign_in(web, token=token("admin", ttl_s=600))
    assert admin.status_code == 200
    max_age = int(admin.headers["set-cookie"].lower().split("max-age=")[1].split(";")[0])
    assert 590 <= max_age <= 600  # the console session ends with the pasted token
    assert (await web.get("/console")).status_code == 200


async def test_expired_and_foreign_codes(web: httpx.AsyncClient) -> None:
    now = int(time.time())
    claims = {"aud": LOGIN_AUDIENCE, "sub": "x", "role": "therapist", "jti": "a" * 32, "ttl": 60}
    expired = jwt.encode({**claims, "iat": now - 3600, "exp": now - 600}, TEST_SECRET, "HS256")
    answer = await sign_in(web, code=expired)
    assert answer.status_code == 401 and "expired" in answer.json()["message"]
    foreign = issue_login_code(TokenService(b"another-secret" * 4), "therapist", "x", 60)
    assert (await sign_in(web, code=foreign)).status_code == 401
    with pytest.raises(ValueError, match="console"):
        login_code("mirror")
    assert (await sign_in(web)).status_code == 422
    assert (await sign_in(web, code="x", token="y")).status_code == 422


async def test_csrf_guard(web: httpx.AsyncClient) -> None:
    code = login_code()
    # Without the header (what a cross-site form sends): refused before anything happens.
    bare = await web.post("/console/login", json={"code": code})
    assert bare.status_code == 403
    cross = {**CSRF, "Origin": "https://evil.example"}
    assert (await web.post("/console/login", json={"code": code}, headers=cross)).status_code == 403
    site = {**CSRF, "Sec-Fetch-Site": "cross-site"}
    assert (await web.post("/console/login", json={"code": code}, headers=site)).status_code == 403
    # The code was not spent by the refused attempts.
    own = {**CSRF, "Origin": "http://hub.test", "Sec-Fetch-Site": "same-origin"}
    assert (await web.post("/console/login", json={"code": code}, headers=own)).status_code == 200

    assert (await web.post("/console/token")).status_code == 403
    assert (await web.post("/console/token", headers=cross)).status_code == 403
    assert (await web.post("/console/logout")).status_code == 403
    assert (await page_token(web)).status_code == 200  # still signed in


async def test_sign_out_ends_the_cookie_everywhere(
    web: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    assert (await sign_in(web, code=login_code())).status_code == 200
    secret = web.cookies["hub_console"]
    out = await web.post("/console/logout", headers=CSRF)
    assert out.status_code == 204
    assert (
        "hub_console=" in out.headers["set-cookie"]
        and "max-age=0" in out.headers["set-cookie"].lower()
    )
    assert (await page_token(web)).status_code == 401
    # A copy of the cookie kept from before opens nothing either: the hub ended it.
    web.cookies.set("hub_console", secret, domain="hub.test", path="/console")
    assert (await page_token(web)).status_code == 401
    assert (await web.get("/console")).status_code == 303
    async with engine.connect() as conn:
        actions = (
            await conn.execute(
                text(
                    "SELECT action, actor, role FROM audit_log "
                    "WHERE action LIKE 'console%' ORDER BY id"
                )
            )
        ).all()
    assert [tuple(a) for a in actions] == [
        ("console_sign_in", "dr-therapist", "therapist"),
        ("console_sign_out", "dr-therapist", "therapist"),
    ]


async def test_cookie_is_secure_over_https(settings: Settings, clean_db: AsyncEngine) -> None:
    async with browser(settings, "https://hub.test") as web:
        answer = await sign_in(web, code=login_code())
        assert answer.status_code == 200
        assert "secure" in answer.headers["set-cookie"].lower()


def test_cli_prints_a_login_link(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.setenv("HUB_AUTH_SECRET", TEST_SECRET)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path))
    argv = ["token", "create", "--role", "therapist", "--name", "dr-who", "--login"]
    assert hub_main([*argv, "--url", "https://hub.clinic.example/"]) == 0
    bearer, link_line = capsys.readouterr().out.strip().splitlines()
    assert TOKENS.verify(bearer).role == "therapist"
    link = link_line.rsplit(" ", 1)[1]
    assert link.startswith("https://hub.clinic.example/console/login#code=")
    code = link.split("#code=", 1)[1]
    claims = jwt.decode(code, TEST_SECRET, algorithms=["HS256"], audience=LOGIN_AUDIENCE)
    assert (claims["sub"], claims["role"], claims["ttl"]) == ("dr-who", "therapist", 8 * 3600)
    mirror = ["--role", "mirror", "--session", "00000000-0000-0000-0000-000000000001"]
    assert hub_main(["token", "create", *mirror, "--name", "m", "--login"]) == 2
    refused = capsys.readouterr()
    assert refused.out == ""  # no token printed for a request that failed
    assert "console" in refused.err
