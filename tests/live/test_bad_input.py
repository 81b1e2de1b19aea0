"""Acceptance: bad input gets the documented error frame or close code; others are unaffected.

Every case runs against a real hub process over real sockets. After each one, an unrelated
"bystander" session whose mirror and watcher stay connected for the whole module streams a few
frames and must see them acked and watched in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hub.frames import MAX_BATCH
from tests.support.live import (
    HubProcess,
    closed_with,
    create_session,
    metrics_frame,
    open_client,
    recv,
    recv_until,
    send,
    token,
    wait_acked,
)

WS_MAX_MESSAGE_BYTES = (
    65_536  # documented default of HUB_WS_MAX_MESSAGE_BYTES (uvicorn ws_max_size)
)
MAX_ERRORS_IN_A_ROW = 20  # hub/endpoints/mirror_ws.py


# Helpers ----------------------------------------------------------------------------------


async def next_error(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next message that is not an ack; it must be an `error`."""
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if message["type"] != "ack":
                assert message["type"] == "error", message
                assert isinstance(message["message"], str) and message["message"]
                return message


def seq_error(error: dict[str, Any]) -> tuple[str, int | None, int | None]:
    """An error about seq order: its code, the offending seq and the seq the hub expects."""
    return error["code"], error.get("seq"), error.get("expected_seq")


async def stream(ws: ClientConnection, first: int, last: int) -> None:
    """Send frames first..last one message each and wait for the cumulative ack."""
    for seq in range(first, last + 1):
        await send(ws, metrics_frame(seq, accuracy=seq % 100 / 100))
    await wait_acked(ws, last)


async def watched(watcher: ClientConnection, count: int) -> list[int]:
    return [(await recv_until(watcher, "metrics"))["seq"] for _ in range(count)]


async def stored(database_url: str, session_id: str) -> tuple[int, int, int]:
    """(rows, distinct seqs, max seq) of a session's stored frames."""
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) FROM frames"
            " WHERE session_id = $1::uuid",
            session_id,
        )
    finally:
        await conn.close()
    return row[0], row[1], row[2]


def raw_batch(first: int, count: int) -> dict[str, Any]:
    return {"type": "batch", "frames": [metrics_frame(s) for s in range(first, first + count)]}


@contextlib.asynccontextmanager
async def raw_socket(base_ws: str, session_id: str, role: str) -> AsyncIterator[ClientConnection]:
    async with connect(f"{base_ws}/ws/sessions/{session_id}/{role}", compression=None) as ws:
        yield ws


class Bystander:
    """An unrelated session: its mirror and watcher stay connected while the module runs."""

    def __init__(self, session_id: str, mirror: ClientConnection, watcher: ClientConnection):
        self.session_id = session_id
        self.mirror = mirror
        self.watcher = watcher
        self.seq = 0

    async def still_works(self, frames: int = 3) -> None:
        first, self.seq = self.seq + 1, self.seq + frames
        await stream(self.mirror, first, self.seq)
        assert await watched(self.watcher, frames) == list(range(first, self.seq + 1))


@pytest.fixture(scope="module")
async def bystander(hub_server: HubProcess, database_url: str) -> AsyncIterator[Bystander]:
    session_id = await create_session(hub_server.http, child_name="Bystander")
    async with (
        open_client(hub_server.ws, session_id, "mirror") as (mirror, _),
        open_client(hub_server.ws, session_id, "watch") as (watcher, _),
    ):
        assert (await recv(watcher))["type"] == "snapshot"
        by = Bystander(session_id, mirror, watcher)
        await by.still_works()
        yield by
        await by.still_works()
    assert await stored(database_url, session_id) == (by.seq, by.seq, by.seq)


@contextlib.asynccontextmanager
async def new_mirror(
    hub_server: HubProcess,
) -> AsyncIterator[tuple[str, ClientConnection, dict[str, Any]]]:
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (ws, welcome):
        assert welcome["last_seq"] == 0
        yield session_id, ws, welcome


# Error frames: the connection keeps working -------------------------------------------------


def metrics_with(seq: Any = 3, **fields: Any) -> str:
    return orjson.dumps({**metrics_frame(3), "seq": seq, **fields}).decode()


