"""Documentation pages: Swagger UI at /docs, ReDoc at /redoc, the live protocol at /docs/protocol.

Both pages render the hub's own `/openapi.json` with browser assets that the hub serves
itself from `/static/docs` (vendored from npm by scripts/vendor_docs_assets.sh), so they
work on a machine with no network access and leak no request to a CDN or font service.

The protocol page is docs/protocol.md rendered on the server (markdown-it-py) from the copy
packaged with the hub (`hub/static/docs/protocol.md`; a test keeps it equal to docs/protocol.md),
so it needs no script and works from an installed wheel too.

Caching: the pages link each asset with `?v=<content hash>`, and a request carrying that
exact hash is answered with a year-long immutable `Cache-Control`; any other request for a
static file gets a short max-age and revalidates through ETag / Last-Modified. The HTML
pages themselves are `no-cache`, so upgrading the vendored assets takes effect at once.
"""

from __future__ import annotations

import functools
import hashlib
import html
import itertools
import json
import os
import pathlib
import secrets
from typing import Final

from markdown_it import MarkdownIt
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

STATIC_DIR: Final = pathlib.Path(__file__).parent.parent / "static" / "docs"
STATIC_PREFIX: Final = "/static/docs"
OPENAPI_PATH: Final = "/openapi.json"

_SWAGGER_CSS: Final = "swagger-ui/swagger-ui.css"
_SWAGGER_JS: Final = "swagger-ui/swagger-ui-bundle.js"
_SWAGGER_ICON: Final = "swagger-ui/favicon-32x32.png"
_SWAGGER_ICON_SMALL: Final = "swagger-ui/favicon-16x16.png"
_REDOC_JS: Final = "redoc/redoc.standalone.js"
PROTOCOL_MD: Final = STATIC_DIR / "protocol.md"

_IMMUTABLE: Final = "public, max-age=31536000, immutable"
_REVALIDATE: Final = "public, max-age=3600"

# The pages may load nothing from anywhere but the hub itself. Besides documenting intent,
# this stops the browser before it even tries the few outside URLs that redoc 3's bundle
# would fetch on its own (the "API docs by Redocly" logo from Redocly's CDN, CDN icons;
# telemetry is switched off in the page too): a blocked image just fires `error` and
# ReDoc hides it. Inline styles are needed by both UIs (React style props, and ReDoc's
# styled-components); the one inline script is allowed by a per-response nonce.
# connect-src 'self' also limits Swagger UI's "Try it out" to the hub's own origin.
_CSP: Final = (
    "default-src 'self'; "
    "script-src 'self' 'nonce-{nonce}'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; "
    "font-src 'self' data:; "
    "connect-src 'self'; "
    "worker-src 'self' blob:; "
    "object-src 'none'; "
    "base-uri 'none'; "
    "form-action 'self'; "
    "frame-ancestors 'self'"
)


# Pages rendered on the server run no script at all.
_NO_SCRIPT_CSP: Final = (
    "default-src 'none'; "
    "style-src 'unsafe-inline'; "
    "img-src 'self' data:; "
    "base-uri 'none'; "
    "form-action 'none'; "
    "frame-ancestors 'self'"
)


