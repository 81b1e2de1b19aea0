"""What the mirror and watcher WebSocket endpoints share: the handshake."""

from __future__ import annotations

import asyncio
import uuid
from typing import Literal

from starlette.websockets import WebSocket

from hub import closecodes
from hub.frames import (
    PROTOCOL_VERSION,
    Hello,
    ProtocolError,
    Welcome,
    decode_client_message,
    encode,
    error_message,
)
from hub.live.connection import close
from hub.live.session import LiveSession
from hub.settings import Settings


async def send_error(websocket: WebSocket, exc: ProtocolError) -> None:
    await websocket.send_text(error_message(exc).decode())


async def handshake(websocket: WebSocket, timeout_s: float) -> tuple[uuid.UUID, Hello] | None:
    """Accept, then read `hello`. On failure the socket is closed and None returned."""
    await websocket.accept()
    try:
        session_id = uuid.UUID(websocket.path_params["session_id"])
    except ValueError:
        await close(websocket, closecodes.UNKNOWN_SESSION, "session id is not a UUID")
        return None
    try:
        async with asyncio.timeout(timeout_s):
            message = await websocket.receive()
    except TimeoutError:
        await close(websocket, closecodes.HELLO_TIMEOUT)
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        await close(websocket, closecodes.UNSUPPORTED)
        return None
    try:
        hello = decode_client_message(text)
    except ProtocolError as exc:
        await send_error(websocket, exc)
        await close(websocket, closecodes.PROTOCOL_ERROR, "first message must be hello")
        return None
    if isinstance(hello, Hello) and hello.protocol != PROTOCOL_VERSION:
        await send_error(
            websocket,
            ProtocolError(
                "unsupported_protocol", f"this hub speaks protocol {PROTOCOL_VERSION} only"
            ),
        )
        await close(websocket, closecodes.PROTOCOL_ERROR, "unsupported protocol version")
        return None
    if not isinstance(hello, Hello):
        await send_error(
            websocket, ProtocolError("hello_required", "the first message must be hello")
        )
        await close(websocket, closecodes.PROTOCOL_ERROR, "first message must be hello")
        return None
    return session_id, hello


def welcome(
    live: LiveSession, role: Literal["mirror", "watcher"], last_seq: int, settings: Settings
) -> str:
    return encode(
        Welcome(
            session_id=live.id,
            role=role,
            last_seq=last_seq,
            acked_seq=live.stored_seq,
            max_message_bytes=settings.ws_max_message_bytes,
        )
    ).decode()
