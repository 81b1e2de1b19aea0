"""`/ws/watch`: one connection watching many sessions (protocol 2 only).

After hello/welcome the client subscribes and unsubscribes; the rules (caps, credentials,
per-session queues and drops, round-robin writing, overview conflation) are in
`hub.live.subscriptions`. Here: the socket's writer, reader and overview timer, the
subscription's join (storage, audit, the catch-up plan) and its leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import msgspec
from starlette.websockets import WebSocket

from hub import closecodes, metrics
from hub.auth import Principal
from hub.context import HubContext, context
from hub.endpoints.connection import (
    CLOSE_FLUSH_TIMEOUT_S,
    RateLimit,
    RawSocket,
    close,
    send_texts,
)
from hub.endpoints.ws_common import connection_lifetime, handshake_many
from hub.frames import (
    LOBBY,
    MAX_BATCH,
    PROTOCOL_BATCHED,
    Ended,
    Hello,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    decode_watch_message,
    encode,
    error_message,
)
from hub.live.admission import Ticket
from hub.live.registry import SessionUnavailable
from hub.live.session import LiveSession
from hub.live.subscriptions import Subscription, Subscriptions, session_error, tagged
from hub.live.watching import CatchUp, plan_catch_up

log = logging.getLogger("hub.watch")

DEFAULT_OVERVIEW_HZ = 4


@connection_lifetime
async def watch_many_endpoint(websocket: WebSocket, ticket: Ticket) -> None:
    ctx = context(websocket)
    opened = await handshake_many(websocket, ctx, ticket)
    if opened is None:
        return
    if not ctx.live.accepting:
        await close(websocket, closecodes.RESTART)
        return
    hello, principal = opened
    await Connection(websocket, ctx, hello, principal).run()


class Connection:
    def __init__(
        self, websocket: WebSocket, ctx: HubContext, hello: Hello, principal: Principal
    ) -> None:
        settings = ctx.settings
        self.websocket = websocket
        self.ctx = ctx
        self.principal = principal
        self.hz_cap = settings.overview_max_hz
        self.subs = Subscriptions(
            settings.watch_max_subscriptions,
            settings.watcher_queue_frames,
            # Every subscription's share of the connection's bytes, so their sum stays bounded.
            min(
                settings.watcher_queue_bytes,
                settings.watch_max_queued_bytes // settings.watch_max_subscriptions,
            ),
            min(hello.overview_hz or DEFAULT_OVERVIEW_HZ, self.hz_cap),
        )
        self.lives: dict[Subscription, LiveSession] = {}  # joined, pinned
        self.opening: set[asyncio.Task[None]] = set()
        self.overviews = asyncio.Event()  # an overview subscription came: the timer runs

    def welcome(self) -> str:
        s = self.ctx.settings
        return encode_dict(
            {
                "type": "welcome",
                "role": "watcher",
                "protocol": PROTOCOL_BATCHED,
                "max_message_bytes": s.ws_max_message_bytes,
                "max_batch": MAX_BATCH,
                "max_subscriptions": s.watch_max_subscriptions,
                "overview_hz": self.subs.overview_hz,
                "node": self.ctx.live.cluster.node,
            }
        )

    async def run(self) -> None:
        await self.websocket.send_text(self.welcome())
        live_hub = self.ctx.live
        task = asyncio.create_task(self._pump())
        live_hub.connection_opened(task)
        metrics.WATCHER_CONNECTIONS.inc()
        try:
            await asyncio.shield(task)
        finally:
            if not task.done():
                task.cancel()
            live_hub.connection_closed(task)
            metrics.WATCHER_CONNECTIONS.dec()
            for opening in self.opening:
                opening.cancel()
            await asyncio.gather(*self.opening, return_exceptions=True)
            live_hub.lobby.listeners.discard(self.subs)
            for key in list(self.subs.subs):
                self.subs.remove(key)
            self._release_gone()

    async def _pump(self) -> None:
        outbox = self.subs.outbox
        writer = asyncio.create_task(self._write())
        reader = asyncio.create_task(self._read())
        timer = asyncio.create_task(self._tick())
        closing = asyncio.create_task(outbox.closing.wait())
        tasks = {writer, reader, timer, closing}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.error("/ws/watch reader failed; closing", exc_info=reader.exception())
                outbox.close(closecodes.INTERNAL)
            if outbox.close_code is not None:
                if outbox.flush_before_close:
                    await asyncio.wait({writer}, timeout=CLOSE_FLUSH_TIMEOUT_S)
                writer.cancel()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT_S):
                        await close(self.websocket, outbox.close_code, outbox.close_reason)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _write(self) -> None:
        subs = self.subs
        outbox = subs.outbox
        raw = RawSocket.of(self.websocket)
        while True:
            await outbox.ready.wait()
            outbox.ready.clear()
            if outbox.close_code is not None and not outbox.flush_before_close:
                return
            while texts := subs.take():
                self._release_gone()
                await send_texts(self.websocket, raw, texts)
            self._release_gone()
            if outbox.close_code is not None:
                return

    async def _tick(self) -> None:
        """The connection's one overview timer (twice per fastest interval, so an update is
        never later than one interval after it is due)."""
        while True:
            interval = self.subs.overview_interval_s
            if interval is None:
                self.overviews.clear()
                await self.overviews.wait()
                continue
            await asyncio.sleep(interval / 2)
            self.subs.tick(time.monotonic())

    async def _read(self) -> None:
        subs = self.subs
        rate = RateLimit(self.ctx.settings.ws_max_messages_per_s)
        while subs.outbox.close_code is None:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if not rate.allow():
                subs.outbox.close(closecodes.RATE_LIMITED)
                return
            text = message.get("text")
            if text is None:
                subs.outbox.close(closecodes.UNSUPPORTED)
                return
            try:
                request = decode_watch_message(text)
            except ProtocolError as exc:
                subs.say(error_message(exc).decode())
                continue
            if isinstance(request, Unsubscribe):
                self._unsubscribe(request.session_id)
            else:
                self._subscribe(request)

    def _unsubscribe(self, key: str) -> None:
        subs = self.subs
        if key == LOBBY and subs.lobby:
            subs.lobby = False
            self.ctx.live.lobby.listeners.discard(subs)
        elif subs.remove(key) is None:
            subs.say(session_error(key, "unknown", "not subscribed"))
            return
        subs.say(encode_dict({"type": "unsubscribed", "session_id": key}))

    def _subscribe(self, request: Subscribe) -> None:
        refused = self.subs.refusal(request, self.principal)
        if refused is not None:
            self.subs.say(refused)
            return
        self.subs.reserve(request.session_id)
        task = asyncio.create_task(self._open(request))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)

    async def _open(self, request: Subscribe) -> None:
        key = request.session_id
        try:
            if key == LOBBY:
                await self._open_lobby()
            else:
                await self._open_session(uuid.UUID(key), request)
        except SessionUnavailable:
            self.subs.say(session_error(key, "unavailable", "storage unavailable; retry"))
        finally:
            self.subs.unreserve(key)

    async def _audit(self, session_id: uuid.UUID | None, action: str) -> bool | None:
        """True once the watch is on the audit trail; False: the session no longer exists;
        None: the trail cannot be written now (no unaudited watching)."""
        try:
            p = self.principal
            return await self.ctx.audit.record_durably(p.subject, p.role, action, session_id)
        except Exception as exc:
            log.warning("audit of a %s failed: %s", action, type(exc).__name__)
            return None

    async def _open_lobby(self) -> None:
        subs = self.subs
        if await self._audit(None, "watch_lobby") is None:
            subs.say(session_error(LOBBY, "unavailable", "storage unavailable; retry"))
            return
        live_hub = self.ctx.live
        # No await from here on: the sessions live now, then every change, nothing between.
        subs.lobby = True
        live_hub.lobby.listeners.add(subs)
        subs.say(encode_dict({"type": "subscribed", "session_id": LOBBY, "mode": "overview"}))
        for text in live_hub.lobby.live_now(live_hub.sessions):
            subs.say(text)

    async def _open_session(self, session_id: uuid.UUID, request: Subscribe) -> None:
        key, subs, live_hub = request.session_id, self.subs, self.ctx.live
        live = await live_hub.sessions.acquire(session_id)
        if live is None:
            subs.say(session_error(key, "unknown", "no such session"))
            return
        joined = False
        try:
            recorded = await self._audit(session_id, "watch")
            if recorded is None:
                subs.say(session_error(key, "unavailable", "storage unavailable; retry"))
            elif not recorded or live.erased:
                subs.say(session_error(key, "unknown", "session was deleted"))
            elif live.watcher_count() >= self.ctx.settings.max_watchers_per_session:
                subs.say(session_error(key, "cap", "the session has its maximum of watchers"))
            elif subs.outbox.close_code is None:
                joined = True
                await self._join(live, request)
        finally:
            if not joined:
                self._unpin(live)

    async def _join(self, live: LiveSession, request: Subscribe) -> None:
        since = request.since if request.mode == "full" else None
        hz = current = None
        if request.mode == "overview":
            hz = min(request.overview_hz or self.subs.overview_hz, self.hz_cap)
            tasks = list(live.room.tasks.values())
            current = _task_fields(tasks[-1]) if tasks else None
        # From `join` to the end of the plan nothing awaits (invariant 3).
        sub = self.subs.add(live.id, since, hz, live.room.published_seq, current)
        self.lives[sub] = live
        self.ctx.live.join(live, sub)
        plan = plan_catch_up(live, since)
        subscribed = {
            "type": "subscribed",
            "session_id": sub.key,
            "mode": request.mode,
            "last_seq": plan.last_seq,
            "acked_seq": live.stored_seq,
        }
        sub.held = plan.stored is not None
        sub.catch_up(encode_dict(subscribed))
        if hz is not None:
            self.overviews.set()
        try:
            if plan.stored is not None:
                await self._send_stored(sub, *plan.stored)
        except Exception as exc:  # storage failed mid catch-up: this subscription resumes
            log.warning("catch-up of session=%s failed: %s", sub.key, type(exc).__name__)
            sub.outbox.close(closecodes.INTERNAL, "catch-up failed")
            return
        self._queue_memory(sub, plan, since)
        if plan.ended:
            sub.catch_up(tagged(encode(Ended(last_seq=plan.last_seq)).decode(), sub.key))
            sub.outbox.close(closecodes.NORMAL, "session ended", flush=True)
        sub.release()

    def _queue_memory(self, sub: Subscription, plan: CatchUp, since: int | None) -> None:
        if since is None:  # the snapshot, never batched
            sub.catch_up(tagged(plan.memory[0], sub.key), plan.last_seq)
            return
        first = plan.last_seq - len(plan.memory) + 1
        sub.catch_up_frames(list(enumerate(plan.memory, first)))

    async def _send_stored(self, sub: Subscription, after: int, upto: int) -> None:
        live_hub = self.ctx.live
        while after < upto and not sub.dropped:
            await sub.drained.wait()  # one page at a time: memory stays bounded
            page = await live_hub.stored_frames(sub.session_id, after, upto)
            if not page:
                raise LookupError(f"stored frames {after + 1}..{upto} missing")
            if sub.dropped:
                return
            sub.catch_up_frames(page)
            after = page[-1][0]

    def _release_gone(self) -> None:
        for sub in self.subs.gone():
            live = self.lives.pop(sub, None)
            if live is not None:
                self.ctx.live.leave(live, sub)
                self._unpin(live)

    def _unpin(self, live: LiveSession) -> None:
        live.unpin()
        self.ctx.live.sessions.evict_if_idle(live)


def _task_fields(task: dict[str, Any]) -> dict[str, Any]:
    return {"task_id": task["id"], "task_name": task["task_name"], "status": task.get("status")}


def encode_dict(message: dict[str, object]) -> str:
    return msgspec.json.encode(message).decode()
