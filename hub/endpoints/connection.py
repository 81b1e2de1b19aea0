"""One WebSocket connection's plumbing: a writer draining its outbox, a reader, the close.

The fan-out only ever appends to an outbox; the awaits on the socket happen here, in tasks of
that connection alone, so a peer that stops reading stalls nobody else. While a watcher's
writer is idle and its socket takes data at once (the server offers `hub.ws_protocol.SEND_NOW`),
what is pushed in one turn of the event loop is written straight to the socket instead
(`DirectWrites`): no task switch, no ASGI send. A socket that cannot take it now hands the
queue back to the writer, which waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from hub import closecodes, metrics
from hub.frames import Ack, Batching, encode
from hub.live.node import LiveHub
from hub.live.sendqueue import SendQueue
from hub.live.session import MirrorLink
from hub.ws_protocol import RECEIVE_NOW, SEND_NOW

log = logging.getLogger("hub.connection")

# How long a closing connection may take to send what it still has, and its close frame.
CLOSE_FLUSH_TIMEOUT_S = 2.0
# The message rate is averaged over this many seconds: a client may send this long's worth
# at once. A mirror that was cut off (or whose network stalled) for 25 s sends what it kept
# in one burst when it is back, one message per frame if it does not batch: 750 messages at
# 30 a second, well within the 2,000 a 200/s limit allows. A flood exhausts it in moments.
RATE_WINDOW_S = 10.0


MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes of UTF-8
# Queued messages go to the socket in one system call up to this size: the transport's
# high-water mark (uvloop's default, which uvicorn keeps), past which it stops taking data.
WRITE_BYTES = 64 * 1024


async def close(websocket: WebSocket, code: closecodes.CloseCode, reason: str = "") -> None:
    text = (reason or code.meaning).encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    metrics.closed(code)
    try:
        await websocket.close(code.code, text)
    except (RuntimeError, OSError, WebSocketDisconnect):  # the peer is gone already
        pass


class RawSocket:
    """The server's write-at-once for one connection (`hub.ws_protocol.SEND_NOW`)."""

    def __init__(self, offer: dict[str, Callable[..., object]]) -> None:
        self.writable: Callable[[], bool] = offer["writable"]  # type: ignore[assignment]
        self.write: Callable[[bytes], None] = offer["write"]  # type: ignore[assignment]
        self.write_all: Callable[[list[bytes]], None] = offer["write_all"]  # type: ignore[assignment]

    @classmethod
    def of(cls, websocket: WebSocket) -> RawSocket | None:
        offer = (websocket.scope.get("extensions") or {}).get(SEND_NOW)
        return cls(offer) if offer else None


async def send_text(websocket: WebSocket, raw: RawSocket | None, text: str) -> None:
    """Send one text message: written at once if the socket takes it, else through ASGI
    (which waits while the peer does not read)."""
    if raw is not None and raw.writable():
        raw.write(text.encode())
    else:
        await websocket.send_text(text)


async def send_texts(websocket: WebSocket, raw: RawSocket | None, texts: list[str]) -> None:
    """Send text messages in order, up to WRITE_BYTES in one write while the socket takes
    data now (one system call for a lobby's tick of overviews), else one by one."""
    pending = deque(texts)
    while pending:
        if raw is not None and raw.writable():
            raw.write_all(one_write(pending.popleft, pending.__len__))
        else:
            await websocket.send_text(pending.popleft())


def next_message(outbox: SendQueue, batching: Batching | None) -> str:
    """Take the next message to send: for a protocol 2 watcher (`batching`) the run of frames
    at the head as one `batch`, else the oldest queued text."""
    if batching is not None:
        frames = outbox.take_frames(batching.max_frames, batching.max_bytes)
        if frames:
            return batching.message(frames)
    return outbox.pop()


def write_next(raw: RawSocket, outbox: SendQueue, batching: Batching | None) -> None:
    """Write the next message of `outbox` to the socket now; for a protocol 1 connection
    with several queued, as many as one write takes (`one_write`: one system call)."""
    if batching is None and len(outbox.items) > 1:
        raw.write_all(one_write(outbox.pop, outbox.items.__len__))
    else:
        raw.write(next_message(outbox, batching).encode())


def one_write(take: Callable[[], str], left: Callable[[], int]) -> list[bytes]:
    """The texts `take` gives, encoded, for one write: at least one, and no more once
    WRITE_BYTES are taken or `left` says none is left (so that what waits in the socket's
    buffer stays bounded by it, as with one message per write, and the rest by the queue's
    own bounds)."""
    first = take().encode()
    messages, size = [first], len(first)
    while size < WRITE_BYTES and left():
        messages.append(take().encode())
        size += len(messages[-1])
    return messages


