"""Acceptance (`/ws/watch`): one connection watches many sessions. Per full subscription
every frame in order; per overview subscription at most `overview_hz` updates a second with
the latest values and every task event; unsubscribe stops a session; the lobby sees
sessions go live and end; a forbidden subscription is refused and the connection stays
open; a session that overflows its queue is dropped alone (`resync`) and resumes with
`since`, while the others go on."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.live import (
    HubProcess,
    closed_with,
    create_session,
    metrics_frame,
    new_task_id,
    open_client,
    recv,
    recv_until,
    send,
    task_frame,
    token,
    wait_acked,
)

UNLIMITED = {"HUB_WS_MAX_MESSAGES_PER_S": "1000000"}


@contextlib.asynccontextmanager
async def watch_many(
    hub: HubProcess, who: str | None = None, **hello: Any
) -> AsyncIterator[ClientConnection]:
    async with connect(f"{hub.ws}/ws/watch", max_size=2**22, compression=None) as ws:
        await send(
            ws, {"type": "hello", "token": who or token("therapist"), "protocol": 2, **hello}
        )
        welcome = await recv(ws)
        assert welcome["type"] == "welcome" and welcome["protocol"] == 2, welcome
        yield ws


class Inbox:
    """Everything a /ws/watch connection received, by session, with arrival times."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.overviews: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        self.by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.changed = asyncio.Event()

    def take(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        self.by_type[kind].append(message)
        if kind == "batch":
            self.seqs[message["session_id"]] += [f["seq"] for f in message["frames"]]
        elif kind == "overview":
            self.overviews[message["session_id"]].append((time.monotonic(), message))
        self.changed.set()

    async def until(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def reading(ws: ClientConnection) -> AsyncIterator[Inbox]:
    inbox = Inbox()

    async def read() -> None:
        # Not `recv` (asyncio.wait_for): a cancel racing a message must end this loop.
        async for raw in ws:
            inbox.take(orjson.loads(raw))

    task = asyncio.create_task(read())
    try:
        yield inbox
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def subscribed(inbox: Inbox, key: str) -> bool:
    return any(m["session_id"] == key for m in inbox.by_type["subscribed"])


async def test_fifty_subscriptions_full_and_overview_on_one_connection(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(**UNLIMITED)
    ids = await asyncio.gather(*(create_session(hub.http) for _ in range(50)))
    full, overview = ids[:25], ids[25:]
    frames, hz = 60, 4
    async with watch_many(hub) as ws, reading(ws) as inbox:
        for sid in full:
            await send(ws, {"type": "subscribe", "session_id": sid, "mode": "full"})
        for sid in overview:
            await send(
                ws, {"type": "subscribe", "session_id": sid, "mode": "overview", "overview_hz": hz}
            )
        # Each subscription's `subscribed`, then its snapshot, naming its session.
        await inbox.until(lambda: len(inbox.by_type["snapshot"]) == len(ids))
        assert all(subscribed(inbox, sid) for sid in ids)
        assert {m["session_id"] for m in inbox.by_type["snapshot"]} == set(ids)

        async def mirror(sid: str) -> list[int]:
            task_id, task_seqs = new_task_id(), []
            async with open_client(hub.ws, sid, "mirror") as (m, _):
                for seq in range(1, frames + 1):
                    if seq % 20 == 0:
                        await send(m, task_frame(seq, task_id, "status", "in_progress"))
                        task_seqs.append(seq)
                    else:
                        await send(m, metrics_frame(seq, accuracy=seq / 100, stability=0.5))
                await wait_acked(m, frames)
            return task_seqs

        task_seqs = (await asyncio.gather(*(mirror(sid) for sid in ids)))[0]

        def overviews_done() -> bool:
            return all(
                inbox.overviews[sid] and inbox.overviews[sid][-1][1]["last_seq"] == frames
                for sid in overview
            )

        await inbox.until(
            lambda: all(len(inbox.seqs[s]) == frames for s in full) and overviews_done()
        )
        for sid in full:
            assert inbox.seqs[sid] == list(range(1, frames + 1))
        for sid in overview:
            updates = inbox.overviews[sid]
            assert sid not in inbox.seqs  # an overview gets no frames
            # At most hz a second: in any second, hz updates (one more if the network held
            # one back and delivered it with the next).
            times = [t for t, _ in updates]
            busiest = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
            assert busiest <= hz + 1, times
            assert len(updates) < frames // 3  # conflated: far fewer updates than frames
            events = [e["seq"] for _, u in updates for e in u["events"] if e["type"] == "task"]
            assert events == task_seqs  # every task event, none conflated away
            latest: dict[str, float] = {}
            for _, u in updates:
                latest.update(u["values"])
            assert latest == {"accuracy": (frames - 1) / 100, "stability": 0.5}
            assert updates[-1][1]["task"]["status"] == "in_progress"

        # Unsubscribe stops a session: frames published for it afterwards never arrive.
        gone, control = full[0], full[1]
        await send(ws, {"type": "unsubscribe", "session_id": gone})
        await inbox.until(lambda: bool(inbox.by_type["unsubscribed"]))
        assert inbox.by_type["unsubscribed"][0]["session_id"] == gone
        async with open_client(hub.ws, gone, "mirror") as (m, _):
            await send(m, metrics_frame(frames + 1))
            await wait_acked(m, frames + 1)  # published to the room before it is acked
        async with open_client(hub.ws, control, "mirror") as (m, _):
            await send(m, metrics_frame(frames + 1))
            await wait_acked(m, frames + 1)
        await inbox.until(lambda: len(inbox.seqs[control]) == frames + 1)
        assert inbox.seqs[gone] == list(range(1, frames + 1))


async def test_the_lobby_sees_a_session_go_live_and_end(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub()
    async with watch_many(hub) as ws, reading(ws) as inbox:
        await send(ws, {"type": "subscribe", "session_id": "*", "mode": "overview"})
        await inbox.until(lambda: subscribed(inbox, "*"))
        sid = await create_session(hub.http, child_name="Lobby Child")
        async with open_client(hub.ws, sid, "mirror") as (m, _):
            await inbox.until(lambda: bool(inbox.by_type["session_live"]))
            [live] = inbox.by_type["session_live"]
            assert live["session_id"] == sid and live["session"]["child_name"] == "Lobby Child"
            assert live["presence"]["mirror"] == "connected"
            await send(m, metrics_frame(1))
            await wait_acked(m, 1)
            await send(m, {"type": "end", "last_seq": 1})
            await inbox.until(lambda: bool(inbox.by_type["session_ended"]))
        assert inbox.by_type["session_ended"] == [
            {"type": "session_ended", "session_id": sid, "last_seq": 1}
        ]
        # A lobby that subscribes now is told which sessions are live already.
        other = await create_session(hub.http)
        async with (
            open_client(hub.ws, other, "mirror"),
            watch_many(hub, token("admin")) as late,
            reading(late) as late_inbox,
        ):
            await send(late, {"type": "subscribe", "session_id": "*", "mode": "overview"})
            await late_inbox.until(lambda: bool(late_inbox.by_type["session_live"]))
            assert [m["session_id"] for m in late_inbox.by_type["session_live"]] == [other]


@pytest.mark.slow
async def test_the_lobby_sees_the_sessions_of_every_worker(
    database_url: str, tmp_path: Path
) -> None:
    """`hub serve --workers 2`: a lobby on either worker is told of the sessions whose mirror
    is connected to the other one (the PostgreSQL backplane), live and ended."""
    hub = HubProcess(database_url, tmp_path / "hub.log", workers=2, HUB_BACKPLANE="postgres")
    await hub.start()

    def sessions_in(inbox: Inbox, kind: str) -> set[str]:
        return {m["session_id"] for m in inbox.by_type[kind]}

    try:
        async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
            # Each connection lands on whichever worker accepts it: open mirrors until both
            # workers have one.
            mirrors: dict[str, tuple[str, ClientConnection]] = {}
            while len(mirrors) < 2:
                sid = await create_session(hub.http, child_name="Worker Child")
                opened = open_client(hub.ws, sid, "mirror")
                mirror, welcome = await stack.enter_async_context(opened)
                mirrors.setdefault(welcome["node"], (sid, mirror))
            live = {sid for sid, _ in mirrors.values()}
            ws = await stack.enter_async_context(watch_many(hub))
            inbox = await stack.enter_async_context(reading(ws))
            await send(ws, {"type": "subscribe", "session_id": "*", "mode": "overview"})
            await inbox.until(lambda: live <= sessions_in(inbox, "session_live"))
            for _, mirror in mirrors.values():
                await send(mirror, metrics_frame(1))
                await wait_acked(mirror, 1)
                await send(mirror, {"type": "end", "last_seq": 1})
            await inbox.until(lambda: live <= sessions_in(inbox, "session_ended"))
    finally:
        code = await hub.stop()
    assert code == 0, hub.logs()
    assert "Traceback" not in hub.logs()


async def test_a_forbidden_subscription_is_refused_and_the_connection_stays_open(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub()
    mine, theirs = await create_session(hub.http), await create_session(hub.http)
    async with watch_many(hub, token("mirror", mine)) as ws:
        for target, mode in ((theirs, "full"), ("*", "overview")):
            await send(ws, {"type": "subscribe", "session_id": target, "mode": mode})
            error = await recv(ws)
            assert (error["type"], error["session_id"], error["code"]) == (
                "error",
                target,
                "forbidden",
            )
        # A session it may not watch is refused whether or not it exists.
        await send(ws, {"type": "subscribe", "session_id": str(uuid.uuid4())})
        assert (await recv(ws))["code"] == "forbidden"
        await send(ws, {"type": "subscribe", "session_id": mine})
        assert (await recv(ws))["type"] == "subscribed"  # still open, still served
        assert (await recv(ws))["type"] == "snapshot"


async def test_a_session_past_its_queue_is_dropped_alone_and_resumes_with_since(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_WATCHER_QUEUE_FRAMES="64", **UNLIMITED)
    busy, quiet = await create_session(hub.http), await create_session(hub.http)
    async with (
        watch_many(hub) as ws,
        reading(ws) as inbox,
        open_client(hub.ws, busy, "mirror") as (busy_mirror, _),
        open_client(hub.ws, quiet, "mirror") as (quiet_mirror, _),
    ):
        await send(ws, {"type": "subscribe", "session_id": "*", "mode": "overview"})
        for sid in (busy, quiet):
            await send(ws, {"type": "subscribe", "session_id": sid})
        await inbox.until(lambda: all(subscribed(inbox, s) for s in ("*", busy, quiet)))
        # 500 frames reach the busy session's queue at once: past its 64, it is dropped.
        await send(
            busy_mirror, {"type": "batch", "frames": [metrics_frame(s) for s in range(1, 501)]}
        )
        await inbox.until(lambda: bool(inbox.by_type["error"]))
        [error] = inbox.by_type["error"]
        assert (error["session_id"], error["code"]) == (busy, "resync")
        assert error["last_seq"] == (inbox.seqs[busy][-1] if inbox.seqs[busy] else 0)
        # The others go on: the quiet session's frames and the lobby keep coming.
        await send(quiet_mirror, metrics_frame(1))
        await inbox.until(lambda: inbox.seqs[quiet] == [1])
        await wait_acked(busy_mirror, 500)
        await send(ws, {"type": "subscribe", "session_id": busy, "since": error["last_seq"]})
        await inbox.until(lambda: len(inbox.seqs[busy]) >= 500)
        assert inbox.seqs[busy] == list(range(1, 501))  # gap-free across the drop


@pytest.mark.parametrize("message", ["{", '{"type": "subscribe"}', '{"type": "hello"}'])
async def test_bad_requests_get_an_error_and_the_connection_carries_on(
    start_hub: Callable[..., Awaitable[HubProcess]], message: str
) -> None:
    hub = await start_hub()
    sid = await create_session(hub.http)
    async with watch_many(hub) as ws:
        await ws.send(message)
        assert (await recv(ws))["type"] == "error"
        await send(ws, {"type": "subscribe", "session_id": str(uuid.uuid4())})
        assert (await recv(ws))["code"] == "unknown"
        await send(ws, {"type": "subscribe", "session_id": sid})
        assert (await recv(ws))["type"] == "subscribed"


async def test_a_shutdown_closes_a_watch_connection_with_1012(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub()
    sid = await create_session(hub.http)
    async with watch_many(hub) as ws:
        await send(ws, {"type": "subscribe", "session_id": "*", "mode": "overview"})
        assert (await recv(ws))["type"] == "subscribed"
        await send(ws, {"type": "subscribe", "session_id": sid})
        assert (await recv_until(ws, "subscribed"))["session_id"] == sid
        stopping = asyncio.create_task(hub.stop())
        code, _ = await closed_with(ws, timeout=20)
        assert code == 1012  # restart: reconnect elsewhere, subscribe again with since
        assert await stopping == 0
