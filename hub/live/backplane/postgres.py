"""The PostgreSQL backplane: LISTEN/NOTIFY on the hub's own database, nothing else to run.

Every node holds two dedicated connections: a listener (one LISTEN per subscribed channel)
and a publisher. `publish()` queues; a sender task packs each channel's queued messages, in
order, into NOTIFY payloads (joined by `base.SEPARATOR`, each under `max_message_bytes`, UTF-8)
and sends the whole batch as ONE statement, `pg_notify` over `unnest` arrays: one statement
is one transaction, and PostgreSQL delivers a transaction's notifications in the order they
were issued, and transactions in commit order. That is the per-channel order guarantee.

What it guarantees, on top of `base.Backplane`:
- A lost listener connection is found within about two seconds: asyncpg reports a closed
  socket at once, and a `SELECT 1` every second (timeout one second) finds a half-open one.
  The listener then reconnects (backoff 0.05 s doubling to 2 s, with jitter), LISTENs every
  subscribed channel again, and only then calls `on_reset` (before any message that arrives
  on the new connection).
- A failed publish drops its batch (at most once: never retried) and the publisher connection
  is reopened on the next batch after a backoff; `publish()` itself never waits or raises.

What it costs and asks:
- Payloads must stay under 8000 bytes (PostgreSQL's limit): `max_message_bytes` is 7900, and a
  longer message is dropped with a warning. The hub never sends one: it checks the size and
  sends a marker instead, the frame is then read from storage.
- PostgreSQL collapses identical notifications (same channel, same payload) within one
  transaction into one. The sender therefore starts a new statement where a payload repeats
  in a batch (two identical heartbeats would otherwise arrive as one).
- All nodes must use the same database (NOTIFY does not cross databases), and channel names
  must be 1 to 63 bytes (identifiers). Messages must not contain NUL (text cannot) or the
  separator; such a message is dropped with a warning rather than poisoning its batch.
- Notifications wait in one server-wide queue (8 GB by default) until every listening session
  has read them: a stalled listener makes it fill, and then every NOTIFY of the database
  fails. The listener therefore only hands messages on (`on_message` must not block and this
  module never awaits in the notification callback), and it never sits in an open
  transaction: PostgreSQL delivers notifications to a session only between transactions, so
  the listener runs nothing but autocommitted LISTEN, UNLISTEN and `SELECT 1`.
- Each node keeps two connections open for good (they count against `max_connections`);
  both show up in `pg_stat_activity` as `<application_name> backplane listener|publisher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from hub.live.backplane.base import SEPARATOR, OnMessage, OnReset
from hub.live.backplane.outbox import Outbox, Payload, after_reconnect, reopen, utf8_length

log = logging.getLogger("hub.backplane")

NOTIFY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)"
MAX_CHANNEL_BYTES = 63  # NAMEDATALEN - 1: LISTEN would cut a longer name, pg_notify refuses it
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0  # publishing, LISTEN and UNLISTEN; past it the connection is given up
CLOSE_TIMEOUT = 2.0


class PostgresBackplane:
    solitary = False
    max_message_bytes = 7900  # NOTIFY payloads must be shorter than 8000 bytes

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str = "mirror-hub",
        health_interval: float = 1.0,
        queue_limit: int = 100_000,
    ) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.health_interval = health_interval
        self._on_message: OnMessage | None = None
        self._on_reset: OnReset | None = None
        self._channels: set[str] = set()  # what the node wants; restored on reconnect
        self._listening: set[str] = set()  # what the current listener connection LISTENs to
        self._listener: Any = None  # asyncpg.Connection (asyncpg ships no types)
        self._publisher: Any = None
        # One operation at a time on the listener connection (asyncpg refuses concurrent ones).
        self._listener_lock = asyncio.Lock()
        self._lost = asyncio.Event()
        # Notifications that arrive while subscriptions are being restored, held back until
        # on_reset has been called; None when not restoring.
        self._held: list[tuple[str, str]] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._outbox = Outbox(
            "postgres",
            self._send,
            self._drop_publisher,
            max_message_bytes=self.max_message_bytes,
            pack_bytes=self.max_message_bytes,
            chunk_payloads=1000,
            queue_limit=queue_limit,
            drain_seconds=CLOSE_TIMEOUT,
            forbidden=(SEPARATOR, "\x00"),
        )

    # The Backplane protocol -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._listener is not None and not self._lost.is_set()

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        self._on_message = on_message
        self._on_reset = on_reset
        try:
            await self._open_listener()
            self._publisher = await self._connect("publisher")
        except BaseException:
            await self._drop_listener()
            raise
        self._watcher = asyncio.create_task(self._watch(), name="postgres-backplane-watch")
        self._outbox.start()

    async def subscribe(self, channel: str) -> None:
        _check_channel(channel)
        self._channels.add(channel)
        if self._listener is None:
            return  # restored when the listener reconnects
        async with self._listener_lock:
            conn = self._listener
            if conn is None or channel in self._listening or channel not in self._channels:
                return
            try:  # command_timeout bounds it
                await conn.add_listener(channel, self._notified)
            except Exception as exc:
                self._connection_failed(conn, exc)
                return
            self._listening.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        # Effective at once: _notified drops what arrives for a channel not in _channels.
        self._channels.discard(channel)
        if self._listener is None:
            return
        async with self._listener_lock:
            conn = self._listener
            if conn is None or channel not in self._listening or channel in self._channels:
                return
            self._listening.discard(channel)
            try:
                await conn.remove_listener(channel, self._notified)
            except Exception as exc:
                self._connection_failed(conn, exc)

    def publish(self, channel: str, message: str) -> None:
        if not 0 < utf8_length(channel) <= MAX_CHANNEL_BYTES:
            # pg_notify would reject it and, with it, the whole batch.
            self._outbox.drop("invalid channel name")
            return
        self._outbox.put(channel, message)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._outbox.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._drop_listener()
        publisher, self._publisher = self._publisher, None
        await _close(publisher)

    # The listener -----------------------------------------------------------------------

    async def _connect(self, role: str) -> Any:
        return await asyncpg.connect(
            self.dsn,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            # LISTEN of each channel would otherwise churn through the statement cache.
            statement_cache_size=0 if role == "listener" else 100,
            server_settings={"application_name": f"{self.application_name} backplane {role}"},
        )

    async def _open_listener(self) -> None:
        """Connect the listener and LISTEN to every channel; raises if it could not."""
        conn = await self._connect("listener")
        conn.add_termination_listener(self._terminated)
        try:
            async with self._listener_lock:
                # From here on subscribe() waits for the lock, then LISTENs by itself.
                self._listener = conn
                self._listening = set()
                self._lost.clear()
                for channel in list(self._channels):
                    if channel in self._channels:
                        await conn.add_listener(channel, self._notified)
                        self._listening.add(channel)
        except BaseException:
            self._listener = None
            conn.terminate()
            raise

    async def _drop_listener(self) -> None:
        conn, self._listener = self._listener, None
        self._listening = set()
        await _close(conn)

    def _terminated(self, conn: Any) -> None:
        if conn is self._listener and not self._closed:
            self._lost.set()

    def _connection_failed(self, conn: Any, exc: BaseException) -> None:
        if conn is self._listener and not self._closed:
            log.warning("postgres backplane: listener command failed (%s)", type(exc).__name__)
            self._lost.set()

    async def _watch(self) -> None:
        """Find a lost listener connection, then reconnect and restore it; forever."""
        while True:
            try:
                async with asyncio.timeout(self.health_interval):
                    await self._lost.wait()
            except TimeoutError:
                if await self._healthy():
                    continue
            await self._reconnect()

    async def _healthy(self) -> bool:
        conn = self._listener
        try:
            # The lock's wait counts: a LISTEN stuck on a half-open connection is a failure.
            async with asyncio.timeout(self.health_interval), self._listener_lock:
                if conn is not self._listener:
                    return True  # replaced meanwhile
                await conn.fetchval("SELECT 1")
        except Exception as exc:
            log.warning("postgres backplane: listener health check failed (%s)", type(exc).__name__)
            return False
        return True

    async def _reconnect(self) -> None:
        old, self._listener = self._listener, None
        self._listening = set()
        if old is not None:
            old.terminate()  # do not wait on a peer that may be gone
        log.warning("postgres backplane: listener connection lost; reconnecting")
        self._held = []
        try:
            await reopen("postgres", self._open_listener)
            await after_reconnect("postgres", self._drop_publisher, self._outbox, self._on_reset)
        finally:
            held, self._held = self._held, None
        for channel, payload in held:
            self._deliver(channel, payload)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        # asyncpg calls this through loop.call_soon, in order of arrival. It only hands on.
        if self._held is not None:
            self._held.append((channel, payload))
        else:
            self._deliver(channel, payload)

    def _deliver(self, channel: str, payload: str) -> None:
        on_message = self._on_message
        for message in payload.split(SEPARATOR):
            if channel not in self._channels or on_message is None:
                return  # unsubscribed: not even the rest of a payload already received
            try:
                on_message(channel, message)
            except Exception as exc:  # one bad message must not cost the rest of the payload
                log.error("postgres backplane: on_message raised %s", type(exc).__name__)

    # The publisher ----------------------------------------------------------------------

    async def _send(self, chunk: list[Payload]) -> None:
        conn = self._publisher
        if conn is None or conn.is_closed():
            conn = self._publisher = await self._connect("publisher")
        for statement in _statements(chunk):
            await conn.execute(NOTIFY, [c for c, _ in statement], [p for _, p in statement])

    async def _drop_publisher(self) -> None:
        conn, self._publisher = self._publisher, None
        if conn is not None:
            conn.terminate()  # after a failure: do not wait on a peer that may be gone


def _statements(chunk: list[Payload]) -> list[list[tuple[str, str]]]:
    """Split a chunk where a (channel, payload) repeats: PostgreSQL would collapse the repeat
    into one notification within a transaction. Consecutive statements keep the order."""
    statements: list[list[tuple[str, str]]] = [[]]
    seen: set[tuple[str, str]] = set()
    for channel, payload, _ in chunk:
        if (channel, payload) in seen:
            statements.append([])
            seen.clear()
        seen.add((channel, payload))
        statements[-1].append((channel, payload))
    return statements


def _check_channel(channel: str) -> None:
    if not 0 < len(channel.encode()) <= MAX_CHANNEL_BYTES:
        raise ValueError(f"a channel name must be 1 to {MAX_CHANNEL_BYTES} bytes")


async def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except Exception:
        conn.terminate()
