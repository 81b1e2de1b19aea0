"""The `lobby` scenario's extra clients: N `/ws/watch` connections, each subscribed to every
session in overview mode, and how stale what they show is.

Staleness of one `overview` update: its arrival time minus the send time of the oldest frame
it newly accounts for (the frame after the previous update's `last_seq`): how long the
slowest value in it waited, conflation included. Target: p99 <= 2 / overview_hz."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from array import array

import orjson
from websockets.asyncio.client import ClientConnection, connect

from .verify import Sent


class Lobbies:
    def __init__(self, count: int, hz: int) -> None:
        self.count = count
        self.hz = hz
        self.staleness = array("d")
        self.updates = 0
        self.errors = 0
        self._sockets: list[ClientConnection] = []
        self._readers: list[asyncio.Task[None]] = []

    async def open(
        self, port: int, hello: str, session_ids: list[uuid.UUID], logs: list[Sent]
    ) -> None:
        """Connect, subscribe every session (overview), and read until `close`; returns once
        every connection has every `subscribed`."""
        sent_by_id = {str(s): log for s, log in zip(session_ids, logs, strict=True)}
        ready = [asyncio.Event() for _ in range(self.count)]
        for i in range(self.count):
            ws = await connect(f"ws://127.0.0.1:{port}/ws/watch", compression=None, max_size=2**24)
            self._sockets.append(ws)
            hello_message = {**orjson.loads(hello), "protocol": 2, "overview_hz": self.hz}
            hello_message.pop("max_delay_ms", None)
            await ws.send(orjson.dumps(hello_message).decode())
            welcome = orjson.loads(await ws.recv())
            assert welcome["type"] == "welcome", welcome
            for sid in sent_by_id:
                subscribe = {"type": "subscribe", "session_id": sid, "mode": "overview"}
                await ws.send(orjson.dumps(subscribe).decode())
            self._readers.append(asyncio.create_task(self._read(ws, sent_by_id, ready[i])))
        async with asyncio.timeout(60):
            await asyncio.gather(*(r.wait() for r in ready))

    async def _read(
        self, ws: ClientConnection, sent: dict[str, Sent], ready: asyncio.Event
    ) -> None:
        seen: dict[str, int] = {}
        subscribed = 0
        now = time.time
        async for raw in ws:
            message = orjson.loads(raw)
            kind = message["type"]
            if kind == "overview":
                key, last = message["session_id"], message["last_seq"]
                first = seen.get(key, 0) + 1
                log = sent[key]
                if last >= first and first < len(log.sent_at) and log.sent_at[first]:
                    self.staleness.append(now() - log.sent_at[first])
                seen[key] = max(last, seen.get(key, 0))
                self.updates += 1
            elif kind == "subscribed":
                subscribed += 1
                seen[message["session_id"]] = message["last_seq"]
                if subscribed == len(sent):
                    ready.set()
            elif kind == "error":
                self.errors += 1

    def p99_ms(self) -> float:
        values = sorted(self.staleness)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(0.99 * (len(values) - 1)))] * 1000

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for ws in self._sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        await asyncio.gather(*self._readers, return_exceptions=True)
