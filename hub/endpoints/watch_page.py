"""`/watch?session=ID#token=…`: a minimal browser page that shows one session's live values.

The page itself is public (it holds no data); the data comes over the WebSocket, which needs a
therapist or admin credential in `hello`.
"""

from __future__ import annotations

import pathlib
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR: Final = pathlib.Path(__file__).parent.parent / "static" / "watch"

PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Mirror Hub · live session</title>
<style>
body { font: 16px system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.3rem; } small { color: #666; }
table { border-collapse: collapse; min-width: 18rem; }
td { padding: .25rem .75rem; border-bottom: 1px solid #ddd; font-variant-numeric: tabular-nums; }
td:last-child { text-align: right; }
</style>
</head>
<body>
<h1>Live session <small id="session"></small></h1>
<p><span id="state">connecting…</span> · <span id="presence"></span> · <span id="seq"></span></p>
<h2>Latest values</h2>
<table><tbody id="values"></tbody></table>
<h2>Tasks</h2>
<ul id="tasks"></ul>
<script src="/static/watch/watch.js"></script>
</body>
</html>
"""

# The page talks only to the hub that served it.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'"
)


async def watch_page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


routes: list[BaseRoute] = [
    Route("/watch", watch_page, include_in_schema=False),
    Mount("/static/watch", app=StaticFiles(directory=STATIC_DIR), name="watch-static"),
]