class TurnEnd:
    """Callbacks to run once each after this turn of the event loop, in the order added, from
    one loop callback: a `call_soon` per watcher and frame cost 1.9 µs (a handle and a copy of
    the context each), a callback here 0.2 µs. One per event loop (`of`)."""

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnEnd] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Callable[[], None]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> TurnEnd:
        turn_end = cls._of_loop.get(loop)
        if turn_end is None:
            turn_end = cls._of_loop[loop] = cls(loop)
        return turn_end

    def add(self, callback: Callable[[], None]) -> None:
        if not self.pending:
            self.loop.call_soon(self.run)
        self.pending.append(callback)

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for callback in pending:
            try:
                callback()
            except Exception as exc:  # as the loop does for a failed callback: report, go on
                self.loop.call_exception_handler(
                    {"message": f"Exception in callback {callback!r}", "exception": exc}
                )


class DirectWrites:
    """An idle watcher writer's stand-in: on a push, the queue is written straight to the
    socket at the end of this turn of the event loop (so a mirror's batch, fanned out in one
    turn, goes to a protocol 2 watcher as one `batch`). When the socket cannot take data
    now, or a close is asked, it wakes the writer instead, which sends what is left."""

    def __init__(self, raw: RawSocket, outbox: SendQueue, batching: Batching | None) -> None:
        self.raw = raw
        self.outbox = outbox
        self.batching = batching
        self.turn_end = TurnEnd.of(asyncio.get_running_loop())
        self.scheduled = False

    def __call__(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.turn_end.add(self.drain)

    def drain(self) -> None:
        self.scheduled = False
        outbox = self.outbox
        if outbox.on_push is not self or not outbox.items:
            return  # the writer is awake and sends what is queued
        if outbox.close_code is None and self.raw.writable():
            metrics.handed_off(len(outbox.items), outbox.oldest_at)
        while outbox.items:
            if outbox.close_code is not None or not self.raw.writable():
                outbox.ready.set()
                return
            write_next(self.raw, outbox, self.batching)


async def run_writer(
    websocket: WebSocket,
    outbox: SendQueue,
    link: MirrorLink | None = None,
    batching: Batching | None = None,
    ack_interval_s: float = 0.0,
) -> None:
    """Drain `outbox` (and, for a mirror, its newest ack) into the socket until a close is
    requested; the caller closes the socket. A send blocks while the peer does not read.
    With `batching` (a protocol 2 watcher) queued frames go out together in `batch` messages;
    a mirror gets at most one ack per `ack_interval_s`."""
    sent_ack = link.acked if link is not None else 0
    ack_sent_at = -ack_interval_s
    sent_at = float("-inf")
    raw = RawSocket.of(websocket)
    # A mirror's outbox holds only replies; with a delay, a watcher's frames must gather.
    direct = None
    if raw is not None and link is None and not (batching and batching.max_delay_s):
        direct = DirectWrites(raw, outbox, batching)
    while True:
        outbox.on_push = direct
        await outbox.wait_ready()
        outbox.on_push = None
        # A mirror's ack goes out before any close, so a shutdown acks what it stored.
        if link is not None and link.acked > sent_ack:
            wait = ack_sent_at + ack_interval_s - time.monotonic()
            if wait > 0 and outbox.close_code is None:
                # Acks are cumulative: the one sent after the pause covers every commit
                # made during it, so a mirror loses nothing by hearing fewer.
                await asyncio.sleep(wait)
            sent_ack = link.acked
            await send_text(websocket, raw, encode(Ack(seq=sent_ack)).decode())
            ack_sent_at = time.monotonic()
            metrics.acked(link.acked_at)
        if outbox.close_code is not None and not outbox.flush_before_close:
            return
        if outbox.items and link is None:
            metrics.handed_off(len(outbox.items), outbox.oldest_at)
        if batching is None or not batching.max_delay_s:
            while outbox.items:
                if raw is not None and raw.writable():
                    write_next(raw, outbox, batching)
                else:
                    await websocket.send_text(next_message(outbox, batching))
        else:
            sent_at = await _send_delayed(websocket, raw, outbox, batching, sent_at)
        if outbox.close_code is not None:
            return


async def _send_delayed(
    websocket: WebSocket,
    raw: RawSocket | None,
    outbox: SendQueue,
    batching: Batching,
    sent_at: float,
) -> float:
    """Send what is queued, each run of frames as `batch` messages, at most one message per
    `max_delay_s` unless a close is pending. When the last message went out."""
    delay = batching.max_delay_s
    while outbox.items:
        if outbox.close_code is None:
            wait = sent_at + delay - time.monotonic()
            if wait > 0:  # frames sent moments ago: let more gather, until a close at most
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(outbox.closing.wait(), wait)
                if outbox.close_code is not None and not outbox.flush_before_close:
                    return sent_at
        await send_text(websocket, raw, next_message(outbox, batching))
        sent_at = time.monotonic()
    return sent_at


def _taking_now(
    take_now: Callable[[str], bool], outbox: SendQueue, rate_limit: RateLimit
) -> Callable[[str], bool]:
    """`take_now` under the reader's rules: nothing once a close is asked; a message past the
    rate is left to the reader (which closes); a failure closes with 1011, as the reader's
    would."""

    def take(text: str) -> bool:
        if outbox.close_code is not None or not rate_limit.has_token():
            return False
        try:
            taken = take_now(text)
        except Exception:
            log.error("connection failed; closing with 1011", exc_info=True)
            outbox.close(closecodes.INTERNAL)
            return True
        if taken:
            rate_limit.tokens -= 1
        return taken

    return take


async def pump(
    websocket: WebSocket,
    outbox: SendQueue,
    on_text: Callable[[str], Awaitable[None]],
    rate: float,
    link: MirrorLink | None = None,
    batching: Batching | None = None,
    ack_interval_s: float = 0.0,
    take_now: Callable[[str], bool] | None = None,
) -> None:
    """Run a connection: a writer task drains the outbox, a reader task hands each text
    message to `on_text`. With `take_now`, where the server offers it (RECEIVE_NOW), a
    message that arrives while the reader waits is first offered to `take_now`, at once;
    what it does not take (returns False, having done nothing) goes to `on_text`. Ends when
    the peer leaves or a close is requested on the outbox; then closes the socket with the
    requested code."""
    rate_limit = RateLimit(rate)
    writer = asyncio.create_task(run_writer(websocket, outbox, link, batching, ack_interval_s))
    reader = asyncio.create_task(_read(websocket, outbox, on_text, rate_limit))
    closing = outbox.closing.waiter()
    offer = (websocket.scope.get("extensions") or {}).get(RECEIVE_NOW)
    if take_now is not None and offer is not None:
        offer["set"](_taking_now(take_now, outbox, rate_limit))
    try:
        await asyncio.wait({writer, reader, closing}, return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        _close_on_failure(reader, outbox)
        if outbox.close_code is not None:
            if outbox.flush_before_close:
                await asyncio.wait({writer}, timeout=CLOSE_FLUSH_TIMEOUT_S)
            writer.cancel()  # a peer that does not read cannot stall us
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_TIMEOUT_S):
                    await close(websocket, outbox.close_code, outbox.close_reason)
    finally:
        if take_now is not None and offer is not None:
            offer["set"](None)
        for task in (writer, reader, closing):
            task.cancel()
        await asyncio.gather(writer, reader, closing, return_exceptions=True)


def _close_on_failure(reader: asyncio.Task[None], outbox: SendQueue) -> None:
    """The reader failed (a bug, or storage failing where it was not expected): say so with
    the traceback and close with 1011, so the client resumes instead of seeing a bare drop."""
    if not reader.done() or reader.cancelled() or outbox.close_code is not None:
        return
    exc = reader.exception()
    if exc is None or isinstance(exc, (WebSocketDisconnect, WebSocketDisconnected)):
        return  # the peer is gone: nobody to tell
    log.error("connection failed; closing with 1011", exc_info=exc)
    outbox.close(closecodes.INTERNAL)


async def serve(
    node: LiveHub,
    websocket: WebSocket,
    outbox: SendQueue,
    on_text: Callable[[str], Awaitable[None]],
    link: MirrorLink | None = None,
    batching: Batching | None = None,
    take_now: Callable[[str], bool] | None = None,
) -> None:
    """Run one connection until it ends; the node's shutdown waits for every one of them.
    `batching`: a protocol 2 watcher's; `take_now`: see `pump`."""
    rate = node.settings.ws_max_messages_per_s
    ack_interval_s = 1 / node.settings.ack_max_hz
    # The endpoint's own task (no task of its own: an idle watcher keeps few objects).
    task = asyncio.current_task()
    assert task is not None
    node.connection_opened(task)
    gauge = metrics.MIRROR_CONNECTIONS if link is not None else metrics.WATCHER_CONNECTIONS
    gauge.inc()
    try:
        await pump(websocket, outbox, on_text, rate, link, batching, ack_interval_s, take_now)
    finally:
        node.connection_closed(task)
        gauge.dec()


class RateLimit:
    """Token bucket: `rate` messages a second on average over RATE_WINDOW_S; a full bucket
    holds that window's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = rate * RATE_WINDOW_S
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def has_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens >= 1

    def allow(self) -> bool:
        """Take a token for a message, if there is one."""
        if not self.has_token():
            return False
        self.tokens -= 1
        return True


async def _read(
    websocket: WebSocket,
    outbox: SendQueue,
    on_text: Callable[[str], Awaitable[None]],
    rate_limit: RateLimit,
) -> None:
    while outbox.close_code is None:
        message = await websocket.receive()
        if message["type"] != "websocket.disconnect" and not rate_limit.allow():
            outbox.close(closecodes.RATE_LIMITED)
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            outbox.close(closecodes.UNSUPPORTED)
            return
        await on_text(text)
