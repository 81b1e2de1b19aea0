"""Acceptance: the hub's edges under attack and bad luck, each against a real hub process.

- Erasure during a database outage answers 503 and changes nothing; after it, 4004.
- Mirrors that reset the connection right after `hello` leave no ghost mirror behind.
- Sockets that never say `hello` do not lock a real client of the same address out.
- Oversized and trickled request heads, slow and aborted bodies, invalid UTF-8, foreign
  Host names: each answered or closed cleanly.
- A reconnect's backlog is not a flood; a flood is.

Every test also checks that the hub's log holds no traceback: bad input is not a hub fault.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub.live.admission import Admission
from hub.storage.embedded import start_embedded
from tests.support.database import upgrade
from tests.support.live import (
    HubProcess,
    RedisServer,
    closed_with,
    create_session,
    metrics_frame,
    open_client,
    recv,
    recv_until,
    require_redis_server,
    send,
    staff_headers,
    token,
    wait_acked,
)

StartHub = Callable[..., Awaitable[HubProcess]]


def assert_clean_log(hub: HubProcess) -> None:
    log = hub.logs()
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log


async def wait_for_log(hub: HubProcess, text: str, times: int = 1, timeout: float = 10.0) -> None:
    """The hub's log is remote state: read it until `text` shows up `times` times."""
    async with asyncio.timeout(timeout):
        while hub.logs().count(text) < times:  # noqa: ASYNC110 - another process's file
            await asyncio.sleep(0.05)


