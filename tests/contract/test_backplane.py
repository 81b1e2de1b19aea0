"""The backplane contract (`hub.live.backplane.base`), run against every implementation on a
real service: the in-process one, PostgreSQL LISTEN/NOTIFY (the test run's database) and
Redis (a `redis-server` of our own, on a free port).

Two backplane instances on one service stand for two hub nodes. Faults are real too: the
listener's backend terminated by PostgreSQL, a Redis server killed and started again, and a
TCP proxy in front of either service that is cut (service down) or frozen (a half-open
link: sockets up, nothing passes) to prove the health checks.

Needs `redis-server` on PATH (Debian: `apt-get install -y redis-server`); without it the Redis
cases are skipped, except under CI=true where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from hub.live.backplane.base import Backplane
from hub.live.backplane.memory import MemoryBackplane, MemoryBroker
from hub.live.backplane.postgres import PostgresBackplane
from hub.live.backplane.redis import RedisBackplane
from hub.storage.frames import asyncpg_dsn
from tests.support.live import (
    Proxy,
    RedisServer,
    free_port,
    pg_proxy,
    require_redis_server,
)

KINDS = ["memory", "postgres", "redis"]
NETWORKED = ["postgres", "redis"]
WAIT = 10.0  # seconds any single expected event may take before the test fails
SECRET = "Zebulon-Quixote-133.7cm"  # stands for a child's data: must never reach the log


def new_channel() -> str:
    return "mh_" + uuid.uuid4().hex


# --- a node: one backplane and what it received ---------------------------------------


class Node:
    def __init__(self, backplane: Backplane) -> None:
        self.backplane = backplane
        self.inbox: defaultdict[str, asyncio.Queue[str]] = defaultdict(asyncio.Queue)
        self.resets = 0
        self._reset = asyncio.Event()

    def on_message(self, channel: str, message: str) -> None:
        self.inbox[channel].put_nowait(message)

    def on_reset(self) -> None:
        self.resets += 1
        self._reset.set()

    async def receive(self, channel: str, count: int) -> list[str]:
        async with asyncio.timeout(WAIT):
            return [await self.inbox[channel].get() for _ in range(count)]

    def received(self, channel: str) -> list[str]:
        """What arrived and was not read yet."""
        queue = self.inbox[channel]
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def wait_reset(self) -> None:
        async with asyncio.timeout(WAIT):
            await self._reset.wait()
        self._reset.clear()


async def roundtrip(sender: Node, receiver: Node, channel: str) -> list[str]:
    """Publish markers until one arrives; returns what the receiver got up to that marker.

    After a fault the publishing side may drop a batch or two until it has reconnected (the
    contract allows it), so a single marker could be lost; the first one to arrive ends it.
    """
    got: list[str] = []
    token = uuid.uuid4().hex[:8]  # markers of another round trip never count for this one
    async with asyncio.timeout(WAIT):
        for attempt in range(1_000_000):
            marker = f"marker {token} {attempt}"
            sender.backplane.publish(channel, marker)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    while True:
                        message = await receiver.inbox[channel].get()
                        got.append(message)
                        if message == marker:
                            return got
    raise AssertionError("unreachable")


# --- services -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a test that killed it failed before starting it again
    return redis_server.url


def _redis_proxy(redis_url: str) -> tuple[Proxy, Callable[[], str]]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(lambda: asyncio.open_connection("127.0.0.1", port))
    return proxy, lambda: f"redis://127.0.0.1:{proxy.port}/0"


# --- fixtures: nodes of the backplane under test ----------------------------------------

Factory = Callable[..., Backplane]
Starter = Callable[[Backplane], Awaitable[Node]]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=NETWORKED)
def networked(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _factory(kind: str, request: pytest.FixtureRequest) -> Factory:
    # Services are asked for only when needed: `-k memory` starts neither.
    if kind == "memory":
        broker = MemoryBroker()
        return lambda: MemoryBackplane(broker)
    if kind == "postgres":
        return functools.partial(
            PostgresBackplane, asyncpg_dsn(request.getfixturevalue("database_url"))
        )
    return functools.partial(RedisBackplane, request.getfixturevalue("redis_url"))


@pytest.fixture
async def nodes() -> AsyncIterator[Starter]:
    """Starts nodes on given backplanes; closes them all at the end."""
    started: list[Node] = []

    async def start(backplane: Backplane) -> Node:
        node = Node(backplane)
        await backplane.start(node.on_message, node.on_reset)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.backplane.close()


@pytest.fixture
def backplane(kind: str, request: pytest.FixtureRequest) -> Factory:
    return _factory(kind, request)


@pytest.fixture
def networked_backplane(networked: str, request: pytest.FixtureRequest) -> Factory:
    return _factory(networked, request)


@pytest.fixture
async def proxy_to(
    networked: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Proxy, Callable[[], str]]]:
    """A proxy in front of the service, started, and the backplane address through it."""
    if networked == "postgres":
        proxy, address = pg_proxy(request.getfixturevalue("database_url"))
    else:
        proxy, address = _redis_proxy(request.getfixturevalue("redis_url"))
    await proxy.start()
    yield proxy, address
    await proxy.stop()


# --- the contract -----------------------------------------------------------------------


async def test_one_channel_reaches_every_node_in_order_once(
    backplane: Factory, nodes: Starter
) -> None:
    a, b = await nodes(backplane()), await nodes(backplane())
    channel = new_channel()
    await a.backplane.subscribe(channel)
    await b.backplane.subscribe(channel)
    await a.backplane.subscribe(channel)  # idempotent: still once

    sent = [f"f a {i} {{'n': {i}, 'pad': '{'x' * (i % 97)}'}}" for i in range(5000)]
    for message in sent:
        a.backplane.publish(channel, message)

    assert await b.receive(channel, 5000) == sent
    assert await a.receive(channel, 5000) == sent  # a node hears itself too
    # Nothing twice: the next thing each node gets is a later marker.
    a.backplane.publish(channel, "end")
    assert await b.receive(channel, 1) == ["end"]
    assert await a.receive(channel, 1) == ["end"]


async def test_interleaved_channels_and_publishers_keep_each_order(
    backplane: Factory, nodes: Starter
) -> None:
    a, b = await nodes(backplane()), await nodes(backplane())
    channels = [new_channel() for _ in range(4)]
    for channel in channels:
        await a.backplane.subscribe(channel)
        await b.backplane.subscribe(channel)

    expected: dict[str, dict[str, list[str]]] = {c: {"a": [], "b": []} for c in channels}
    for i in range(4000):
        channel = channels[(i * 7 + i // 13) % len(channels)]  # irregular interleaving
        node, name = (a, "a") if i % 3 else (b, "b")
        message = f"{name} {i}"
        node.backplane.publish(channel, message)
        expected[channel][name].append(message)

    for receiver in (a, b):
        for channel in channels:
            total = len(expected[channel]["a"]) + len(expected[channel]["b"])
            got = await receiver.receive(channel, total)
            for name in ("a", "b"):  # each publisher's order, per channel
                assert [m for m in got if m.startswith(name)] == expected[channel][name]


async def test_unsubscribe_stops_delivery(backplane: Factory, nodes: Starter) -> None:
    a, b = await nodes(backplane()), await nodes(backplane())
    gone, kept = new_channel(), new_channel()
    for node in (a, b):
        await node.backplane.subscribe(gone)
        await node.backplane.subscribe(kept)
    a.backplane.publish(gone, "before")
    assert await b.receive(gone, 1) == ["before"]
    assert await a.receive(gone, 1) == ["before"]

    await b.backplane.unsubscribe(gone)
    await b.backplane.unsubscribe(gone)  # idempotent
    for i in range(100):
        a.backplane.publish(gone, f"after {i}")
    a.backplane.publish(kept, "marker")
    # Same publisher, published later: once the marker is in, "after" would have been too.
    assert await b.receive(kept, 1) == ["marker"]
    assert await a.receive(gone, 100) == [f"after {i}" for i in range(100)]  # they were sent
    assert b.received(gone) == []


async def test_close_sends_what_is_queued(backplane: Factory, nodes: Starter) -> None:
    b = await nodes(backplane())
    a = Node(backplane())  # closed by the test itself
    await a.backplane.start(a.on_message, a.on_reset)
    channel = new_channel()
    await b.backplane.subscribe(channel)

    sent = [f"last words {i}" for i in range(2000)]
    for message in sent:
        a.backplane.publish(channel, message)
    await a.backplane.close()
    await a.backplane.close()  # idempotent
    assert await b.receive(channel, len(sent)) == sent


def _exactly(size: int, char: str) -> str:
    """A message of exactly `size` UTF-8 bytes, mostly `char`, tagged to tell them apart."""
    unit = len(char.encode())
    body = char * ((size - 1) // unit)
    return "t" + body + "p" * (size - 1 - len(body.encode()))


async def test_messages_up_to_the_limit_arrive_whole(backplane: Factory, nodes: Starter) -> None:
    a, b = await nodes(backplane()), await nodes(backplane())
    channel = new_channel()
    await b.backplane.subscribe(channel)
    limit = a.backplane.max_message_bytes
    networked = limit < 1 << 30
    if not networked:
        limit = 1 << 20  # the in-process one has no practical limit; test it at 1 MiB

    sent: list[str] = []
    for char in ("a", "é", "€", "𝄞"):  # 1 to 4 bytes per character
        for size in (limit, limit - 1, limit - 3, 1):
            sent += [_exactly(size, char), "small"]
        # Sizes around where packing several into one payload of the limit (or of 64 KiB)
        # must start another: no message may be cut there.
        for whole in {limit, min(limit, 64 * 1024)}:
            for part in (2, 3, 4):
                sent += [_exactly(whole // part + d, char) for d in (-2, -1, 0, 1)]
    # Identical payloads in one batch: PostgreSQL would collapse them within a transaction.
    twin = _exactly(limit // 2 + 1, "a")
    sent += [twin, twin, twin, "x", "x", "x"]
    for message in sent:
        assert len(message.encode()) <= limit
        a.backplane.publish(channel, message)
    if networked:
        # Over the limit, though its length in characters is not: dropped, never sent cut.
        a.backplane.publish(channel, "é" * (limit // 2 + 1))
    a.backplane.publish(channel, "end")

    got = await b.receive(channel, len(sent) + 1)
    assert [len(m) for m in got] == [len(m) for m in [*sent, "end"]]
    assert got == [*sent, "end"]


async def test_start_raises_when_the_service_is_unreachable(networked: str) -> None:
    port = free_port()  # closed: nothing listens there
    backplane: Backplane
    if networked == "postgres":
        backplane = PostgresBackplane(f"postgresql://hub@127.0.0.1:{port}/hub")
    else:
        backplane = RedisBackplane(f"redis://127.0.0.1:{port}/0")
    node = Node(backplane)
    with pytest.raises((OSError, RedisConnectionError)):  # refused, not a timeout
        async with asyncio.timeout(WAIT):
            await backplane.start(node.on_message, node.on_reset)
    await backplane.close()


# --- faults -----------------------------------------------------------------------------


async def test_service_down_publish_never_blocks_and_reset_follows(
    networked_backplane: Factory,
    proxy_to: tuple[Proxy, Callable[[], str]],
    networked: str,
    nodes: Starter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="hub.backplane")
    proxy, address = proxy_to
    if networked == "postgres":
        a = await nodes(PostgresBackplane(address(), queue_limit=1000))
    else:
        a = await nodes(RedisBackplane(address(), queue_limit=1000))
    b = await nodes(networked_backplane())  # not through the proxy
    channel = new_channel()
    await a.backplane.subscribe(channel)
    await b.backplane.subscribe(channel)
    a.backplane.publish(channel, "before")
    assert await b.receive(channel, 1) == ["before"]
    assert await a.receive(channel, 1) == ["before"]

    await proxy.stop()
    quiet = new_channel()
    await a.backplane.subscribe(quiet)  # while down: recorded, restored on reconnect
    started = time.monotonic()
    for i in range(20_000):  # past the queue's bound of 1000
        a.backplane.publish(channel, f"{SECRET} {i}")
    assert time.monotonic() - started < 1.0
    assert a.resets == 0

    await proxy.start()
    await a.wait_reset()
    got = await roundtrip(a, b, channel)
    # Some of what was published while down may have made it, in order; most was dropped.
    lost = [int(m.split()[1]) for m in got if m.startswith(SECRET)]
    assert lost == sorted(set(lost)) and len(lost) <= 1000
    got_a = await roundtrip(b, a, quiet)  # the subscription made while down works
    assert got_a[-1].startswith("marker")
    assert a.resets == 1 and b.resets == 0

    assert "dropped" in caplog.text
    assert SECRET not in caplog.text


async def test_half_open_connection_is_found_by_the_health_check(
    networked_backplane: Factory,
    proxy_to: tuple[Proxy, Callable[[], str]],
    networked: str,
    nodes: Starter,
) -> None:
    proxy, address = proxy_to
    if networked == "postgres":
        a = await nodes(PostgresBackplane(address()))
    else:
        a = await nodes(RedisBackplane(address()))
    b = await nodes(networked_backplane())
    channel = new_channel()
    await a.backplane.subscribe(channel)
    await b.backplane.subscribe(channel)

    proxy.freeze()  # the sockets stay open; nothing goes through any more
    frozen_at = time.monotonic()
    await a.wait_reset()
    assert time.monotonic() - frozen_at < 5.0  # about two seconds by design

    await roundtrip(b, a, channel)  # the new subscriber connection hears again
    await roundtrip(a, b, channel)  # and the publisher, started afresh, is heard
    assert a.resets == 1


async def test_postgres_listener_terminated_by_the_server(
    database_url: str, nodes: Starter
) -> None:
    dsn = asyncpg_dsn(database_url)
    name = f"test-{uuid.uuid4().hex[:8]}"
    a = await nodes(PostgresBackplane(dsn))
    b = await nodes(PostgresBackplane(dsn, application_name=name))
    channels = [new_channel() for _ in range(3)]
    for channel in channels:
        await a.backplane.subscribe(channel)
        await b.backplane.subscribe(channel)

    admin = await asyncpg.connect(dsn)
    try:
        terminated = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = ANY($1::text[])",
            [f"{name} backplane listener", f"{name} backplane publisher"],
        )
    finally:
        await admin.close()
    assert terminated == 2

    await b.wait_reset()
    for channel in channels:  # every subscription restored, both ways
        await roundtrip(a, b, channel)
        await roundtrip(b, a, channel)
    assert b.resets == 1 and a.resets == 0


async def test_redis_server_killed_and_started_again(
    redis_server: RedisServer, redis_url: str, nodes: Starter
) -> None:
    a = await nodes(RedisBackplane(redis_url))
    b = await nodes(RedisBackplane(redis_url))
    channel = new_channel()
    await a.backplane.subscribe(channel)
    await b.backplane.subscribe(channel)
    a.backplane.publish(channel, "before")
    assert await b.receive(channel, 1) == ["before"]

    redis_server.kill()
    started = time.monotonic()
    for i in range(5000):
        a.backplane.publish(channel, f"down {i}")
    assert time.monotonic() - started < 1.0
    redis_server.start()

    await a.wait_reset()
    await b.wait_reset()
    got = await roundtrip(a, b, channel)
    lost = [int(m.split()[1]) for m in got if m.startswith("down")]
    assert lost == sorted(set(lost))
    await roundtrip(b, a, channel)
    assert a.resets == 1 and b.resets == 1
