"""Unit test of `hub.endpoints.connection.close` at the ASGI boundary: closing a socket whose
client is already gone is no error (at a SIGTERM this used to log one "Exception in ASGI
application" per vanished client). The live path itself is tested over real sockets."""

from __future__ import annotations

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketState

from hub import closecodes
from hub.endpoints.connection import close


async def test_close_when_the_client_is_gone_is_quiet() -> None:
    async def receive() -> Message:
        return {"type": "websocket.disconnect", "code": 1006}

    async def send(message: Message) -> None:
        # What the server does once the TCP connection is gone; Starlette turns it into
        # WebSocketDisconnect(1006).
        raise OSError("connection lost")

    websocket = WebSocket({"type": "websocket", "path": "/", "headers": []}, receive, send)
    websocket.client_state = WebSocketState.CONNECTED
    websocket.application_state = WebSocketState.CONNECTED
    await close(websocket, closecodes.RESTART)  # must not raise
    assert websocket.application_state == WebSocketState.DISCONNECTED
