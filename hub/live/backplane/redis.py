"""The Redis backplane: Redis pub/sub, for deployments that already run a Redis server.

Every node holds one subscriber connection and a small client for publishing. `publish()`
queues; a sender task packs each channel's queued messages, in order, into payloads of up to
64 KiB (joined by `base.SEPARATOR`) and sends a batch as one non-transactional pipeline, one
PUBLISH per payload: one connection, commands in order, so each channel's order holds.

What it guarantees, on top of `base.Backplane`:
- A lost subscriber connection is found within about two seconds: a closed socket at once, a
  silent one by a PING after one second without traffic that gets no reply within another.
  The reader then reconnects (backoff 0.05 s doubling to 2 s, with jitter), SUBSCRIBEs every
  channel again, waits until Redis has confirmed them all and only then calls `on_reset`
  (before any message that arrives on the new connection).
- At most once: nothing is ever retried. Retries are off in the client (redis-py would
  otherwise resend a whole pipeline after a connection error, delivering twice), and a failed
  batch is dropped; the next batch after a backoff goes out on a fresh connection.
- The subscriber is a plain redis-py connection read by this module, not redis-py's `PubSub`:
  PubSub reconnects and resubscribes silently inside its calls, and a reconnection that
  nobody hears of is a loss that the hub cannot detect. Here every reconnection is ours and
  is followed by exactly one `on_reset`.

What it costs and asks:
- `max_message_bytes` is 1 MiB; a longer message is dropped with a warning (the hub sends a
  marker instead and the frame is read from storage). Messages must not contain the separator.
- Redis disconnects a subscriber whose unread output passes its pubsub limit (by default
  32 MB at once, or 8 MB for a minute): a node that stalls its event loop gets a reset.
- One server (or primary): pub/sub of a Redis Cluster is not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from hub.live.backplane.base import SEPARATOR, OnMessage, OnReset
from hub.live.backplane.outbox import Outbox, Payload, after_reconnect, reopen

log = logging.getLogger("hub.backplane")

CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0  # writes, the handshake, and waiting for SUBSCRIBE confirmations
CLOSE_TIMEOUT = 2.0


class RedisBackplane:
    solitary = False
    max_message_bytes = 1 << 20

    def __init__(
        self, url: str, *, health_interval: float = 1.0, queue_limit: int = 100_000
    ) -> None:
        self.health_interval = health_interval
        # The subscriber connection is made from this client's pool settings too.
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._on_message: OnMessage | None = None
        self._on_reset: OnReset | None = None
        self._channels: set[str] = set()  # what the node wants; restored on reconnect
        self._subscribed: set[str] = set()  # SUBSCRIBE sent on the current connection
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._conn: AbstractConnection | None = None  # the subscriber, while connected
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._outbox = Outbox(
            "redis",
            self._send,
            self._drop_publisher,
            max_message_bytes=self.max_message_bytes,
            pack_bytes=64 * 1024,
            chunk_payloads=256,
            queue_limit=queue_limit,
            drain_seconds=CLOSE_TIMEOUT,
        )

    # The Backplane protocol -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        self._on_message = on_message
        self._on_reset = on_reset
        try:
            await self._client.ping()
            conn, held = await self._open()
        except BaseException:
            await self._client.aclose()
            raise
        for channel, data in held:
            self._deliver(channel, data)
        self._reader = asyncio.create_task(self._read_forever(conn), name="redis-backplane-read")
        self._outbox.start()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        conn = self._conn
        if conn is None:
            return  # restored when the reader reconnects
        confirmed = self._confirmations.get(channel)
        if confirmed is None:
            if channel in self._subscribed:
                return
            self._subscribed.add(channel)
            confirmed = self._confirmations[channel] = asyncio.get_running_loop().create_future()
            try:
                await _command(conn, "SUBSCRIBE", channel)
            except Exception:
                return  # the reader finds the lost connection and restores the channel
        try:
            # The reader resolves it on Redis's confirmation, or when the connection is lost.
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await asyncio.shield(confirmed)
        except TimeoutError:
            log.warning("redis backplane: SUBSCRIBE not confirmed in %.0f s", COMMAND_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        # Effective at once: _deliver drops what arrives for a channel not in _channels.
        self._channels.discard(channel)
        # A SUBSCRIBE still unconfirmed is forgotten, so that a later subscribe sends its own.
        pending = self._confirmations.pop(channel, None)
        if pending is not None and not pending.done():
            pending.set_result(None)
        conn = self._conn
        if conn is None or channel not in self._subscribed:
            return
        self._subscribed.discard(channel)
        with contextlib.suppress(Exception):  # a lost connection is the reader's business
            await _command(conn, "UNSUBSCRIBE", channel)

    def publish(self, channel: str, message: str) -> None:
        self._outbox.put(channel, message)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._outbox.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._drop_subscriber()
        await self._client.aclose()

    # The subscriber ---------------------------------------------------------------------

    async def _open(self) -> tuple[AbstractConnection, list[tuple[str, Any]]]:
        """Connect the subscriber and SUBSCRIBE to every channel, waiting for Redis to confirm
        them all. Returns the connection and the messages that arrived meanwhile."""
        # redis-py leaves make_connection() and connect() unannotated.
        pool = self._client.connection_pool
        conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        held: list[tuple[str, Any]] = []
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
                await conn.connect()  # type: ignore[no-untyped-call]
                # From here on subscribe() sends its own SUBSCRIBE on this connection.
                self._conn = conn
                self._subscribed = set(self._channels)
                waiting = set(self._subscribed)
                if waiting:
                    await _command(conn, "SUBSCRIBE", *waiting)
                while waiting:
                    response = await conn.read_response(push_request=True)
                    confirmed = self._handle(response, held)
                    if confirmed is not None:
                        waiting.discard(confirmed)
        except BaseException:
            await self._drop_subscriber()
            await conn.disconnect(nowait=True)
            raise
        return conn, held

    async def _drop_subscriber(self) -> None:
        conn, self._conn = self._conn, None
        self._subscribed = set()
        # Whoever waits for a confirmation returns: the channel is restored on reconnect.
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_result(None)
        self._confirmations.clear()
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _read_forever(self, conn: AbstractConnection) -> None:
        while True:
            try:
                await self._read(conn)
            except Exception as exc:  # whatever it was, a fresh connection is the way on
                log.warning(
                    "redis backplane: subscriber connection lost (%s); reconnecting",
                    type(exc).__name__,
                )
            await self._drop_subscriber()
            conn = await self._reconnect()

    async def _read(self, conn: AbstractConnection) -> None:
        pinged = False
        while True:
            # With an explicit timeout redis-py returns None instead of closing the connection.
            response = await conn.read_response(timeout=self.health_interval, push_request=True)
            if response is None:
                if pinged:
                    raise TimeoutError("no reply to PING")
                await _command(conn, "PING")  # any reply proves the connection alive
                pinged = True
                continue
            pinged = False
            self._handle(response, None)

    async def _reconnect(self) -> AbstractConnection:
        conn, held = await reopen("redis", self._open)
        await after_reconnect("redis", self._drop_publisher, self._outbox, self._on_reset)
        for channel, data in held:
            self._deliver(channel, data)
        return conn

    def _handle(self, response: Any, held: list[tuple[str, Any]] | None) -> str | None:
        """Act on one thing the subscriber read; returns the channel if it confirms a
        SUBSCRIBE. Anything else (PING replies, UNSUBSCRIBE confirmations) only proves the
        connection alive."""
        if not isinstance(response, list) or len(response) != 3:
            return None
        kind, channel = _text(response[0]), _text(response[1])
        if kind == "message":
            if held is not None:
                held.append((channel, response[2]))
            else:
                self._deliver(channel, response[2])
        elif kind == "subscribe":
            confirmed = self._confirmations.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return channel
        return None

    def _deliver(self, channel: str, data: Any) -> None:
        on_message = self._on_message
        for message in _text(data).split(SEPARATOR):
            if channel not in self._channels or on_message is None:
                return  # unsubscribed: not even the rest of a payload already received
            try:
                on_message(channel, message)
            except Exception as exc:  # one bad message must not cost the rest of the payload
                log.error("redis backplane: on_message raised %s", type(exc).__name__)

    # The publisher ----------------------------------------------------------------------

    async def _send(self, chunk: list[Payload]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for channel, payload, _ in chunk:
                pipe.publish(channel, payload)
            await pipe.execute()

    async def _drop_publisher(self) -> None:
        # After a failure: pooled connections may be dead; the next batch opens a fresh one.
        with contextlib.suppress(Exception):
            await self._client.connection_pool.disconnect()


async def _command(conn: AbstractConnection, *args: str) -> None:
    # redis-py would quietly reconnect a closed connection here (unsubscribed, unannounced).
    if not conn.is_connected:
        raise RedisConnectionError("subscriber connection closed")
    await conn.send_command(*args, check_health=False)


def _text(value: Any) -> str:
    # Bytes unless the URL asks for decode_responses; invalid UTF-8 is a foreign publisher's.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
