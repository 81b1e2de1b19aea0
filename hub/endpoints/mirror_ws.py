"""`/ws/sessions/{id}/mirror`: the one mirror of a session streams its frames here."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket

from hub import closecodes, metrics
from hub.context import HubContext, context
from hub.endpoints.connection import close, serve
from hub.endpoints.ws_common import connection_lifetime, handshake, welcome
from hub.frames import End, ProtocolError
from hub.live.admission import Ticket
from hub.live.mirroring import MirrorRules
from hub.live.node import LiveHub, SessionUnavailable
from hub.live.session import LiveSession, MirrorLink
from hub.storage.live_store import StorageUnavailable

log = logging.getLogger("hub.mirror")


@connection_lifetime
async def mirror_endpoint(websocket: WebSocket, ticket: Ticket) -> None:
    ctx = context(websocket)
    live_hub = ctx.live
    opened = await handshake(websocket, ctx, "mirror", ticket)
    if opened is None:
        return
    session_id, _hello, _principal = opened
    try:
        async with live_hub.use(session_id) as live:
            await _stream(websocket, ctx, session_id, live)
    except SessionUnavailable:
        await close(websocket, closecodes.INTERNAL, "storage unavailable; retry")


async def _stream(
    websocket: WebSocket, ctx: HubContext, session_id: uuid.UUID, live: LiveSession | None
) -> None:
    live_hub = ctx.live
    if live is None:
        await close(websocket, closecodes.UNKNOWN_SESSION)
        return
    if live.ended:
        await close(websocket, closecodes.SESSION_ENDED)
        return
    if not live_hub.accepting:
        await close(websocket, closecodes.RESTART)
        return
    link = await live_hub.attach_mirror(live)
    # From here on the session has this mirror; whatever happens (the peer may be gone before
    # the welcome is out), the `finally` lets go of it.
    try:
        await websocket.send_text(
            welcome(live, "mirror", live.last_accepted, ctx.settings, live_hub.cluster.node)
        )
        log.info("mirror connected session=%s last_seq=%d", session_id, live.last_accepted)
        on_text, take_now = _reader(ctx, live, link)
        await serve(live_hub, websocket, link.outbox, on_text, link, take_now=take_now)
    finally:
        live_hub.detach_mirror(live, link)
        log.info("mirror disconnected session=%s stored_seq=%d", session_id, live.stored_seq)


def _reader(
    ctx: HubContext, live: LiveSession, link: MirrorLink
) -> tuple[Callable[[str], Awaitable[None]], Callable[[str], bool]]:
    """What the mirror connection does with each text message (the rules: `MirrorRules`):
    `on_text`, and `take_now` for the usual message, taken as it arrives when it needs no
    waiting (see `hub.endpoints.connection.pump`)."""
    live_hub = ctx.live
    rules = MirrorRules()

    def refuse(exc: ProtocolError) -> None:
        metrics.rejected(exc.code)
        refusal = rules.refused(exc)
        link.outbox.push(refusal.error)
        if refusal.close is not None:
            link.outbox.close(refusal.close, flush=True)

    def take_now(text: str) -> bool:
        """One metrics frame with room in the write buffer: `on_text` without its awaits.
        Anything else is left to `on_text` (False), before anything is done."""
        if not live_hub.accepting or not live.takes_frames_from(link):
            return False
        try:
            msg = rules.read(text)
        except ProtocolError:
            return False  # on_text reads it again, and answers
        if isinstance(msg, End) or not live_hub.admits_now(live, msg, len(text)):
            return False
        error = live_hub.accept(live, msg)
        if error is None:
            rules.taken()
        else:
            refuse(error)
        return True

    async def on_text(text: str) -> None:
        # Shutting down, replaced by a newer connection of this mirror, or the session ended or
        # was erased: the message is not acked here, so the mirror resends it to the hub /
        # connection that now owns the session (or learns the session is over).
        if not live_hub.accepting or not live.takes_frames_from(link):
            return
        try:
            msg = rules.read(text)
            if isinstance(msg, End):
                await _end(live_hub, live, link, msg.last_seq)
                return
            # Backpressure: while this session's share of the buffer is full, this socket is
            # not read, so TCP slows the mirror down; nothing is dropped.
            foreign_tasks = await live_hub.admit(live, msg, len(text))
            if not live_hub.accepting or not live.takes_frames_from(link):
                return
            error = live_hub.accept(live, msg, foreign_tasks)
            if error is not None:
                raise error
            rules.taken()
        except ProtocolError as exc:
            refuse(exc)

    return on_text, take_now


async def _end(live_hub: LiveHub, live: LiveSession, link: MirrorLink, last_seq: int) -> None:
    try:
        ended = await live_hub.end(live, last_seq)
    except StorageUnavailable as exc:
        # The frames are stored, the end is not: the session goes on. The mirror reconnects
        # (1011) and sends `end` again.
        log.warning(
            "end of session=%s not stored (%s); the mirror sends it again",
            live.id,
            exc,
        )
        link.outbox.close(closecodes.INTERNAL, "storage unavailable; send end again")
        return
    link.outbox.push(ended)
    link.outbox.close(closecodes.NORMAL, "session ended", flush=True)