def static_page_response(page: str) -> HTMLResponse:
    """A page without scripts (the landing page, the protocol)."""
    headers = {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _NO_SCRIPT_CSP,
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(page, headers=headers)


def _page_response(page: str, nonce: str) -> HTMLResponse:
    headers = {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _CSP.format(nonce=nonce),
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(page, headers=headers)


@functools.cache
def _asset_version(relative: str) -> str:
    """Short content hash of a vendored asset, used to bust caches when it changes."""
    try:
        data = (STATIC_DIR / relative).read_bytes()
    except OSError:
        return ""  # not vendored: linked without a hash, and the mount answers 404
    return hashlib.sha256(data).hexdigest()[:16]


def _asset_url(root_path: str, relative: str) -> str:
    version = _asset_version(relative)
    url = f"{root_path}{STATIC_PREFIX}/{relative}"
    return f"{url}?v={version}" if version else url


class _DocsStaticFiles(StaticFiles):
    """StaticFiles with Cache-Control: immutable when the URL names the current hash."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        requested = QueryParams(scope.get("query_string", b"")).get("v")
        current = ""
        if requested:
            try:
                relative = pathlib.Path(full_path).relative_to(STATIC_DIR.resolve())
            except ValueError:  # pragma: no cover - StaticFiles only serves inside its dir
                pass
            else:
                current = _asset_version(relative.as_posix())
        cache = _IMMUTABLE if current and requested == current else _REVALIDATE
        response.headers["Cache-Control"] = cache
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _root_path(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _js(value: object) -> str:
    """A JSON literal safe to embed inside an inline <script>."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_SWAGGER_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mirror Hub API - Swagger UI</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" sizes="32x32" href="{icon}">
<link rel="icon" type="image/png" sizes="16x16" href="{icon_small}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{js}"></script>
<script nonce="{nonce}">
window.ui = SwaggerUIBundle({{
  url: {spec},
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  displayRequestDuration: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""

# redoc 3's standalone bundle is an ES module (no global `Redoc`): import `init` from it.
# Telemetry is off: it would post usage data to Redocly's servers.
_REDOC_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mirror Hub API - ReDoc</title>
<link rel="icon" href="data:,">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<div id="redoc"></div>
<script type="module" nonce="{nonce}">
import {{ init }} from {js};
init({spec}, {{ disableTelemetry: true }}, document.getElementById("redoc"));
</script>
</body>
</html>
"""


async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root_path(request)
    nonce = secrets.token_urlsafe(16)
    page = _SWAGGER_PAGE.format(
        nonce=nonce,
        css=html.escape(_asset_url(root, _SWAGGER_CSS)),
        icon=html.escape(_asset_url(root, _SWAGGER_ICON)),
        icon_small=html.escape(_asset_url(root, _SWAGGER_ICON_SMALL)),
        js=html.escape(_asset_url(root, _SWAGGER_JS)),
        spec=_js(root + OPENAPI_PATH),
    )
    return _page_response(page, nonce)


async def redoc(request: Request) -> HTMLResponse:
    root = _root_path(request)
    nonce = secrets.token_urlsafe(16)
    page = _REDOC_PAGE.format(
        nonce=nonce,
        js=_js(_asset_url(root, _REDOC_JS)),
        spec=_js(root + OPENAPI_PATH),
    )
    return _page_response(page, nonce)


# Shared by the hub's pages without scripts.
PAGE_STYLE: Final = """<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 52rem; padding: 1rem 2rem;
       color: #222; }
a { color: #0b57d0; }
code, pre { font: 14px ui-monospace, monospace; background: #f4f4f4; }
code { padding: 0 .2em; }
pre { padding: .75rem; overflow-x: auto; }
pre code { padding: 0; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
nav { font-size: .9rem; margin-bottom: 1rem; }
</style>"""

_PROTOCOL_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mirror Hub live protocol</title>
<link rel="icon" href="data:,">
{style}
</head>
<body>
<nav><a href="{root}/">Mirror Hub</a> · <a href="{root}/docs">API (Swagger UI)</a> ·
<a href="{root}/redoc">API (ReDoc)</a></nav>
<main>
{body}
</main>
</body>
</html>
"""


def _slug(text: str) -> str:
    """GitHub's heading anchors, which docs/protocol.md's own links use: `#size-limit`."""
    kept = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


@functools.cache
def protocol_html() -> str:
    """docs/protocol.md as HTML; raw HTML in it is escaped, not passed through."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(PROTOCOL_MD.read_text(encoding="utf-8"))
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open":
            opening.attrSet("id", _slug(inline.content))
    html_body: str = md.renderer.render(tokens, md.options, {})
    return html_body


async def protocol(request: Request) -> HTMLResponse:
    root = html.escape(_root_path(request))
    page = _PROTOCOL_PAGE.format(style=PAGE_STYLE, root=root, body=protocol_html())
    return static_page_response(page)


# What HUB_PUBLIC_DOCS=false puts behind a staff credential.
GUARDED_PATHS: Final = ("/openapi.json", "/docs", "/redoc", "/docs/protocol")

routes: list[BaseRoute] = [
    Route("/docs", swagger_ui, methods=["GET"], name="docs_swagger_ui", include_in_schema=False),
    Route(
        "/docs/protocol", protocol, methods=["GET"], name="docs_protocol", include_in_schema=False
    ),
    Route("/redoc", redoc, methods=["GET"], name="docs_redoc", include_in_schema=False),
    Mount(
        STATIC_PREFIX,
        app=_DocsStaticFiles(directory=STATIC_DIR, check_dir=False),
        name="docs_static",
    ),
]
