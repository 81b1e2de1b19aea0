"""What the networked backplanes share: the outgoing queue, its sender task, packing, backoff.

`publish()` only appends to a bounded in-memory queue and wakes one sender task; the sender
takes everything queued, packs each channel's messages (in order) into as few transport
payloads as fit, and hands them to the transport in chunks. A failed chunk is dropped, never
retried (a retry could deliver twice), and the transport is left alone for a backoff delay,
during which whatever is published is dropped at once: nothing piles up while it is down.
Drops are counted and logged at warning, at most every few seconds; message contents never
reach the log, as they may carry a child's exercise data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from hub.live.backplane.base import SEPARATOR

log = logging.getLogger("hub.backplane")

T = TypeVar("T")

Payload = tuple[str, str, int]
"""(channel, payload, how many messages it packs)."""


def utf8_length(text: str) -> int:
    # isascii() reads a flag of the string object in CPython: most messages skip encoding.
    return len(text) if text.isascii() else len(text.encode())


def pack(batch: Iterable[tuple[str, str, int]], limit: int) -> list[Payload]:
    """Join each channel's (channel, message, UTF-8 size) items, in order, with SEPARATOR into
    payloads of at most `limit` bytes. A message is never split; one larger than `limit`
    travels alone. Order between channels is not kept (the backplane never promised it)."""
    payloads: list[Payload] = []
    filling: dict[str, tuple[list[str], int]] = {}  # channel -> (messages, bytes so far)
    for channel, message, size in batch:
        current = filling.get(channel)
        if current is not None:
            parts, used = current
            if used + len(SEPARATOR) + size <= limit:
                parts.append(message)
                filling[channel] = (parts, used + len(SEPARATOR) + size)
                continue
            # Full: it goes out before any later payload of the channel, so order holds.
            payloads.append((channel, SEPARATOR.join(parts), len(parts)))
        filling[channel] = ([message], size)
    payloads.extend(
        (channel, SEPARATOR.join(parts), len(parts)) for channel, (parts, _) in filling.items()
    )
    return payloads


class Backoff:
    """Capped exponential delays with jitter (so that nodes do not reconnect in lockstep)."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, delay * 2)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._next = self.first


async def reopen(name: str, open_: Callable[[], Awaitable[T]]) -> T:
    """Call `open_` until it succeeds, with capped exponential backoff: a lost connection of
    a backplane is restored for as long as the hub runs."""
    backoff = Backoff()
    attempts = 0
    while True:
        await asyncio.sleep(backoff.next())
        attempts += 1
        try:
            result = await open_()
        except Exception as exc:
            log.debug("%s backplane: reconnect failed (%s)", name, type(exc).__name__)
            continue
        log.warning("%s backplane: reconnected after %d attempt(s)", name, attempts)
        return result


async def after_reconnect(
    name: str,
    drop_publisher: Callable[[], Awaitable[None]],
    outbox: Outbox,
    on_reset: Callable[[], None] | None,
) -> None:
    """The receiving side is back: start the publisher afresh too (it likely shared the
    receiver's fate, say a half-open link it would only notice by a timeout), without delay,
    then tell the hub that messages may have been lost."""
    await drop_publisher()
    outbox.retry_now()
    if on_reset is not None:
        try:
            on_reset()
        except Exception as exc:  # the backplane must outlive it
            log.error("%s backplane: on_reset raised %s", name, type(exc).__name__)


class DropLog:
    """Counts dropped messages and says so at warning, at most once per `interval` seconds
    (a dead transport would otherwise log once per publish)."""

    def __init__(self, name: str, interval: float = 10.0) -> None:
        self.name = name
        self.interval = interval
        self.total = 0
        self._unreported = 0
        self._reason = ""
        self._last_report = -interval

    def add(self, count: int, reason: str) -> None:
        self.total += count
        self._unreported += count
        self._reason = reason
        if time.monotonic() - self._last_report >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self._unreported:
            log.warning(
                "%s backplane dropped %d message(s) since its last report (latest: %s)",
                self.name,
                self._unreported,
                self._reason,
            )
            self._unreported = 0
            self._last_report = time.monotonic()


