"""`/`: what this hub is, its version, and where its documentation lives."""

from __future__ import annotations

import html
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

import hub
from hub.endpoints.docs import PAGE_STYLE, static_page_response

_PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mirror Hub {version}</title>
<link rel="icon" href="data:,">
{style}
</head>
<body>
<main>
<h1>Mirror Hub <small>{version}</small></h1>
<p>A realtime session hub for virtual mirrors, the camera-based exercise screens for children.
Each mirror streams its session's task events and metrics over a WebSocket; the hub stores every
frame exactly once in PostgreSQL, acknowledges it after the commit, and broadcasts it at once to
the therapists watching. The session history is served over HTTP.</p>
<h2>Therapists</h2>
<ul>
<li><a href="{root}/console/login">The console</a>: session history, reports, live sessions and each
child's progress (sign in with the link from <code>hub token create --role therapist
--login</code>, or paste a token)</li>
</ul>
<h2>Documentation</h2>
<ul>
<li><a href="{root}/docs/protocol">The live protocol</a>: WebSockets
<code>/ws/sessions/{{id}}/mirror</code> and <code>/ws/sessions/{{id}}/watch</code>, frames, acks,
resuming, close codes</li>
<li><a href="{root}/docs">HTTP API in Swagger UI</a></li>
<li><a href="{root}/redoc">HTTP API in ReDoc</a></li>
<li><a href="{root}/openapi.json">OpenAPI document</a> (JSON)</li>
</ul>
<h2>Clients</h2>
<ul>
<li><a href="{root}/client/mirror-hub.js">The browser client module</a>
(<code>MirrorClient</code>, <code>WatcherClient</code>; types in
<a href="{root}/client/mirror-hub.d.ts">mirror-hub.d.ts</a>)</li>
<li><a href="{root}/demo/mirror">Demo mirror</a>: a synthetic child streaming a session
(open it with <code>#token=</code> and a staff token)</li>
</ul>
<h2>Operations</h2>
<ul>
<li><a href="{root}/health">Health</a>, probes <a href="{root}/health/live">/health/live</a> and
<a href="{root}/health/ready">/health/ready</a></li>
<li><code>/metrics</code>: Prometheus metrics (an admin token, unless made public)</li>
</ul>
</main>
</body>
</html>
"""


async def landing(request: Request) -> HTMLResponse:
    root = html.escape(request.scope.get("root_path", "").rstrip("/"))
    page = _PAGE.format(style=PAGE_STYLE, root=root, version=html.escape(hub.__version__))
    return static_page_response(page)


routes: list[BaseRoute] = [
    Route("/", landing, methods=["GET"], name="landing", include_in_schema=False),
]
