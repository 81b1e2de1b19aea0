"""`/ws/sessions/{id}/watch`: therapists watch a session live, gap-free, from any point.

A protocol 2 watcher gets the same messages, except that frames (catch-up and live) come in
`batch` messages: whatever its writer finds queued, joined as already encoded."""

from __future__ import annotations

import logging
import uuid

from starlette.websockets import WebSocket

from hub import closecodes
from hub.auth import Principal
from hub.context import HubContext, context
from hub.endpoints.connection import close, serve
from hub.endpoints.ws_common import PEER_GONE, connection_lifetime, handshake, welcome
from hub.frames import (
    PROTOCOL_BATCHED,
    Batching,
    Ended,
    Hello,
    ProtocolError,
    encode,
    error_message,
)
from hub.live.admission import Ticket
from hub.live.node import LiveHub, SessionUnavailable
from hub.live.sendqueue import Watcher
from hub.live.session import LiveSession
from hub.live.watching import plan_catch_up

log = logging.getLogger("hub.watch")


@connection_lifetime
async def watch_endpoint(websocket: WebSocket, ticket: Ticket) -> None:
    ctx = context(websocket)
    live_hub = ctx.live
    opened = await handshake(websocket, ctx, "watcher", ticket)
    if opened is None:
        return
    try:
        async with live_hub.use(opened[0]) as live:
            await _watch(websocket, ctx, *opened, live)
    except SessionUnavailable:
        await close(websocket, closecodes.INTERNAL, "storage unavailable; retry")


async def _watch(
    websocket: WebSocket,
    ctx: HubContext,
    session_id: uuid.UUID,
    hello: Hello,
    principal: Principal,
    live: LiveSession | None,
) -> None:
    live_hub = ctx.live
    if live is None:
        await close(websocket, closecodes.UNKNOWN_SESSION)
        return
    if not live_hub.accepting:
        await close(websocket, closecodes.RESTART)
        return
    try:  # no unaudited watching: if the trail cannot be written, nobody watches
        recorded = await ctx.audit.record_durably(
            principal.subject, principal.role, "watch", session_id
        )
    except Exception as exc:
        log.warning("audit of a watch of session=%s failed: %s", session_id, type(exc).__name__)
        await close(websocket, closecodes.INTERNAL, "storage unavailable; retry")
        return
    if not recorded or live.erased:
        await close(websocket, closecodes.UNKNOWN_SESSION, "session was deleted")
        return
    # Checked after the await above and right before `join`, so simultaneous joins cannot
    # all pass the check.
    # Counted over every node, as far as this one knows (others report within a heartbeat).
    if live.watcher_count() >= ctx.settings.max_watchers_per_session:
        await close(websocket, closecodes.ROOM_FULL)
        return

    # From `join` to the catch-up plan (the first thing `_catch_up` does) nothing awaits, so
    # no frame can slip between the catch-up and the live tail the watcher's outbox receives.
    watcher = Watcher(
        ctx.settings.watcher_queue_frames, hello.since, ctx.settings.watcher_queue_bytes
    )
    batching = _batching(hello, live, ctx)
    live_hub.join(live, watcher)
    try:  # from here on the watcher counts in presence: `leave` whatever happens
        if not await _catch_up(websocket, ctx, hello, live, batching):
            return

        async def on_text(text: str) -> None:
            watcher.outbox.push(
                error_message(ProtocolError("unexpected_message", "watchers only listen")).decode()
            )

        await serve(live_hub, websocket, watcher.outbox, on_text, batching=batching)
    finally:
        live_hub.leave(live, watcher)


async def _catch_up(
    websocket: WebSocket,
    ctx: HubContext,
    hello: Hello,
    live: LiveSession,
    batching: Batching | None,
) -> bool:
    """Send `welcome` and the catch-up (snapshot, or the frames after `since`); False when
    the connection was closed instead (the session ended, or storage failed). Its own
    function so that what it sent is not kept for the connection's life."""
    plan = plan_catch_up(live, hello.since)  # first: see `_watch`
    session_id = live.id
    live_hub = ctx.live
    delay = None if batching is None else round(batching.max_delay_s * 1000)
    node = live_hub.cluster.node
    greeting = welcome(live, "watcher", plan.last_seq, ctx.settings, node, delay)
    try:
        await websocket.send_text(greeting)
        if plan.stored is not None:
            await _send_stored(websocket, live_hub, live, batching, *plan.stored)
        # With `since`, the frames logged after it; otherwise the snapshot, never batched.
        memory = plan.memory
        if batching is not None and hello.since is not None:
            memory = batching.messages(memory)
        for text in memory:
            await websocket.send_text(text)
    except PEER_GONE:
        raise  # the watcher left: nothing to say to it
    except Exception as exc:  # storage failed mid catch-up: resume later
        log.warning("catch-up for session=%s failed: %s", session_id, type(exc).__name__)
        await close(websocket, closecodes.INTERNAL, "catch-up failed; resume with since")
        return False
    if plan.ended:
        await websocket.send_text(encode(Ended(last_seq=plan.last_seq)).decode())
        await close(websocket, closecodes.NORMAL, "session ended")
        return False
    return True


def _batching(hello: Hello, live: LiveSession, ctx: HubContext) -> Batching | None:
    """A protocol 2 watcher's batching, its delay capped by the hub's setting; None for 1."""
    if hello.protocol != PROTOCOL_BATCHED:
        return None
    delay = min(hello.max_delay_ms or 0, ctx.settings.watcher_max_delay_ms)
    return Batching(live.id, delay)


async def _send_stored(
    websocket: WebSocket,
    live_hub: LiveHub,
    live: LiveSession,
    batching: Batching | None,
    after: int,
    upto: int,
) -> None:
    while after < upto:
        page = await live_hub.stored_frames(live.id, after, upto)
        if not page:
            raise LookupError(f"stored frames {after + 1}..{upto} missing")  # a broken invariant
        texts = [text for _, text in page]
        for text in texts if batching is None else batching.messages(texts):
            await websocket.send_text(text)
        after = page[-1][0]
