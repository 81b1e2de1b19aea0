"""What the mirror and watcher WebSocket endpoints share: a connection's lifetime (its
place among the connection limits, the one try/finally from accept to close) and the
handshake."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected
from uvicorn.protocols.utils import ClientDisconnected

from hub import closecodes
from hub.auth import ANONYMOUS_ADMIN, AuthError, Principal
from hub.context import HubContext, context
from hub.endpoints.connection import close
from hub.frames import (
    PROTOCOL_BATCHED,
    PROTOCOL_VERSION,
    BatchedWelcome,
    Hello,
    ProtocolError,
    Welcome,
    decode_client_message,
    encode,
    error_message,
)
from hub.live.admission import Ticket
from hub.live.session import LiveSession
from hub.settings import Settings

log = logging.getLogger("hub.ws")

# What a send or receive on a socket whose peer has gone raises (Starlette, uvicorn).
PEER_GONE = (WebSocketDisconnect, WebSocketDisconnected, ClientDisconnected)


async def send_error(websocket: WebSocket, exc: ProtocolError) -> None:
    await websocket.send_text(error_message(exc).decode())


def origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """Browsers send Origin on every WebSocket upgrade: a page of another site must not open
    a socket with the user's network position (cross-site WebSocket hijacking). Clients that
    are not browsers send none, and the hub's own pages are same-origin."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    if origin in (o.lower() for o in settings.allowed_origins):
        return True
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    return origin == f"{scheme}://{websocket.headers.get('host', '').lower()}"


async def handshake(
    websocket: WebSocket, ctx: HubContext, role: Literal["mirror", "watcher"], ticket: Ticket
) -> tuple[uuid.UUID, Hello, Principal] | None:
    """Check the Origin, accept, read `hello`, check its credential for this session.
    On failure the socket is closed (or the upgrade refused) and None returned."""
    if not await _accept(websocket, ctx):
        return None
    try:
        session_id = uuid.UUID(websocket.path_params["session_id"])
    except ValueError:
        await close(websocket, closecodes.UNKNOWN_SESSION, "session id is not a UUID")
        return None
    spoken = (PROTOCOL_VERSION, PROTOCOL_BATCHED) if role == "watcher" else (PROTOCOL_VERSION,)
    hello = await _hello(websocket, ctx, ticket, spoken)
    if hello is None:
        return None
    principal = await _admit(websocket, ctx, ticket, _authorize(ctx, hello, role, session_id))
    return None if principal is None else (session_id, hello, principal)


async def handshake_many(
    websocket: WebSocket, ctx: HubContext, ticket: Ticket
) -> tuple[Hello, Principal] | None:
    """`/ws/watch`: as `handshake`, protocol 2 only, for any valid credential (what it may
    watch is checked per subscription)."""
    if not await _accept(websocket, ctx):
        return None
    hello = await _hello(websocket, ctx, ticket, (PROTOCOL_BATCHED,))
    if hello is None:
        return None
    principal = await _admit(websocket, ctx, ticket, _authorize(ctx, hello, "subscriber", None))
    return None if principal is None else (hello, principal)


async def _accept(websocket: WebSocket, ctx: HubContext) -> bool:
    if not origin_allowed(websocket, ctx.settings):
        # Before accept, a close is answered as HTTP 403 to the upgrade request.
        await websocket.close(closecodes.POLICY.code, "origin not allowed")
        return False
    await websocket.accept()
    return True


async def _admit(
    websocket: WebSocket, ctx: HubContext, ticket: Ticket, principal: Principal | str
) -> Principal | None:
    """The principal once its credential passed and the connection counts as
    authenticated; None (and the socket closed) otherwise."""
    if isinstance(principal, str):
        await close(websocket, closecodes.POLICY, principal)
        return None
    if not ctx.live.admission.authenticate(ticket):
        await close(websocket, closecodes.TOO_MANY_CONNECTIONS)
        return None
    return principal


