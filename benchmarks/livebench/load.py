"""The load generator: mirrors that send metric frames on an absolute schedule, and watchers
that follow them, all in this one process (asyncio + uvloop).

Two WebSocket clients: `lean` (the default), a minimal RFC 6455 client cheap enough that one
core drives hundreds of mirrors and their watchers, and `websockets`, the library's client,
to cross-check it. Every message goes to a callback (no task switch per message), which
keeps the books of verify.py: what each mirror sent and had acked, what each watcher got."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask  # C implementation when websockets has speedups

from .results import Load
from .targets import Server
from .verify import Received, Sent, complete, most_missing

CONNECT_CONCURRENCY = 64

FRAME = (
    '{"type":"metrics","seq":%d,"ts":%.6f,"values":{"accuracy":%.4f,"stability":%.4f,'
    '"max_angle":%.2f},"task_id":"%s"}'
)

# Called with (one message's bytes, the time its TCP read returned) for every message after
# `welcome`.
OnMessage = Callable[[bytes, float], None]


class Closed(Exception):
    """The server closed the connection (or it dropped)."""


class Connection:
    """What the generator needs from a WebSocket client: open, hello, send, close. Incoming
    messages go to a callback, so a message costs no task switch."""

    # The code of the server's close frame (1006: the connection dropped without one); None
    # while open, or when this side closed it.
    close_code: int | None = None

    async def send(self, text: str) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class LeanConnection(asyncio.Protocol, Connection):
    """A minimal RFC 6455 client for load generation: no extensions (no compression), text
    frames only, frames parsed straight out of `data_received`, masks applied with websockets'
    C helper. About five times cheaper per message than a full client, so one generator core
    can drive hundreds of mirrors and their watchers. `--client websockets` cross-checks it."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host: str, port: int, path: str, on_message: OnMessage) -> None:
        self.request_key = base64.b64encode(os.urandom(16))
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.request_key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.writable: asyncio.Future[None] | None = None  # set while the server pushes back
        self.closed = False
        self.fragments: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:  # neither a close frame nor our abort
            self.close_code = 1006
        self.closed = True
        for future in (self.opened, self.welcomed, self.writable):
            if future is not None and not future.done():
                future.set_exception(Closed("connection lost"))

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def data_received(self, data: bytes) -> None:
        received = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self.request_key + self.GUID).digest())
            if not head.startswith("HTTP/1.1 101") or accept.decode() not in head:
                self.opened.set_exception(Closed(f"upgrade refused: {head.splitlines()[0]}"))
                self.abort()
                return
            self.upgraded = True
            self.opened.set_result(None)
        self._frames(received)

    def _frames(self, received: float) -> None:
        buffer, size, pos = self.buffer, len(self.buffer), 0
        while size - pos >= 2:
            first, length = buffer[pos], buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = bytes(buffer[pos + head : pos + head + length])
            pos += head + length
            opcode = first & 0x0F
            if opcode in (1, 2, 0):  # text, binary, continuation
                if not first & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments.clear()
                self._message(payload, received)
            elif opcode == 9:  # ping
                self._write(0x8A, payload)
            elif opcode == 8:  # close: answer it, then let the server end TCP
                self._write(0x88, payload[:2])
                self.closed = True
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_code = code
                if not self.welcomed.done():
                    self.welcomed.set_exception(Closed(f"closed with {code} before welcome"))
        del buffer[:pos]

    def _message(self, payload: bytes, received: float) -> None:
        if self.welcomed.done():
            self.on_message(payload, received)
            return
        message = orjson.loads(payload)
        if message.get("type") == "welcome":
            self.welcomed.set_result(None)
        elif message.get("type") == "error":
            self.welcomed.set_exception(Closed(f"hello refused: {message}"))

    def _write(self, opcode_byte: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        length = len(payload)
        if length < 126:
            head = bytes((opcode_byte, 0x80 | length))
        elif length < 65536:
            head = bytes((opcode_byte, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((opcode_byte, 0x80 | 127)) + length.to_bytes(8, "big")
        mask = random.randbytes(4)  # masking is about proxies, not secrecy
        self.transport.write(head + mask + apply_mask(payload, mask))

    # Connection
    async def send(self, text: str) -> None:
        if self.closed:
            raise Closed("connection closed")
        self._write(0x81, text.encode())
        if self.writable is not None:  # TCP backpressure: wait like a real client would
            await self.writable

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, hello: str, on_message: OnMessage
    ) -> LeanConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: cls(host, port, path, on_message), host, port
        )
        await asyncio.wait_for(conn.opened, 60)
        conn._write(0x81, hello.encode())
        await asyncio.wait_for(conn.welcomed, 60)
        return conn


class LibraryConnection(Connection):
    """The same through the `websockets` client (compression=None): the reference."""

    def __init__(self, ws: ClientConnection, on_message: OnMessage) -> None:
        self.ws = ws
        self.on_message = on_message
        self.reader: asyncio.Task[None] | None = None
        self.closed = False

    async def _read(self) -> None:
        now = time.time
        try:
            async for raw in self.ws:
                self.on_message(raw if isinstance(raw, bytes) else raw.encode(), now())
        except ConnectionClosed:
            pass
        self.closed = True
        self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            self.closed = True
            raise Closed(str(exc)) from None

    def abort(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        self.ws.transport.abort()

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, hello: str, on_message: OnMessage
    ) -> LibraryConnection:
        ws = await connect(
            f"ws://{host}:{port}{path}",
            compression=None,
            ping_interval=None,  # an overloaded server must not look like a dead one
            max_size=2**20,
            open_timeout=60,
            close_timeout=1,
        )
        await ws.send(hello)
        while True:  # `welcome` (watchers then get a snapshot, which on_message sees)
            message = orjson.loads(await ws.recv())
            if message["type"] == "welcome":
                break
            if message["type"] == "error":
                ws.transport.abort()
                raise Closed(f"hello refused: {message}")
        conn = cls(ws, on_message)
        conn.reader = asyncio.create_task(conn._read())
        return conn


CLIENTS: dict[str, Any] = {"lean": LeanConnection, "websockets": LibraryConnection}


class Mirror:
    """One session's mirror: its connection and task, what it sent (`log`), error frames."""

    __slots__ = ("conn", "errors", "id", "log", "task_id")

    def __init__(self, session_id: uuid.UUID, frames: int) -> None:
        self.id = session_id
        self.task_id = str(uuid.uuid4())
        self.log = Sent(frames)
        self.errors = 0
        self.conn: Connection | None = None


class Watcher:
    """One watcher of one session: its connection, and what it received of the mirror."""

    __slots__ = ("conn", "log")

    def __init__(self, mirror: Mirror, frames: int) -> None:
        self.log = Received(mirror.log, frames)
        self.conn: Connection | None = None


class Generator:
    def __init__(self, server: Server, load: Load, client: str = "lean") -> None:
        self.server = server
        self.load = load
        self.client = CLIENTS[client]
        self.mirrors: list[Mirror] = []
        self.watchers: list[Watcher] = []
        self.latencies = array("d")
        self.ack_latencies = array("d")
        self.send_lags = array("d")
        self.last_delivery = 0.0
        self.unexpected = 0  # error frames, and sends on a connection the server closed

    async def connect_all(self, session_ids: list[uuid.UUID]) -> None:
        frames = self.load.frames_per_mirror
        self.mirrors = [Mirror(s, frames) for s in session_ids]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        watcher_hello = self.server.hello("watcher", session_ids[0])

        async def watcher(mirror: Mirror) -> None:
            state = Watcher(mirror, frames)
            self.watchers.append(state)
            async with gate:
                state.conn = await self.client.open(
                    "127.0.0.1",
                    self.server.watch_port,
                    f"/ws/sessions/{mirror.id}/watch",
                    watcher_hello,
                    self._on_watch(state.log),
                )

        async def mirror(state: Mirror) -> None:
            async with gate:
                state.conn = await self.client.open(
                    "127.0.0.1",
                    self.server.mirror_port,
                    f"/ws/sessions/{state.id}/mirror",
                    self.server.hello("mirror", state.id),
                    self._on_ack(state),
                )

        # Watchers first, so they see every frame from seq 1 on.
        await asyncio.gather(*(watcher(m) for m in self.mirrors for _ in range(self.load.watchers)))
        await asyncio.gather(*(mirror(m) for m in self.mirrors))

    def _on_watch(self, log: Received) -> OnMessage:
        """A watcher's messages: one frame each, or (protocol 2) a `batch` of frames, each
        counted as one delivery (snapshot and presence are skipped)."""
        latencies, loads, record = self.latencies, orjson.loads, log.record

        def on_message(raw: bytes, received: float) -> None:
            message = loads(raw)
            kind = message["type"]
            if kind == "batch":
                for frame in message["frames"]:
                    latencies.append(received - frame["ts"])
                    record(frame["seq"])
                self.last_delivery = received
                return
            if kind != "metrics" and kind != "task":
                if kind == "error":
                    self.unexpected += 1
                return  # snapshot, presence
            latencies.append(received - message["ts"])
            self.last_delivery = received
            record(message["seq"])

        return on_message

    def _on_ack(self, state: Mirror) -> OnMessage:
        ack_latencies, loads, record_ack = self.ack_latencies, orjson.loads, state.log.record_ack

        def on_message(raw: bytes, received: float) -> None:
            message = loads(raw)
            if message["type"] == "ack":
                record_ack(message["seq"], received, ack_latencies)
            elif message["type"] == "error":
                state.errors += 1

        return on_message

    async def stream(self, start: float) -> None:
        """Every mirror sends its frames at `rate` Hz from loop time `start`, phases spread
        evenly over one period so the server sees a steady flow, not bursts."""
        loop = asyncio.get_running_loop()
        rate, frames, count = self.load.rate, self.load.frames_per_mirror, len(self.mirrors)
        lags, now = self.send_lags, time.time

        async def one(index: int, state: Mirror) -> None:
            conn = state.conn
            assert conn is not None
            first = start + index / count / rate
            task_id, log = state.task_id, state.log
            sent_at = log.sent_at
            try:
                for k in range(frames):
                    due = first + k / rate
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    lags.append(loop.time() - due)
                    seq = k + 1
                    wave = (seq % 97) / 97
                    values = (0.8 + 0.15 * wave, 0.7 + 0.2 * wave, 150 * wave)
                    sent_at[seq] = ts = now()
                    await conn.send(FRAME % (seq, ts, *values, task_id))
                    log.sent = seq
            except Closed:
                self.unexpected += 1

        await asyncio.gather(*(one(i, m) for i, m in enumerate(self.mirrors)))

    def sent(self) -> list[Sent]:
        return [m.log for m in self.mirrors]

    def received(self) -> list[Received]:
        return [w.log for w in self.watchers]

    def backlog_seconds(self) -> float:
        """How far behind the slowest watcher is right now, in seconds of the mirror's rate."""
        return most_missing(self.received()) / self.load.rate

    def complete(self) -> bool:
        return complete(self.sent(), self.received())

    def connections(self) -> list[Connection]:
        conns = [w.conn for w in self.watchers] + [m.conn for m in self.mirrors]
        return [conn for conn in conns if conn is not None]

    def closes(self) -> dict[str, int]:
        """How many connections the server closed (or dropped), by close code."""
        codes = Counter(str(c.close_code) for c in self.connections() if c.close_code is not None)
        return dict(sorted(codes.items()))

    async def close(self) -> None:
        for conn in self.connections():
            conn.abort()
