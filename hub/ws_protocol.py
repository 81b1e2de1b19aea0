"""uvicorn's WebSocket protocol (websockets' sans-I/O implementation), with what the hub adds:

- uvicorn logs a traceback for each text message that is not UTF-8; that is bad input, not a
  fault of the hub: one info line, and the same close (1007).
- A write-at-once for the app (scope extension `SEND_NOW`: `writable()`, `write(payload)` and
  `write_all(payloads)`, several messages in one system call), so a watcher's frame reaches
  its socket without a task switch and ASGI's send path (`hub.endpoints.connection`).
- Lighter per-connection state (`ReceiveQueue`, `Flag`), since thousands of idle watchers
  each keep one of everything.
- A take-at-once for the app (scope extension `RECEIVE_NOW`): a text message that arrives
  while the app's reader waits with nothing queued is offered to a handler the app set,
  synchronously; taken, it skips the queue, the reader's task switch and ASGI's receive
  (`hub.endpoints.mirror_ws`: a mirror's usual frame). At most one message per read from
  the socket is offered, so a burst still goes through the queue, one message per turn.
- A read-at-once for the usual client message, one masked, unfragmented text frame
  (`read_frames`): parsed here instead of by websockets' generator-based parser, which was
  the largest cost of a mirror's frame after the system calls. Every other frame goes to
  websockets, so pings, fragments, closes and protocol errors behave exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol, State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets without its C extension
    from websockets.utils import apply_mask

from hub import closecodes
from hub.flag import Flag

log = logging.getLogger("hub.edge")

# The scope extensions under which a WebSocket connection offers its write-at-once and its
# take-at-once.
SEND_NOW = "hub.send_now"
RECEIVE_NOW = "hub.receive_now"


def text_frame(payload: bytes) -> bytes:
    """`payload` as one unmasked, unfragmented text frame (RFC 6455 section 5.2): what a
    server sends, byte for byte what websockets would build for it without extensions."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


# The first byte of the only frame the hub parses itself: FIN, no RSV bits, opcode 1 (text).
FINAL_TEXT = 0x81
_PING, _PONG = 0x89, 0x8A  # complete control frames go to websockets one by one
_AT_EOF = StreamReader.at_eof.__code__


def at_frame_boundary(conn: Protocol) -> bool:
    """Whether websockets' parser is waiting for the first byte of a new message with nothing
    buffered: only then may the bytes that follow be parsed elsewhere. Its parser is a chain
    of generators; between frames the innermost is `StreamReader.at_eof`. (Should a future
    websockets parse differently, this is False and websockets parses everything.) Also
    False while websockets logs every frame (its logger at DEBUG): that log stays whole."""
    if (
        conn.debug
        or conn.reader.buffer
        or conn.state is not State.OPEN
        or conn.current_size is not None
    ):
        return False
    gen: Any = conn.parser
    while gen.gi_yieldfrom is not None:
        gen = gen.gi_yieldfrom
    return gen.gi_code is _AT_EOF


