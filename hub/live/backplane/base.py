"""The backplane: what carries live messages between hub nodes (workers and machines).

A node publishes on a channel (one per live session) and receives what every node, itself
included, publishes on the channels it subscribed to. The backplane is a transport with
precisely these guarantees; everything the hub promises on top of it (gap-free watching,
presence) comes from sequence numbers, storage and heartbeats (`hub.live.peers`, `hub.live.gaps`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

OnMessage = Callable[[str, str], None]
"""Called with (channel, message) for each message received, in the event loop, never
concurrently with itself. It must not block: it only hands the message on."""

OnReset = Callable[[], None]
"""Called after the backplane reconnected: messages published while it was disconnected, by
any node, may never arrive. Subscriptions are already restored when it is called."""

# Messages are joined with a newline when a backplane packs several into one transport
# payload. The hub's messages never contain one: JSON encoders escape control characters.
SEPARATOR = "\n"


class Backplane(Protocol):
    """A publish/subscribe transport between hub nodes.

    Guarantees:
    - Order: the messages one node publishes on one channel reach each subscriber in the
      order they were published, each at most once.
    - Publishing never blocks and never raises: messages are queued and sent by a background
      task, in batches. While the transport is down they are dropped (and logged), so storage
      and acks, which never wait for the backplane, go on.
    - Loss is announced, not silent: after a lost connection the backplane reconnects with
      backoff, restores every subscription and calls `on_reset`. Messages published or due
      while it was down may be lost; the hub detects that by sequence number and resyncs.
    - A subscriber also receives its own node's messages (the hub ignores them by node id).

    Not guaranteed: delivery to a node that subscribes after the message was published (no
    history), and any order between different channels or different publishers.
    """

    @property
    def connected(self) -> bool:
        """False while the receiving side is known to be down, from a lost connection to its
        reconnection: what other nodes say meanwhile cannot arrive."""

    solitary: bool
    """True when no other node can ever hear this one: the in-process backplane of a hub
    process on its own. A node then skips publishing its frames, which only other nodes use
    (at 9,000 frames a second, 300 sessions, that was 4 % of the hub's samples for nothing)."""

    max_message_bytes: int
    """The largest single message (UTF-8 bytes) the transport carries; larger ones are not
    published (the hub sends a marker instead and the frame is read from storage)."""

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        """Connect; raises if the transport is unreachable at start (a misconfiguration
        should fail loudly). After that, connection losses are handled inside."""

    async def subscribe(self, channel: str) -> None:
        """Receive the channel's messages from now on (idempotent). Returns once the
        transport has confirmed, or at once while disconnected (restored on reconnect)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving the channel (idempotent)."""

    def publish(self, channel: str, message: str) -> None:
        """Queue `message` for every subscriber of `channel`, this node included."""

    async def close(self) -> None:
        """Send what is queued (briefly), then disconnect."""