class Outbox:
    """The bounded queue of a backplane's outgoing messages and the task that sends them.

    `send` carries one chunk of payloads in order and raises if it cannot (then the chunk
    and the rest of the batch are dropped); `disconnect`, which must not raise, is called
    after such a failure so that the next attempt starts from a fresh connection.
    """

    def __init__(
        self,
        name: str,
        send: Callable[[list[Payload]], Awaitable[None]],
        disconnect: Callable[[], Awaitable[None]],
        *,
        max_message_bytes: int,
        pack_bytes: int,
        chunk_payloads: int,
        queue_limit: int,
        drain_seconds: float = 2.0,
        forbidden: tuple[str, ...] = (SEPARATOR,),
    ) -> None:
        self.name = name
        self._send = send
        self._disconnect = disconnect
        self.max_message_bytes = max_message_bytes
        self.pack_bytes = pack_bytes
        self.chunk_payloads = chunk_payloads
        self.queue_limit = queue_limit
        self.drain_seconds = drain_seconds
        self.forbidden = forbidden
        self.drops = DropLog(name)
        self._queue: deque[tuple[str, str, int]] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._retry_at = 0.0  # monotonic time before which the transport is left alone
        self._backoff = Backoff()
        self._generation = 0  # bumped by retry_now(): failures from before it are stale
        self._task: asyncio.Task[None] | None = None

    def put(self, channel: str, message: str) -> None:
        """Queue a message; never blocks, never raises."""
        if self._closing:
            self.drops.add(1, "backplane closed")
            return
        if len(self._queue) >= self.queue_limit:
            self.drops.add(1, "queue full")
            return
        # len() is a lower bound of the UTF-8 size: most oversized messages skip the count.
        size = len(message)
        if size <= self.max_message_bytes:
            size = utf8_length(message)
        if size > self.max_message_bytes:
            self.drops.add(1, f"message over {self.max_message_bytes} bytes")
            return
        if any(c in message for c in self.forbidden):
            # The receiver splits payloads on SEPARATOR: such a message would arrive cut.
            self.drops.add(1, "message contains a reserved character")
            return
        self._queue.append((channel, message, size))
        self._wake.set()

    def drop(self, reason: str) -> None:
        """A message its backplane refused before `put`: counted and logged with the rest."""
        self.drops.add(1, reason)

    def retry_now(self) -> None:
        """The transport is back (the backplane's receiving side reconnected): send the next
        batch at once. A send failing meanwhile was on the old connection; it sets no delay."""
        self._generation += 1
        self._retry_at = 0.0
        self._backoff.reset()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-backplane-sender")

    async def close(self) -> None:
        """Send what is queued, for at most `drain_seconds`, then stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(self.drain_seconds):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._queue:
            self.drops.add(len(self._queue), "closed before sending")
            self._queue.clear()
        self.drops.flush()

    async def _run(self) -> None:
        while not (self._closing and not self._queue):
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._queue)
            self._queue.clear()
            if not batch:
                continue
            if time.monotonic() < self._retry_at:
                self.drops.add(len(batch), "transport down")
                continue
            payloads = pack(batch, self.pack_bytes)
            generation = self._generation
            for start in range(0, len(payloads), self.chunk_payloads):
                chunk = payloads[start : start + self.chunk_payloads]
                try:
                    await self._send(chunk)
                except Exception as exc:  # the sender must outlive any transport failure
                    lost = sum(count for _, _, count in payloads[start:])
                    self.drops.add(lost, f"send failed ({type(exc).__name__})")
                    if generation == self._generation:
                        self._retry_at = time.monotonic() + self._backoff.next()
                        await self._disconnect()
                    break
            else:
                self._backoff.reset()
