"""The therapist console's pages under `/console`, and its scripts and the vendored uPlot.

Each page is a shell without data: its script fetches what it shows from the API with a
short-lived Bearer token (console_auth). Pages other than the sign-in page answer only to a
signed-in console (a cookie); without one they send the browser to the sign-in page.
"""

from __future__ import annotations

import html
import pathlib
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hub.endpoints.console_auth import console_principal

STATIC_DIR: Final = pathlib.Path(__file__).parent.parent / "static"

# No inline script or style: everything comes from this hub, and the page talks only to it.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

_SHELL: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Mirror Hub console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">
<link rel="stylesheet" href="/console/static/console.css">
{vendor}<script type="module" src="/console/static/{script}.js"></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header id="top"></header>
<main id="main" tabindex="-1"><h1>{title}</h1><p id="status" role="status">Loading…</p></main>
</body>
</html>
"""

_UPLOT: Final = '<script src="/static/vendor/uplot/uPlot.iife.min.js"></script>\n'


def _page(title: str, script: str, charts: bool = False) -> HTMLResponse:
    body = _SHELL.format(title=html.escape(title), script=script, vendor=_UPLOT if charts else "")
    headers = {
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(body, headers=headers)


def _signed_in_page(
    title: str, script: str, charts: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        if await console_principal(request) is None:
            target = urllib.parse.quote(request.url.path, safe="/")
            return RedirectResponse(f"/console/login?next={target}", status_code=303)
        return _page(title, script, charts)

    return page


def next_page(request: Request) -> str:
    """Where to go after signing in: a console path of this hub, never another site."""
    target = request.query_params.get("next", "")
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


async def login_page(request: Request) -> Response:
    # Signed in already (a link from another site arrives without the SameSite=Strict
    # cookie, so its page sent the browser here): straight on.
    if await console_principal(request) is not None:
        return RedirectResponse(next_page(request), status_code=303)
    return _page("Sign in", "login")


routes: list[BaseRoute] = [
    Route("/console", _signed_in_page("Console", "home"), include_in_schema=False),
    Route("/console/login", login_page, methods=["GET"], include_in_schema=False),
    Route(
        "/console/sessions", _signed_in_page("Session history", "history"), include_in_schema=False
    ),
    Route(
        "/console/sessions/{session_id}",
        _signed_in_page("Session report", "report", charts=True),
        include_in_schema=False,
    ),
    Route(
        "/console/live/{session_id}",
        _signed_in_page("Live session", "live", charts=True),
        include_in_schema=False,
    ),
    Route(
        "/console/children/{child_ref}",
        _signed_in_page("Progress", "child", charts=True),
        include_in_schema=False,
    ),
    Mount(
        "/console/static", app=StaticFiles(directory=STATIC_DIR / "console"), name="console-static"
    ),
    Mount("/static/vendor", app=StaticFiles(directory=STATIC_DIR / "vendor"), name="vendor-static"),
]