class ReceiveQueue:
    """What uvicorn's WebSocket protocol uses of its `asyncio.Queue` (put_nowait, get,
    empty), lighter: an asyncio.Queue makes three deques (2.3 KB) per connection, and each
    `get` that waits looks the loop up again (a getpid system call on Python 3.11). One
    consumer at a time, as ASGI's `receive` has: a second concurrent `get` is an error."""

    __slots__ = ("_getter", "_items", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: list[Any] = []
        self._getter: asyncio.Future[None] | None = None
        self._loop = loop

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def consumer_waiting(self) -> bool:
        """Whether the consumer waits in `get` with nothing queued (so it is not in the middle
        of handling an earlier item)."""
        return not self._items and self._getter is not None and not self._getter.done()

    async def get(self) -> Any:
        while not self._items:
            if self._getter is not None and not self._getter.done():
                raise RuntimeError("a WebSocket message is already being received")
            getter = self._getter = self._loop.create_future()
            try:
                await getter
            finally:
                self._getter = None
        return self._items.pop(0)


class QuietWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lighter than what uvicorn makes (each idle watcher keeps them; see ReceiveQueue).
        self.received = ReceiveQueue(self.loop)
        self.queue = self.received  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()  # as uvicorn's: writable until the transport pauses writing
        # Bytes received and not parsed yet while the hub parses frames itself (None while
        # websockets does, as during the handshake).
        self.unparsed: bytearray | None = None
        # The app's take-at-once handler (RECEIVE_NOW), and whether this read from the socket
        # has offered it a message already.
        self.take_now: Callable[[str], bool] | None = None
        self.offered_now = False

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # uvicorn keeps the upgrade request and response (headers and all) for the
            # connection's life; nothing reads them after the handshake.
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the upgrade was refused
        if scope is not None:
            scope["extensions"][SEND_NOW] = {
                "writable": self.writable_now,
                "write": self.write_text,
                "write_all": self.write_texts,
            }
            scope["extensions"][RECEIVE_NOW] = {"set": self.set_take_now}

    def set_take_now(self, handler: Callable[[str], bool] | None) -> None:
        """From now on (until set to None) offer `handler` each text message that arrives
        while the app's reader waits with nothing queued; a message it takes (returns True)
        is not queued. It runs in the protocol's callback: it must not raise, nor block."""
        self.take_now = handler

    def writable_now(self) -> bool:
        """Whether `write_text` may be called: the connection is open for messages and its
        buffer below the high-water mark (else the app sends through ASGI, which waits)."""
        return not (
            self.close_sent
            or self.disconnected
            or not self.handshake_complete
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.conn.extensions
            or self.transport.is_closing()
        )

    def write_text(self, payload: bytes) -> None:
        """Write the UTF-8 text message `payload` to the socket now; only after `writable_now`.

        Why: a watcher's frame goes out in one synchronous call instead of through a writer
        task, Starlette's and uvicorn's send and websockets' frame builder (measured with
        benchmarks/live_bench.py: the largest cost per delivery after the system call).
        Data frames leave websockets' state untouched, so its close handshake and pings go
        on as before. With an extension negotiated (per-message deflate, off in `hub
        serve`) `writable_now` is False: the frame would have to go through it."""
        self.transport.write(text_frame(payload))

    def write_texts(self, payloads: list[bytes]) -> None:
        """`write_text` for each of `payloads`, in one system call (a writev) instead of one
        each: what a watcher has queued, or a lobby connection's overviews of one tick."""
        if len(payloads) == 1:
            self.transport.write(text_frame(payloads[0]))
        else:
            self.transport.writelines([text_frame(payload) for payload in payloads])

    def data_received(self, data: bytes) -> None:
        self.offered_now = False
        if self.unparsed is None:
            if not (
                self.handshake_complete and not self.close_sent and at_frame_boundary(self.conn)
            ):
                super().data_received(data)
                return
            self.unparsed = bytearray()
        self.unparsed += data
        self.read_frames()

    def read_frames(self) -> None:
        """Take the complete frames at the head of `unparsed`: a final, masked text frame is
        unmasked and queued for the app here; a complete ping or pong (at most 125 bytes, as
        RFC 6455 allows) goes to websockets alone; at anything else (a fragment, binary, a
        close, a frame over the size limit, a protocol error) the rest goes to websockets,
        which parses from then on (until it is between messages again: `at_frame_boundary`)."""
        buffer = self.unparsed
        assert buffer is not None
        conn = self.conn
        max_size = conn.max_message_size
        start = 0
        end = len(buffer)
        while end - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            length = second & 0x7F
            head = start + 2
            if length == 126:
                head = start + 4
                length = int.from_bytes(buffer[start + 2 : head]) if end >= head else -1
            elif length == 127:
                head = start + 10
                length = int.from_bytes(buffer[start + 2 : head]) if end >= head else -1
            if length < 0:
                break  # the length is not all here yet
            usual = (
                first == FINAL_TEXT
                and second & 0x80  # masked, as every client frame must be
                and (max_size is None or length <= max_size)
                and not self.close_sent
                and conn.state is State.OPEN
            )
            if not usual and (first not in (_PING, _PONG) or length > 125):
                self.unparsed = None
                super().data_received(bytes(buffer[start:]))
                return
            frame_end = head + 4 + length if second & 0x80 else head + length
            if end < frame_end:
                break
            if not usual:  # a control frame: websockets answers a ping
                super().data_received(bytes(buffer[start:frame_end]))
                if not at_frame_boundary(conn):
                    self.unparsed = None
                    if frame_end < end:
                        super().data_received(bytes(buffer[frame_end:]))
                    return
            else:
                mask = bytes(buffer[head : head + 4])
                self.curr_msg_data_type = "text"
                self.frames = [apply_mask(buffer[head + 4 : frame_end], mask)]
                self.send_receive_event_to_app()
            start = frame_end
        del buffer[:start]

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, for text messages decoded once (uvicorn's decodes, and the check for
        invalid UTF-8 had to decode first)."""
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        try:
            text = data.decode()
        except UnicodeDecodeError:
            client = self.client[0] if self.client else "unknown client"
            log.info("%s: text message is not UTF-8; closed with 1007", client)
            self.conn.send_close(closecodes.INVALID_TEXT.code, closecodes.INVALID_TEXT.meaning)
            self.handle_parser_exception()
            return
        take_now = self.take_now
        if take_now is not None and not self.offered_now and self.received.consumer_waiting():
            self.offered_now = True
            if take_now(text):
                return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:  # until the app has read it (uvicorn's backpressure)
            self.read_paused = True
            self.transport.pause_reading()