def reset_on_close(writer_or_transport: asyncio.BaseTransport) -> None:
    """SO_LINGER 0: closing sends a TCP RST instead of a FIN (a client that vanished)."""
    sock = writer_or_transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# Erasure -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_erase_during_outage_changes_nothing(start_hub: StartHub, pg_data_dir: Path) -> None:
    pg = await asyncio.to_thread(start_embedded, pg_data_dir)
    try:
        engine = create_async_engine(pg.url)
        await upgrade(engine)
        await engine.dispose()
        hub = await start_hub(pg.url)
        session_id = await create_session(hub.http)
        ending_id = await create_session(hub.http)
        admin = staff_headers("admin")
        url = f"{hub.http}/sessions/{session_id}"

        async with (
            open_client(hub.ws, session_id, "mirror") as (mirror, _),
            open_client(hub.ws, session_id, "watch") as (watcher, _),
            open_client(hub.ws, ending_id, "mirror") as (ender, _),
        ):
            assert (await recv(watcher))["type"] == "snapshot"
            for seq in range(1, 11):
                await send(mirror, metrics_frame(seq))
            await wait_acked(mirror, 10)
            for seq in range(1, 4):
                await send(ender, metrics_frame(seq))
            await wait_acked(ender, 3)

            await asyncio.to_thread(pg.stop)
            async with httpx.AsyncClient(headers=admin) as http:
                refused = await http.delete(url, timeout=30)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "database_unavailable"

            # `end` cannot be stored now: 1011 (resume), and the log says why.
            await send(ender, {"type": "end", "last_seq": 3})
            code, _ = await closed_with(ender, timeout=30)
            assert code == 1011

            # The session still exists: its mirror streams on, its watcher watches.
            for seq in range(11, 21):
                await send(mirror, metrics_frame(seq))
            while (await recv_until(watcher, "metrics"))["seq"] < 20:
                pass

            pg = await asyncio.to_thread(start_embedded, pg_data_dir)
            await wait_acked(mirror, 20, timeout=60)  # stored after the outage

            async with httpx.AsyncClient(headers=admin) as http:
                erased = await http.delete(url, timeout=30)
            assert erased.status_code == 200, erased.text
            assert (await closed_with(mirror))[0] == 4004
            assert (await closed_with(watcher))[0] == 4004

        # The session whose end failed is not lost: sent again, it ends.
        async with open_client(hub.ws, ending_id, "mirror") as (ender, welcome):
            assert welcome["last_seq"] == 3
            await send(ender, {"type": "end", "last_seq": 3})
            assert (await recv_until(ender, "ended"))["last_seq"] == 3
        assert f"end of session={ending_id} not stored" in hub.logs()
        assert_clean_log(hub)
    finally:
        await asyncio.to_thread(pg.stop)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_erase_across_nodes_only_after_commit(start_hub: StartHub, pg_data_dir: Path) -> None:
    """Two hub processes joined by Redis: the other node's watcher is told 4004 only once the
    erasure committed, not when it was attempted during an outage."""
    require_redis_server()
    redis = RedisServer()
    await asyncio.to_thread(redis.start)
    pg = await asyncio.to_thread(start_embedded, pg_data_dir)
    try:
        engine = create_async_engine(pg.url)
        await upgrade(engine)
        await engine.dispose()
        a = await start_hub(pg.url, HUB_BACKPLANE=redis.url)
        b = await start_hub(pg.url, HUB_BACKPLANE=redis.url)
        session_id = await create_session(a.http)
        url = f"{a.http}/sessions/{session_id}"
        admin = staff_headers("admin")
        async with (
            open_client(a.ws, session_id, "mirror") as (mirror, _),
            open_client(b.ws, session_id, "watch") as (watcher, _),
        ):
            assert (await recv(watcher))["type"] == "snapshot"
            await send(mirror, metrics_frame(1))
            await wait_acked(mirror, 1)
            assert (await recv_until(watcher, "metrics"))["seq"] == 1

            await asyncio.to_thread(pg.stop)
            async with httpx.AsyncClient(headers=admin) as http:
                assert (await http.delete(url, timeout=30)).status_code == 503
            # Node B's watcher is still fed, through Redis, by the mirror on node A.
            await send(mirror, metrics_frame(2))
            assert (await recv_until(watcher, "metrics"))["seq"] == 2

            pg = await asyncio.to_thread(start_embedded, pg_data_dir)
            await wait_acked(mirror, 2, timeout=60)
            async with httpx.AsyncClient(headers=admin) as http:
                assert (await http.delete(url, timeout=30)).status_code == 200
            assert (await closed_with(watcher))[0] == 4004
            assert (await closed_with(mirror))[0] == 4004
        assert_clean_log(a)
        assert_clean_log(b)
    finally:
        await asyncio.to_thread(pg.stop)
        redis.kill()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_shutdown_during_outage_says_what_was_not_stored(
    start_hub: StartHub, pg_data_dir: Path
) -> None:
    pg = await asyncio.to_thread(start_embedded, pg_data_dir)
    try:
        engine = create_async_engine(pg.url)
        await upgrade(engine)
        await engine.dispose()
        hub = await start_hub(pg.url)
        session_id = await create_session(hub.http)
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            for seq in range(1, 6):
                await send(mirror, metrics_frame(seq))
            await wait_acked(mirror, 5)
            await asyncio.to_thread(pg.stop)
            for seq in range(6, 11):
                await send(mirror, metrics_frame(seq))
            await wait_for_log(hub, "frames failed")  # the flusher met the outage
            stopping = asyncio.create_task(hub.stop())
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # nothing more is acked: frames 6..10 were not stored
                    message = await recv(mirror, timeout=60)
                    assert message["type"] != "ack" or message["seq"] <= 5, message
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012
            assert "resend" in closed.value.rcvd.reason
            await stopping
        assert "shutdown: 5 frames not stored, mirrors will resend" in hub.logs()
        assert_clean_log(hub)
    finally:
        await asyncio.to_thread(pg.stop)


# Connection lifetimes ----------------------------------------------------------------------


async def test_mirrors_reset_before_welcome_leave_no_ghost(start_hub: StartHub) -> None:
    hub = await start_hub()
    session_id = await create_session(hub.http)
    url = f"{hub.ws}/ws/sessions/{session_id}/mirror"
    async with open_client(hub.ws, session_id, "watch") as (watcher, _):
        snapshot = await recv(watcher)
        assert snapshot["presence"]["mirror"] == "disconnected"
        for _ in range(50):
            ws = await connect(url, compression=None)
            reset_on_close(ws.transport)
            await send(ws, {"type": "hello", "token": token("mirror", session_id)})
            ws.transport.abort()  # RST while the hub is still preparing the welcome
            # The hub took the mirror, then let go of it: the watcher sees both.
            assert (await recv_until(watcher, "presence"))["mirror"] == "connected"
            assert (await recv_until(watcher, "presence"))["mirror"] == "disconnected"
    async with httpx.AsyncClient() as http:
        live = (await http.get(f"{hub.http}/health")).json()["live"]
    assert live["mirrors"] == 0, live
    assert_clean_log(hub)


# Connection limits -------------------------------------------------------------------------

