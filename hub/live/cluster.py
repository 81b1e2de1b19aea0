"""This node's side of the backplane: who we are, what we tell the other nodes, what we hear.

Every node that holds a live session in memory subscribes to the session's channel. On it:

    f <node> <seq> <frame JSON>        a frame the node's mirror sent (JSON empty: too big for
                                       the backplane; read it from storage)
    p <node> <last> <stored> <watchers> <mirror_since>
                                       the node's share of the presence, sent on every change
                                       and as a heartbeat; `last`/`stored` are its mirror's
                                       seqs; `mirror_since` is when its mirror connected, by
                                       the database's clock (0: none), so the newest wins
    e <node> <last_seq> <ended_at>     the session ended after frame `last_seq`
    x <node>                           the session was erased

Every node that is not alone (see `Backplane.solitary`) also subscribes to the lobby channel,
`LOBBY_CHANNEL`, where it publishes its lobby messages (`hub.live.lobby`) as they are:

    l <node> <lobby message JSON>      a session went live, its presence changed, it ended
    r <node> <session_live JSON>       the heartbeat's repeat of a session live on the node

The format is a header of space-separated fields, then the frame's JSON as it is, so a frame
is never re-encoded on its way through. Sequence numbers, not the backplane, make delivery
gap-free: see `Room.offer` and `hub.live.gaps`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Protocol

from hub import metrics
from hub.live.backplane.base import Backplane

log = logging.getLogger("hub.cluster")


# Not a session's channel: `session_of` gives None for it (not hexadecimal).
LOBBY_CHANNEL = "mh_lobby"


def channel_of(session_id: uuid.UUID) -> str:
    # Valid as a PostgreSQL identifier (LISTEN) and a Redis channel: 35 ASCII characters.
    return "mh_" + session_id.hex


def session_of(channel: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(hex=channel[3:]) if channel.startswith("mh_") else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class PresenceNote:
    node: str
    last_seq: int
    stored_seq: int
    watchers: int
    mirror_since: float


class Listener(Protocol):
    """What the cluster hands messages of other nodes to (`hub.live.peers.Peers`)."""

    def on_remote_frame(self, session_id: uuid.UUID, seq: int, text: str | None) -> None: ...

    def on_remote_presence(self, session_id: uuid.UUID, note: PresenceNote) -> None: ...

    def on_remote_ended(self, session_id: uuid.UUID, last_seq: int, ended_at: datetime) -> None: ...

    def on_remote_erased(self, session_id: uuid.UUID) -> None: ...

    def on_remote_lobby(self, node: str, text: str, refresh: bool) -> None: ...

    def on_backplane_reset(self) -> None: ...


class Cluster:
    def __init__(self, backplane: Backplane, heartbeat_s: float) -> None:
        self.node = uuid.uuid4().hex[:12]
        self._own_header = f" {self.node}"  # after the one-letter kind; ids are 12 characters
        self.backplane = backplane
        self.heartbeat_s = heartbeat_s
        # A node whose heartbeat is this late is taken for gone (it died or lost its link).
        self.expiry_s = 3 * heartbeat_s
        self.messages_in = 0
        self.resets = 0
        self._listener: Listener | None = None
        self._subscribed: set[str] = set()
        # Subscribing and unsubscribing await the transport: one at a time, so an unsubscribe
        # decided earlier can never land after a newer subscribe of the same channel.
        self._subscriptions = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []

    async def start(
        self,
        listener: Listener,
        beat: Callable[[], None],
        maintain: Callable[[], Awaitable[None]],
    ) -> None:
        """Connect, then every heartbeat: `beat` (announce; never waits) and, in a loop of
        its own so that a slow database or transport never delays a heartbeat, `maintain`."""
        self._listener = listener
        await self.backplane.start(self._on_message, self._on_reset)
        if not self.backplane.solitary:
            # Held for the node's life: not in `_subscribed`, which heartbeats sweep.
            await self.backplane.subscribe(LOBBY_CHANNEL)
        self._loops = [
            asyncio.create_task(self._every_beat(beat), name="hub-heartbeat"),
            asyncio.create_task(self._every_beat(maintain), name="hub-maintenance"),
        ]

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.backplane.close()

    async def _every_beat(self, job: Callable[[], Awaitable[None] | None]) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                result = job()
                if result is not None:
                    await result
            except Exception:  # a heartbeat must never stop for good
                log.exception("heartbeat job failed")

    # Subscriptions -----------------------------------------------------------------------

    async def subscribe(self, session_id: uuid.UUID) -> None:
        channel = channel_of(session_id)
        async with self._subscriptions:
            if channel not in self._subscribed:
                await self.backplane.subscribe(channel)
                self._subscribed.add(channel)

    @property
    def subscribing(self) -> bool:
        """A subscribe or unsubscribe is under way (they run one at a time, in order)."""
        return self._subscriptions.locked()

    async def unsubscribe_except(self, keep: Callable[[uuid.UUID], bool]) -> None:
        """Leave the channels of sessions this node no longer holds."""
        async with self._subscriptions:
            for channel in list(self._subscribed):
                session_id = session_of(channel)
                if session_id is None or not keep(session_id):
                    await self.backplane.unsubscribe(channel)
                    self._subscribed.discard(channel)

    # Publishing --------------------------------------------------------------------------

    def frame(self, session_id: uuid.UUID, seq: int, text: str) -> None:
        if self.backplane.solitary:
            return
        message = f"f {self.node} {seq} {text}"
        if len(message) * 4 > self.backplane.max_message_bytes and (
            len(message.encode()) > self.backplane.max_message_bytes
        ):
            message = f"f {self.node} {seq} "  # the other nodes read it from storage
        self.backplane.publish(channel_of(session_id), message)

    def presence(
        self,
        session_id: uuid.UUID,
        last_seq: int,
        stored_seq: int,
        watchers: int,
        mirror_since: float,
    ) -> None:
        self.backplane.publish(
            channel_of(session_id),
            f"p {self.node} {last_seq} {stored_seq} {watchers} {mirror_since!r}",
        )

    def ended(self, session_id: uuid.UUID, last_seq: int, ended_at: datetime) -> None:
        message = f"e {self.node} {last_seq} {ended_at.isoformat()}"
        self.backplane.publish(channel_of(session_id), message)

    def erased(self, session_id: uuid.UUID) -> None:
        self.backplane.publish(channel_of(session_id), f"x {self.node}")

    def lobby(self, text: str, refresh: bool = False) -> None:
        if self.backplane.solitary:
            return
        message = f"{'r' if refresh else 'l'} {self.node} {text}"
        if len(message) * 4 > self.backplane.max_message_bytes and (
            len(message.encode()) > self.backplane.max_message_bytes
        ):
            # A session row too big to carry: the lobbies of other nodes miss it (the
            # session's own watchers, anywhere, do not).
            log.warning("a lobby message over %d bytes was not published", len(message))
            return
        self.backplane.publish(LOBBY_CHANNEL, message)

    # Receiving ---------------------------------------------------------------------------

    def _on_reset(self) -> None:
        self.resets += 1
        metrics.BACKPLANE_RESETS.inc()
        log.warning("backplane reconnected; sessions resync from storage where needed")
        if self._listener is not None:
            self._listener.on_backplane_reset()

    def _on_message(self, channel: str, message: str) -> None:
        # Every transport hands a node its own messages back (each frame of its mirror):
        # recognise them by the header, before any parsing copies the frame behind it.
        if message.startswith(self._own_header, 1):
            return
        listener = self._listener
        session_id = session_of(channel)
        if listener is None or (session_id is None and channel != LOBBY_CHANNEL):
            return
        kind, node, rest = [*message.split(" ", 2), "", ""][:3]
        self.messages_in += 1
        metrics.BACKPLANE_MESSAGES_IN.inc()
        try:
            if session_id is None:
                if kind not in ("l", "r"):
                    raise ValueError(f"unknown kind {kind!r}")
                listener.on_remote_lobby(node, rest, kind == "r")
            elif kind == "f":
                seq, text = rest.split(" ", 1)
                listener.on_remote_frame(session_id, int(seq), text or None)
            elif kind == "p":
                last, stored, watchers, since = rest.split(" ")
                note = PresenceNote(node, int(last), int(stored), int(watchers), float(since))
                listener.on_remote_presence(session_id, note)
            elif kind == "e":
                last_seq, ended_at = rest.split(" ")
                listener.on_remote_ended(
                    session_id, int(last_seq), datetime.fromisoformat(ended_at)
                )
            elif kind == "x":
                listener.on_remote_erased(session_id)
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except ValueError as exc:  # another version of the hub, or a foreign publisher
            # Only the kind of error: a message can carry a child's exercise data.
            log.warning("ignored a malformed backplane message (%s)", type(exc).__name__)
        except Exception:  # the backplane's delivery must go on whatever a handler does
            log.exception("handling a backplane message failed")