BAD_FRAMES: list[Any] = [
    # (text sent after frames 1..2 were acked, error code, error seq)
    pytest.param('{"type": "metrics", "seq": 3, ', "malformed_json", None, id="malformed_json"),
    pytest.param("", "malformed_json", None, id="empty"),
    pytest.param("[3]", "invalid_message", None, id="not_an_object"),
    pytest.param('{"type": "selfie", "seq": 3}', "unknown_type", None, id="unknown_type"),
    pytest.param('{"seq": 3}', "unknown_type", None, id="no_type"),
    pytest.param(metrics_with("3"), "invalid_frame", None, id="seq_string"),
    pytest.param(metrics_with(ts="noon"), "invalid_frame", 3, id="ts_string"),
    pytest.param(metrics_with(values=[0.5]), "invalid_frame", 3, id="values_list"),
    pytest.param(metrics_with(values={"accuracy": "high"}), "invalid_frame", 3, id="non_numeric"),
    pytest.param(metrics_with(values={"accuracy": None}), "invalid_frame", 3, id="null_metric"),
    pytest.param(metrics_with(values={"2fast": 1}), "invalid_frame", 3, id="metric_name"),
    pytest.param(metrics_with(values={"a": 1e13}), "invalid_frame", 3, id="metric_too_big"),
    pytest.param(metrics_with(0), "invalid_frame", 0, id="seq_zero"),
    pytest.param(metrics_with(-1), "invalid_frame", -1, id="seq_negative"),
    pytest.param(metrics_with(colour="red"), "invalid_frame", 3, id="unknown_field"),
    pytest.param(metrics_with(task_id="t-1"), "invalid_frame", 3, id="task_id_not_uuid"),
    pytest.param(
        orjson.dumps(
            {**metrics_frame(3), "type": "task", "values": None, "task_id": str(uuid.uuid4())}
        ).decode(),
        "invalid_frame",
        3,
        id="task_fields_wrong",
    ),
    pytest.param('{"type": "batch", "frames": []}', "invalid_frame", None, id="batch_empty"),
    pytest.param(
        orjson.dumps(raw_batch(3, MAX_BATCH + 1)).decode(),
        "invalid_frame",
        3,
        id="batch_over_max",
    ),
    pytest.param(
        orjson.dumps(
            {
                "type": "batch",
                "frames": [metrics_frame(3), {**metrics_frame(4), "values": {"a": "x"}}],
            }
        ).decode(),
        "invalid_frame",
        4,
        id="batch_second_frame_bad",
    ),
    pytest.param('{"type": "hello"}', "unexpected_hello", None, id="second_hello"),
    pytest.param('{"type": "end", "last_seq": 7}', "end_mismatch", None, id="end_mismatch"),
]


@pytest.mark.parametrize(("text", "code", "seq"), BAD_FRAMES)
async def test_bad_frame_gets_error_and_connection_keeps_working(
    hub_server: HubProcess,
    bystander: Bystander,
    database_url: str,
    text: str,
    code: str,
    seq: int | None,
) -> None:
    async with new_mirror(hub_server) as (session_id, mirror, _):
        await stream(mirror, 1, 2)
        await mirror.send(text)
        error = await next_error(mirror)
        assert (error["code"], error.get("seq")) == (code, seq), error
        await bystander.still_works()
        # Nothing of the bad message was taken: seq 3 is still the next one.
        await stream(mirror, 3, 4)
    assert await stored(database_url, session_id) == (4, 4, 4)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"type": "metrics", "seq": 3, "ts": 1, "values": {"a": 1e400}}', id="1e400"),
        pytest.param('{"type": "metrics", "seq": 3, "ts": -1e400, "values": {}}', id="-1e400"),
        pytest.param("[" * 5000 + "]" * 5000, id="deeply_nested"),
    ],
)
async def test_unrepresentable_input_gets_error_and_connection_keeps_working(
    hub_server: HubProcess,
    bystander: Bystander,
    database_url: str,
    text: str,
) -> None:
    """Numbers JSON allows but a float cannot hold, and nesting past the decoder's depth
    limit (both far under the size limit), are bad input like any other."""
    async with new_mirror(hub_server) as (session_id, mirror, _):
        await stream(mirror, 1, 2)
        await mirror.send(text)
        error = await next_error(mirror)
        assert (error["code"], error.get("seq")) == ("invalid_message", None), error
        await bystander.still_works()
        await stream(mirror, 3, 4)
    assert await stored(database_url, session_id) == (4, 4, 4)


