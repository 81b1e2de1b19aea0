"""The in-process backplane: one worker, no other nodes. The default.

Nodes that share a `MemoryBroker` (several hubs in one process, as in some tests) see each
other's messages; a hub process on its own has just itself. Delivery is immediate and in
order; nothing is ever lost, so `on_reset` is never called.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from hub.live.backplane.base import OnMessage, OnReset


class MemoryBroker:
    def __init__(self) -> None:
        self.subscribers: defaultdict[str, set[MemoryBackplane]] = defaultdict(set)

    def subscribe(self, channel: str, node: MemoryBackplane) -> None:
        self.subscribers[channel].add(node)

    def unsubscribe(self, channel: str, node: MemoryBackplane) -> None:
        subscribers = self.subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(node)
            if not subscribers:
                del self.subscribers[channel]

    def subscribers_of(self, channel: str) -> list[MemoryBackplane]:
        """The nodes subscribed to `channel` now (a copy)."""
        return list(self.subscribers.get(channel, ()))


class MemoryBackplane:
    max_message_bytes = 1 << 30
    connected = True  # nothing in between to lose

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.solitary = broker is None  # a broker of its own: no other node can join it
        self.broker = broker or MemoryBroker()
        self._on_message: OnMessage | None = None
        self._channels: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        self._on_message = on_message
        # Kept, not looked up per publish: asyncio.get_running_loop() makes a getpid() system
        # call each time, which was a tenth of the hub's CPU at 1,500 frames a second.
        self._loop = asyncio.get_running_loop()

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self.broker.subscribe(channel, self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self.broker.unsubscribe(channel, self)

    def publish(self, channel: str, message: str) -> None:
        # Delivered from the event loop, not from inside the publisher's call, as a real
        # transport would: the publisher's state is consistent by then. call_soon keeps order.
        loop = self._loop or asyncio.get_running_loop()
        for node in self.broker.subscribers_of(channel):
            if node._on_message is not None:
                loop.call_soon(node._on_message, channel, message)

    async def close(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)
