"""The bare WebSocket server benchmarks/idle_bench.py compares the hub's idle watchers with:
uvicorn + Starlette with the hub's stack and flags (uvloop, httptools, websockets-sansio, no
per-message deflate, the hub's message size and ping settings), and an app that accepts, then
awaits `receive` until the client leaves. `/health` says how many sockets are open.

    python benchmarks/bare_ws_app.py --port 8200

Not part of the hub: it exists to be measured against.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from hub.settings import Settings


def create_app() -> Starlette:
    open_sockets = [0]

    async def idle(websocket: WebSocket) -> None:
        await websocket.accept()
        open_sockets[0] += 1
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            open_sockets[0] -= 1

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"open": open_sockets[0]})

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/ws/idle", idle)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    defaults = Settings()  # the hub's defaults (hub/cli_serve.py passes the same to uvicorn)
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=defaults.ws_max_message_bytes,
        ws_ping_interval=defaults.ws_ping_interval_s,
        ws_ping_timeout=defaults.ws_ping_timeout_s,
        lifespan="on",
        log_level="warning",
    )


if __name__ == "__main__":
    main()