async def test_seq_repeated_or_backwards(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    async with new_mirror(hub_server) as (session_id, mirror, _):
        async with open_client(hub_server.ws, session_id, "watch") as (watcher, _):
            assert (await recv(watcher))["type"] == "snapshot"
            await stream(mirror, 1, 3)
            for repeated in (3, 1, 2):  # repeated, then backwards
                await send(mirror, metrics_frame(repeated))
                error = await next_error(mirror)
                assert seq_error(error) == ("duplicate_seq", repeated, 4), error
            # A batch stops at its first bad frame: nothing after the repeat is taken.
            await send(mirror, raw_batch(3, 2))
            error = await next_error(mirror)
            assert seq_error(error) == ("duplicate_seq", 3, 4), error
            await stream(mirror, 4, 5)
            # The same in the middle of a batch: 6 and 7 are taken, the second 7 and 8 not.
            batch = raw_batch(6, 2)
            batch["frames"] += raw_batch(7, 2)["frames"]
            await send(mirror, batch)
            error = await next_error(mirror)
            assert seq_error(error) == ("duplicate_seq", 7, 8), error
            await stream(mirror, 8, 8)
            await bystander.still_works()
            # Watchers see every frame once, in order.
            assert await watched(watcher, 8) == list(range(1, 9))
    assert await stored(database_url, session_id) == (8, 8, 8)


async def test_seq_gap_then_the_right_seq_is_accepted(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    async with new_mirror(hub_server) as (session_id, mirror, _):
        await stream(mirror, 1, 2)
        await send(mirror, metrics_frame(5))
        error = await next_error(mirror)
        assert seq_error(error) == ("seq_gap", 5, 3), error
        await stream(mirror, 3, 5)
        # A gap inside a batch: frames before it are taken, the rest is not.
        await send(mirror, {"type": "batch", "frames": [metrics_frame(6), metrics_frame(8)]})
        error = await next_error(mirror)
        assert seq_error(error) == ("seq_gap", 8, 7), error
        await stream(mirror, 7, 8)
        # `end` must name the last accepted seq.
        await send(mirror, {"type": "end", "last_seq": 9})
        error = await next_error(mirror)
        assert error["code"] == "end_mismatch", error
        await bystander.still_works()
        await stream(mirror, 9, 9)
    assert await stored(database_url, session_id) == (9, 9, 9)


@pytest.mark.parametrize("role", ["mirror", "watch"])
@pytest.mark.parametrize(
    ("first", "code"),
    [
        pytest.param(metrics_frame(1), "hello_required", id="frame"),
        pytest.param(raw_batch(1, 2), "hello_required", id="batch"),
        pytest.param({"type": "end", "last_seq": 0}, "hello_required", id="end"),
        pytest.param({"type": "selfie"}, "unknown_type", id="unknown"),
        pytest.param({"type": "hello", "since": -1}, "invalid_frame", id="bad_hello"),
        # Watchers speak 1 and 2, mirrors 1 only: 3 is unknown to both (a mirror saying 2:
        # tests/live/test_batched_watchers.py).
        pytest.param({"type": "hello", "protocol": 3}, "unsupported_protocol", id="protocol_3"),
    ],
)
async def test_frames_before_hello_close_1002(
    hub_server: HubProcess,
    bystander: Bystander,
    database_url: str,
    role: str,
    first: dict[str, Any],
    code: str,
) -> None:
    session_id = await create_session(hub_server.http)
    async with raw_socket(hub_server.ws, session_id, role) as ws:
        await send(ws, first)
        close_code, messages = await closed_with(ws)
    assert close_code == 1002
    assert [(m["type"], m["code"], m.get("seq")) for m in messages] == [("error", code, None)]
    await bystander.still_works()
    # Nothing was stored, and the session is still usable by a well-behaved mirror.
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, welcome):
        assert welcome["last_seq"] == 0
        await stream(mirror, 1, 1)
    assert await stored(database_url, session_id) == (1, 1, 1)


@pytest.mark.parametrize("role", ["mirror", "watch"])
async def test_binary_instead_of_hello_closes_1003(
    hub_server: HubProcess, bystander: Bystander, role: str
) -> None:
    session_id = await create_session(hub_server.http)
    async with raw_socket(hub_server.ws, session_id, role) as ws:
        await ws.send(orjson.dumps({"type": "hello"}))  # bytes: a binary message
        assert await closed_with(ws) == (1003, [])
    await bystander.still_works()


async def test_binary_frame_closes_1003_and_the_mirror_resumes(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    async with new_mirror(hub_server) as (session_id, mirror, _):
        await stream(mirror, 1, 2)
        await mirror.send(orjson.dumps(metrics_frame(3)))
        code, messages = await closed_with(mirror)
        assert code == 1003
        assert all(m["type"] == "ack" for m in messages), messages
    await bystander.still_works()
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, welcome):
        assert (welcome["last_seq"], welcome["acked_seq"]) == (2, 2)
        await stream(mirror, 3, 3)
    assert await stored(database_url, session_id) == (3, 3, 3)


async def test_watcher_that_talks_gets_an_error_binary_closes_1003(
    hub_server: HubProcess, bystander: Bystander
) -> None:
    async with (
        new_mirror(hub_server) as (session_id, mirror, _),
        open_client(hub_server.ws, session_id, "watch") as (watcher, _),
    ):
        assert (await recv(watcher))["type"] == "snapshot"
        await send(watcher, metrics_frame(1))  # watchers only listen
        error = await recv_until(watcher, "error")
        assert error["code"] == "unexpected_message", error
        await stream(mirror, 1, 2)
        assert await watched(watcher, 2) == [1, 2]
        await watcher.send(b"\x00")
        code, messages = await closed_with(watcher)
        assert code == 1003
        assert all(m["type"] == "presence" for m in messages), messages
        await stream(mirror, 3, 3)  # the mirror does not notice
    await bystander.still_works()


def padded(message: dict[str, Any], size: int) -> str:
    """`message` as JSON text of exactly `size` bytes (insignificant whitespace appended)."""
    text = orjson.dumps(message).decode()
    assert len(text) <= size
    return text + " " * (size - len(text))


async def test_message_over_size_limit_closes_1009(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    async with new_mirror(hub_server) as (session_id, mirror, welcome):
        assert welcome["max_message_bytes"] == WS_MAX_MESSAGE_BYTES
        # Exactly at the limit is fine.
        await mirror.send(padded(raw_batch(1, 300), WS_MAX_MESSAGE_BYTES))
        await wait_acked(mirror, 300)
        await mirror.send(padded(raw_batch(301, 300), WS_MAX_MESSAGE_BYTES + 1))
        code, messages = await closed_with(mirror)
        assert code == 1009
        assert all(m["type"] == "ack" for m in messages), messages
    await bystander.still_works()
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, welcome):
        assert (welcome["last_seq"], welcome["acked_seq"]) == (300, 300)
        await stream(mirror, 301, 302)
    assert await stored(database_url, session_id) == (302, 302, 302)


async def test_too_many_invalid_messages_in_a_row_close_4029(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    async with new_mirror(hub_server) as (session_id, mirror, _):
        # One short of the limit, then a valid frame: the count starts again.
        for _ in range(MAX_ERRORS_IN_A_ROW - 1):
            await mirror.send("{oops")
        for _ in range(MAX_ERRORS_IN_A_ROW - 1):
            assert (await next_error(mirror))["code"] == "malformed_json"
        await stream(mirror, 1, 1)
        # Mixed kinds of errors count alike, including protocol errors of valid JSON.
        bad = ["{oops", '{"type": "selfie"}', orjson.dumps(metrics_frame(5)).decode()]
        for i in range(MAX_ERRORS_IN_A_ROW):
            await mirror.send(bad[i % len(bad)])
        code, messages = await closed_with(mirror)
        assert code == 4029
        errors = [m for m in messages if m["type"] != "ack"]
        assert [m["code"] for m in errors] == [
            ("malformed_json", "unknown_type", "seq_gap")[i % 3] for i in range(MAX_ERRORS_IN_A_ROW)
        ]
    await bystander.still_works()
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, welcome):
        assert welcome["last_seq"] == 1
        await stream(mirror, 2, 2)
    assert await stored(database_url, session_id) == (2, 2, 2)


@pytest.mark.slow
async def test_hello_timeout_closes_4000(
    hub_server: HubProcess,
    bystander: Bystander,
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    quick = await start_hub(HUB_HELLO_TIMEOUT_S="1")
    try:
        session_id = await create_session(quick.http)
        for role in ("mirror", "watch"):
            async with raw_socket(quick.ws, session_id, role) as ws:
                started = time.monotonic()
                assert await closed_with(ws) == (4000, [])
                # The 1 s setting, not the 5 s default, was applied.
                assert time.monotonic() - started < 4.5
        # A client that says hello in time is not affected by the timeout afterwards.
        async with open_client(quick.ws, session_id, "mirror") as (mirror, welcome):
            assert welcome["last_seq"] == 0
            await stream(mirror, 1, 2)
    finally:
        code = await quick.stop()
    # uvicorn re-raises SIGTERM after a clean shutdown.
    assert code in (0, -signal.SIGTERM), quick.logs()
    assert "Application shutdown complete" in quick.logs()
    await bystander.still_works()


@pytest.mark.parametrize("role", ["mirror", "watch"])
async def test_unknown_session_closes_4004(
    hub_server: HubProcess, bystander: Bystander, role: str
) -> None:
    unknown = str(uuid.uuid4())
    async with raw_socket(hub_server.ws, unknown, role) as ws:
        credential = token("mirror", unknown) if role == "mirror" else token("therapist")
        await send(ws, {"type": "hello", "token": credential})
        assert await closed_with(ws) == (4004, [])
    # Not a UUID: closed at once, before any hello.
    async with raw_socket(hub_server.ws, "not-a-uuid", role) as ws:
        assert await closed_with(ws) == (4004, [])
    await bystander.still_works()


async def test_second_mirror_replaces_the_first(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    session_id = await create_session(hub_server.http)
    async with (
        open_client(hub_server.ws, session_id, "watch") as (watcher, _),
        open_client(hub_server.ws, session_id, "mirror") as (first, _),
    ):
        assert (await recv(watcher))["type"] == "snapshot"
        await stream(first, 1, 5)
        for seq in range(6, 9):  # in flight: maybe accepted, maybe not, never acked
            await send(first, metrics_frame(seq))
        async with open_client(hub_server.ws, session_id, "mirror") as (second, welcome):
            resume = welcome["last_seq"]
            assert 5 <= welcome["acked_seq"] <= resume <= 8, welcome
            code, messages = await closed_with(first)
            assert code == 4001
            assert all(m["type"] == "ack" and m["seq"] <= resume for m in messages), messages
            await stream(second, resume + 1, resume + 5)
            await bystander.still_works()
        assert await watched(watcher, resume + 5) == list(range(1, resume + 6))
    assert await stored(database_url, session_id) == (resume + 5,) * 3


async def test_flood_does_not_disturb_other_sessions(
    hub_server: HubProcess, bystander: Bystander, database_url: str
) -> None:
    flood_frames, batch, steady_frames = 5_000, 250, 300
    flood_id = await create_session(hub_server.http, child_name="Flood")
    steady_id = await create_session(hub_server.http, child_name="Steady")
    async with (
        open_client(hub_server.ws, flood_id, "mirror") as (flood, _),
        open_client(hub_server.ws, steady_id, "mirror") as (steady, _),
        open_client(hub_server.ws, steady_id, "watch") as (steady_watcher, _),
    ):
        assert (await recv(steady_watcher))["type"] == "snapshot"

        async def flood_all() -> None:
            for first in range(1, flood_frames + 1, batch):
                await send(flood, raw_batch(first, batch))
            await wait_acked(flood, flood_frames, timeout=60)

        async def steady_stream() -> None:
            for seq in range(1, steady_frames + 1):
                await send(steady, metrics_frame(seq, accuracy=seq / steady_frames))
            await wait_acked(steady, steady_frames, timeout=60)

        async def steady_watch() -> list[int]:
            return await watched(steady_watcher, steady_frames)

        async with asyncio.timeout(90):
            _, _, seen = await asyncio.gather(flood_all(), steady_stream(), steady_watch())
        assert seen == list(range(1, steady_frames + 1))
        await bystander.still_works()
    assert await stored(database_url, flood_id) == (flood_frames,) * 3
    assert await stored(database_url, steady_id) == (steady_frames,) * 3
