"""The hub parses a client's usual frame (final, masked, text) itself and hands every other
frame to websockets (hub/ws_protocol.py). These tests speak WebSocket byte by byte over a raw
TCP socket to a real hub, in the chunkings and frame mixes a network and a client may produce,
and check that what reaches the hub is exactly the messages sent: acked in order, pings
answered, fragments joined, protocol errors closed with websockets' codes."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from tests.support.live import HubProcess, create_session, metrics_frame, token

StartHub = Callable[..., Awaitable[HubProcess]]

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """One client frame (RFC 6455 section 5.2)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(message: dict[str, Any]) -> bytes:
    return frame(TEXT, orjson.dumps(message))


class RawClient:
    """A WebSocket client with no library: the handshake, then frames as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, hub: HubProcess, path: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def write(self, data: bytes, chunk: int | None = None) -> None:
        """Send `data`, in pieces of `chunk` bytes each written and drained on its own."""
        step = chunk or len(data)
        for start in range(0, len(data), step):
            self.writer.write(data[start : start + step])
            await self.writer.drain()

    async def read(self) -> tuple[int, bytes]:
        """The next frame from the hub (unmasked, unfragmented): its opcode and payload."""
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(size)

    async def message(self) -> dict[str, Any]:
        opcode, payload = await self.read()
        assert opcode == TEXT, (opcode, payload)
        result: dict[str, Any] = orjson.loads(payload)
        return result

    async def acked(self, seq: int) -> None:
        while True:
            message = await self.message()
            assert message["type"] == "ack", message
            if message["seq"] == seq:
                return

    async def close_code(self) -> int:
        """Read until the hub's close frame; its code."""
        while True:
            opcode, payload = await self.read()
            if opcode == CLOSE:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def mirror(hub: HubProcess, session_id: str) -> RawClient:
    client = await RawClient.open(hub, f"/ws/sessions/{session_id}/mirror")
    await client.write(text({"type": "hello", "token": token("mirror", session_id)}))
    welcome = await client.message()
    assert welcome["type"] == "welcome", welcome
    return client


def frames(first: int, last: int) -> bytes:
    return b"".join(text(metrics_frame(seq)) for seq in range(first, last + 1))


@pytest.mark.timeout(60)
async def test_frames_in_any_chunking_with_control_frames_between(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_WS_MAX_MESSAGES_PER_S="100000")
    session_id = await create_session(hub.http)
    client = await mirror(hub, session_id)
    async with asyncio.timeout(40):
        # One byte at a time: every frame arrives in pieces, its length field too.
        await client.write(frames(1, 3), chunk=1)
        await client.acked(3)
        # Forty frames in one write, then pieces that cut frames anywhere.
        await client.write(frames(4, 43))
        await client.acked(43)
        await client.write(frames(44, 60), chunk=7)
        await client.acked(60)
        # A frame whose length takes 16 bits.
        await client.write(text(metrics_frame(61, **{f"m{i}": float(i) for i in range(30)})))
        await client.acked(61)
        # A ping between two frames in one write: answered with its payload, both frames taken.
        await client.write(frames(62, 62) + frame(PING, b"are you there") + frames(63, 63))
        opcode, payload = await client.read()
        assert (opcode, payload) == (PONG, b"are you there")
        await client.acked(63)
        # A pong nobody asked for is ignored.
        await client.write(frame(PONG, b"x") + frames(64, 64), chunk=3)
        await client.acked(64)
        # A fragmented message: websockets joins it; the frames after it are parsed as usual.
        message = orjson.dumps(metrics_frame(65))
        fragmented = (
            frame(TEXT, message[:10], fin=False)
            + frame(PING, b"mid-message")
            + frame(CONTINUATION, message[10:30], fin=False)
            + frame(CONTINUATION, message[30:])
        )
        await client.write(fragmented + frames(66, 67), chunk=5)
        opcode, payload = await client.read()
        assert (opcode, payload) == (PONG, b"mid-message")
        await client.acked(67)
    await client.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(TEXT, orjson.dumps(metrics_frame(2)), masked=False), 1002),  # clients must mask
        (frame(CONTINUATION, b"{}"), 1002),  # no message to continue
        (frame(TEXT, b'{"type": "metrics", "seq": 2, "x": "\xff"}'), 1007),  # not UTF-8
        (frame(TEXT, b"x" * 70_000), 1009),  # past HUB_WS_MAX_MESSAGE_BYTES (65,536)
        (bytes((0x81 | 0x40, 0x80)) + os.urandom(4), 1002),  # a reserved bit set
        (frame(TEXT, b"{}", fin=False) + frames(2, 2), 1002),  # a new message mid-message
        # A ping that says 1 TB: websockets checks the size first (the hub buffers none of it).
        (bytes((0x89, 0xFF)) + struct.pack("!Q", 1 << 40) + os.urandom(4), 1009),
    ],
    ids=["unmasked", "stray-continuation", "not-utf8", "too-large", "rsv1", "interleaved", "ping"],
)
async def test_protocol_errors_close_as_websockets_does(
    start_hub: StartHub, bad: bytes, code: int
) -> None:
    hub = await start_hub()
    session_id = await create_session(hub.http)
    client = await mirror(hub, session_id)
    async with asyncio.timeout(30):
        await client.write(frames(1, 1))
        await client.acked(1)
        await client.write(bad)
        assert await client.close_code() == code
    await client.close()
    # The session goes on: the next mirror connection continues after seq 1.
    client = await mirror(hub, session_id)
    async with asyncio.timeout(10):
        await client.write(frames(2, 2), chunk=2)
        await client.acked(2)
    await client.close()


@pytest.mark.timeout(60)
async def test_a_new_message_between_fragments_closes_1002(start_hub: StartHub) -> None:
    """A ping between the fragments of a message is answered (the hub reads frames while a
    message is incomplete), and a new text message before the last fragment is a protocol
    error even when it arrives on its own, as the usual frame the hub parses itself."""
    hub = await start_hub()
    session_id = await create_session(hub.http)
    client = await mirror(hub, session_id)
    async with asyncio.timeout(30):
        await client.write(frame(TEXT, b'{"type": ', fin=False) + frame(PING, b"1"))
        assert await client.read() == (PONG, b"1")
        await client.write(frame(PING, b"2"))
        assert await client.read() == (PONG, b"2")
        await client.write(frames(1, 1))
        assert await client.close_code() == 1002
    await client.close()