UPGRADE = (
    "GET /ws/sessions/{session_id}/watch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def silent_socket(hub: HubProcess, session_id: str) -> Streams:
    """A WebSocket that completes the upgrade and then never says `hello`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(UPGRADE.format(session_id=session_id, port=hub.port).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def close_code(reader: asyncio.StreamReader) -> int:
    """The code of the close frame the hub sent on a raw WebSocket (unmasked, short)."""
    head = await asyncio.wait_for(reader.readexactly(4), 10)
    assert head[0] == 0x88, head  # FIN + close
    return int.from_bytes(head[2:4], "big")


@pytest.mark.timeout(120)
async def test_silent_sockets_do_not_lock_out_a_real_client(start_hub: StartHub) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:  # the hub inherits it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    hub = await start_hub(HUB_HELLO_TIMEOUT_S="60")  # longer than the test: none times out
    session_id = await create_session(hub.http)
    flood: list[Streams] = []
    try:
        for _ in range(20):
            flood += await asyncio.gather(*(silent_socket(hub, session_id) for _ in range(100)))
        # 2,000 silent sockets from this address, and a therapist behind the same address:
        async with open_client(hub.ws, session_id, "watch") as (watcher, welcome):
            assert welcome["role"] == "watcher"
            assert (await recv(watcher))["type"] == "snapshot"
        # The oldest silent ones made room: the hub closed them with 4031.
        assert await close_code(flood[0][0]) == 4031
    finally:
        for _, writer in flood:
            writer.transport.abort()
    assert_clean_log(hub)


async def test_process_connection_cap(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_MAX_CONNECTIONS="3")
    session_id = await create_session(hub.http)
    async with (
        open_client(hub.ws, session_id, "watch") as (first, _),
        open_client(hub.ws, session_id, "watch"),
    ):
        # The third place is taken by a silent socket; a real client takes it from it.
        silent_reader, silent_writer = await silent_socket(hub, session_id)
        try:
            async with open_client(hub.ws, session_id, "watch"):
                assert await close_code(silent_reader) == 4031
                # Full of authenticated sockets: a newcomer is turned away.
                async with connect(f"{hub.ws}/ws/sessions/{session_id}/watch") as extra:
                    assert (await closed_with(extra))[0] == 4031
        finally:
            silent_writer.transport.abort()
        assert (await recv(first))["type"] == "snapshot"
    assert_clean_log(hub)


def test_admission_bounds() -> None:
    """The bookkeeping behind the limits, without sockets: waiting sockets make room for
    newer ones, authenticated ones are capped per address, the total is capped."""
    admission = Admission(max_total=4, max_per_client=2, max_waiting_per_client=2)
    a1, a2 = admission.admit("a"), admission.admit("a")
    assert a1 is not None and a2 is not None
    a3 = admission.admit("a")  # a's third waiting socket: its oldest makes room
    assert a3 is not None and a1.evicted.is_set() and not a2.evicted.is_set()
    admission.release(a1)  # its handshake closes it; released once only
    assert admission.total == 2
    assert admission.authenticate(a2) and admission.authenticate(a3)
    a4 = admission.admit("a")
    assert a4 is not None
    assert not admission.authenticate(a4)  # a already holds two authenticated sockets
    b1 = admission.admit("b")
    assert b1 is not None and admission.total == 4
    b2 = admission.admit("b")  # full: the oldest waiting socket anywhere (a4) makes room
    assert b2 is not None and a4.evicted.is_set()
    assert admission.authenticate(b1) and admission.authenticate(b2)
    assert admission.admit("c") is None  # full, and everyone is authenticated
    for ticket in (a2, a3, a4, b1, b2):
        admission.release(ticket)
    assert admission.total == 0 and not admission.authenticated


# HTTP edges --------------------------------------------------------------------------------


async def raw_request(hub: HubProcess, data: bytes) -> bytes:
    """Send `data`, then read until the hub closes; what it answered (b"" if nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(data)
        await writer.drain()
    except OSError:
        pass  # closed on us mid-send: read what it said
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except OSError:
        return b""
    finally:
        writer.transport.abort()


@pytest.mark.timeout(60)
async def test_request_heads_and_bodies_within_limits(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_HTTP_HEADER_TIMEOUT_S="2", HUB_HTTP_BODY_TIMEOUT_S="2")
    host = f"Host: 127.0.0.1:{hub.port}\r\n"

    # An ordinary request with a large-ish (16 KB) header is fine.
    ok = await raw_request(
        hub,
        f"GET /health HTTP/1.1\r\n{host}X-Pad: {'a' * 16384}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert ok.startswith(b"HTTP/1.1 200"), ok[:200]

    # A 1 MB header: 431 (or the connection is closed under it), never served.
    big = await raw_request(hub, f"GET /health HTTP/1.1\r\n{host}X-Big: ".encode() + b"a" * 2**20)
    assert big == b"" or big.startswith(b"HTTP/1.1 431"), big[:200]

    # A head trickled one byte a second is cut off at HUB_HTTP_HEADER_TIMEOUT_S (2 s).
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    started = time.monotonic()
    writer.write(f"GET /health HTTP/1.1\r\n{host}".encode())
    answer = b""
    try:
        for byte in b"X-Slow: " + b"a" * 20:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                # One read of what is there (not read-to-EOF: a time-out cancelling that
                # would throw away an answer it had already taken from the socket).
                answer = await asyncio.wait_for(reader.read(65536), 1.0)
                break  # the hub answered
            except TimeoutError:
                continue
    except OSError:
        pass
    finally:
        writer.transport.abort()
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < 2 + 3, elapsed  # 2 s, plus the 1 s reads and a busy machine

    # A body that stops coming is cut off at HUB_HTTP_BODY_TIMEOUT_S.
    started = time.monotonic()
    slow_body = await raw_request(
        hub,
        f"POST /sessions HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        f"Authorization: Bearer {token('therapist')}\r\nContent-Length: 1000\r\n\r\n"
        '{"child_name": '.encode(),
    )
    assert slow_body == b"", slow_body[:200]
    assert time.monotonic() - started < 2 + 3
    await wait_for_log(hub, "request body not received within 2s")
    await wait_for_log(hub, "client left during POST /sessions")  # the app read a disconnect

    # A client that aborts its upload while the app reads the body: one quiet line.
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    reset_on_close(writer.transport)
    writer.write(
        f"POST /sessions HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        f"Authorization: Bearer {token('therapist')}\r\nContent-Length: 100000\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    # uvicorn answers 100 Continue when the app starts reading the body.
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
    writer.write(b'{"child_name": "' * 100)
    await writer.drain()
    writer.transport.abort()
    await wait_for_log(hub, "client left during POST /sessions", times=2)
    assert_clean_log(hub)


async def test_host_allow_list(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_ALLOWED_HOSTS="hub.example")
    session_id = await create_session(hub.http)  # Host 127.0.0.1: the address it is bound to

    async def get(host: str) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.get(f"{hub.http}/health", headers={"Host": host})

    assert (await get("hub.example")).status_code == 200
    assert (await get(f"hub.example:{hub.port}")).status_code == 200
    # DNS rebinding: the attacker's name, resolved to this machine.
    refused = await get(f"attacker.example:{hub.port}")
    assert refused.status_code == 400
    assert refused.json()["error"] == "host_not_allowed"
    upgrade = UPGRADE.format(session_id=session_id, port=hub.port)
    answer = await raw_request(hub, upgrade.replace("127.0.0.1", "attacker.example").encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    # Allowed names open WebSockets as before.
    async with open_client(hub.ws, session_id, "watch") as (_, welcome):
        assert welcome["role"] == "watcher"
    assert_clean_log(hub)


# WebSocket edges ---------------------------------------------------------------------------


async def test_invalid_utf8_closes_1007_quietly(start_hub: StartHub) -> None:
    hub = await start_hub()
    session_id = await create_session(hub.http)
    for _ in range(3):
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            await mirror.send(b'{"type": "metrics", "seq": 1, "x": "\xff"}', text=True)
            code, _messages = await closed_with(mirror)
            assert code == 1007
    await wait_for_log(hub, "not UTF-8", times=3)
    assert_clean_log(hub)


@pytest.mark.timeout(60)
async def test_reconnect_backlog_is_not_a_flood(start_hub: StartHub) -> None:
    hub = await start_hub()  # the default limit: 200 messages a second
    session_id = await create_session(hub.http)
    # A mirror back after a 25 s outage sends what it kept at 30 frames a second, one
    # message each, at once.
    backlog = 25 * 30
    async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
        for seq in range(1, backlog + 1):
            await send(mirror, metrics_frame(seq))
        await wait_acked(mirror, backlog, timeout=30)
    # A flood is still cut off.
    async with open_client(hub.ws, session_id, "mirror") as (flooder, welcome):
        first = welcome["last_seq"] + 1
        try:
            for seq in range(first, first + 20_000):
                await send(flooder, metrics_frame(seq))
        except ConnectionClosed:
            pass
        code, _ = await closed_with(flooder, timeout=30)
        assert code == 4030
    assert_clean_log(hub)
