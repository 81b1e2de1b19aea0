"""The browser client module at `/client/mirror-hub.js` (types beside it) and the demo mirror
page `/demo/mirror?session=ID#token=…`.

The module's source is clients/js/mirror-hub.js; hub/static/client holds a byte-identical copy
so an installed wheel serves it too (tests/browser/test_js_client.py checks they are the same).
Like /watch, the demo page is public and holds no data: what it writes goes over the WebSocket
and needs a credential, which stays in the URL fragment and never reaches a server log.
"""

from __future__ import annotations

import pathlib
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC_DIR: Final = pathlib.Path(__file__).parent.parent / "static"
CLIENT_DIR: Final = STATIC_DIR / "client"

# Modules and their types must come with these types, or browsers refuse `import`.
CLIENT_FILES: Final = {
    "mirror-hub.js": "text/javascript; charset=utf-8",
    "mirror-hub.d.ts": "application/typescript; charset=utf-8",
}

# The page talks only to the hub that served it.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; base-uri 'none'"
)


async def client_file(request: Request) -> Response:
    name = request.url.path.rsplit("/", 1)[-1]
    return FileResponse(
        CLIENT_DIR / name,
        media_type=CLIENT_FILES[name],
        # Pages on other origins may import it too (the hub decides who may connect).
        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
    )


async def demo_mirror_page(request: Request) -> Response:
    page = (STATIC_DIR / "demo" / "mirror.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})


routes: list[BaseRoute] = [
    *(Route(f"/client/{name}", client_file, include_in_schema=False) for name in CLIENT_FILES),
    Route("/demo/mirror", demo_mirror_page, include_in_schema=False),
    Mount("/static/demo", app=StaticFiles(directory=STATIC_DIR / "demo"), name="demo-static"),
]