async def _hello(
    websocket: WebSocket, ctx: HubContext, ticket: Ticket, spoken: tuple[int, ...]
) -> Hello | None:
    message = await _first_message(websocket, ticket, ctx.settings.hello_timeout_s)
    if message is None:
        if ticket.evicted.is_set():
            await close(
                websocket, closecodes.TOO_MANY_CONNECTIONS, "too many connections waiting for hello"
            )
        else:
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
    if isinstance(hello, Hello) and hello.protocol not in spoken:
        versions = " or ".join(map(str, spoken))
        await send_error(
            websocket,
            ProtocolError("unsupported_protocol", f"this hub speaks protocol {versions} only"),
        )
        await close(websocket, closecodes.PROTOCOL_ERROR, "unsupported protocol version")
        return None
    if not isinstance(hello, Hello):
        await send_error(
            websocket, ProtocolError("hello_required", "the first message must be hello")
        )
        await close(websocket, closecodes.PROTOCOL_ERROR, "first message must be hello")
        return None
    return hello


async def _first_message(websocket: WebSocket, ticket: Ticket, timeout_s: float) -> Message | None:
    """The first message, or None if it did not come in time or a newer socket of the same
    address took this one's place (see `Admission`)."""
    receive = asyncio.ensure_future(websocket.receive())
    evicted = asyncio.ensure_future(ticket.evicted.wait())
    try:
        await asyncio.wait({receive, evicted}, timeout=timeout_s, return_when="FIRST_COMPLETED")
    finally:
        evicted.cancel()
        receive.cancel()  # no-op once it is done
    if ticket.evicted.is_set() or not receive.done() or receive.cancelled():
        return None
    return receive.result()


def _authorize(
    ctx: HubContext,
    hello: Hello,
    role: Literal["mirror", "watcher", "subscriber"],
    session_id: uuid.UUID | None,
) -> Principal | str:
    """The Principal, or a short reason for closing with 1008."""
    if ctx.tokens is None:
        return ANONYMOUS_ADMIN
    if not hello.token:
        return "credential required"
    try:
        principal = ctx.tokens.verify(hello.token)
    except AuthError as exc:
        return str(exc)  # `close` trims it to the 123 bytes a close reason may have
    if role == "mirror" and (session_id is None or not principal.may_write(session_id)):
        return "not this session's mirror"
    if role == "watcher" and principal.role not in ("admin", "therapist"):
        return "watching needs a therapist or admin credential"
    return principal


def welcome(
    live: LiveSession,
    role: Literal["mirror", "watcher"],
    last_seq: int,
    settings: Settings,
    node: str,
    max_delay_ms: int | None = None,
) -> str:
    """`max_delay_ms`: a protocol 2 watcher's batching delay in effect (None: protocol 1)."""
    fields: dict[str, Any] = {
        "session_id": live.id,
        "role": role,
        "last_seq": last_seq,
        "acked_seq": live.stored_seq,
        "max_message_bytes": settings.ws_max_message_bytes,
        "node": node,
    }
    if max_delay_ms is None:
        return encode(Welcome(**fields)).decode()
    message = BatchedWelcome(**fields, protocol=PROTOCOL_BATCHED, max_delay_ms=max_delay_ms)
    return encode(message).decode()


def connection_lifetime(
    endpoint: Callable[[WebSocket, Ticket], Awaitable[None]],
) -> Callable[[WebSocket], Awaitable[None]]:
    """One WebSocket from accept to close: its place among the connection limits
    (`Admission`), and a peer that leaves at any moment ends it quietly, never with a
    traceback. Whatever the endpoint holds (presence, the mirror's place) it releases in its
    own `finally`, inside this one."""

    async def lifetime(websocket: WebSocket) -> None:
        ctx = context(websocket)
        host = websocket.client.host if websocket.client else "unknown"
        ticket = ctx.live.admission.admit(host)
        if ticket is None:
            try:
                await websocket.accept()
            except PEER_GONE:
                return
            await close(websocket, closecodes.TOO_MANY_CONNECTIONS, "hub at its connection limit")
            return
        try:
            await endpoint(websocket, ticket)
        except PEER_GONE:
            log.debug("%s %s: the client left", host, websocket.url.path)
        except Exception:
            # A bug, not the client's doing: say so with the traceback, and close so the
            # client resumes rather than waiting for a ping timeout.
            log.exception("%s %s: unexpected error", host, websocket.url.path)
            await close(websocket, closecodes.INTERNAL)
        finally:
            ctx.live.admission.release(ticket)

    return lifetime
