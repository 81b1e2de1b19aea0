"""What the mirror and watcher WebSocket endpoints share: the handshake and the writer task."""

from __future__ import annotations

import asyncio
import uuid

from starlette.websockets import WebSocket, WebSocketDisconnect

from hub import closecodes
from hub.frames import Ack, Hello, ProtocolError, decode_client_message, encode, error_message
from hub.live.rooms import Outbox
from hub.live.session import MirrorLink


async def close(websocket: WebSocket, code: closecodes.CloseCode, reason: str = "") -> None:
    try:
        await websocket.close(code.code, reason or code.meaning)
    except (RuntimeError, OSError):  # already closed by the peer
        pass


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
    if not isinstance(hello, Hello):
        await send_error(
            websocket, ProtocolError("hello_required", "the first message must be hello")
        )
        await close(websocket, closecodes.PROTOCOL_ERROR, "first message must be hello")
        return None
    return session_id, hello


async def run_writer(websocket: WebSocket, outbox: Outbox, link: MirrorLink | None = None) -> None:
    """Drain `outbox` (and, for a mirror, its newest ack) into the socket until told to close."""
    sent_ack = link.acked if link is not None else 0
    try:
        while True:
            await outbox.ready.wait()
            outbox.ready.clear()
            # A mirror's ack goes out before any close, so a shutdown acks what it stored.
            if link is not None and link.acked > sent_ack:
                sent_ack = link.acked
                await websocket.send_text(encode(Ack(seq=sent_ack)).decode())
            items = outbox.items
            if outbox.close_code is not None and not outbox.flush_before_close:
                items.clear()
            while items:
                await websocket.send_text(items.popleft())
            if outbox.close_code is not None:
                await close(websocket, outbox.close_code, outbox.close_reason)
                return
    except (WebSocketDisconnect, OSError, RuntimeError):
        return  # the peer went away; the endpoint's reader sees the disconnect
