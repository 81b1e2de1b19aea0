"""Per-session live state: the seq rules, which mirror owns the session, what is stored.

Four seq counters describe a session on this node; at every moment
    stored_seq <= last_accepted     acks never pass `stored_seq` (committed to PostgreSQL);
                                    `last_accepted` is the last frame taken into the write
                                    buffer, here or by the mirror's connection on another node
    room.published_seq <= room.known_seq
                                    the room publishes every seq once, in order, up to
                                    `published_seq`; `known_seq` is the highest seq known to
                                    exist on any node (above it: a gap, filled from storage)
A frame accepted here is published at once (`last_accepted <= room.known_seq` unless storage
said more: `adopt_stored`), and a stored frame is in the room's log or in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

from hub import closecodes
from hub.frames import ProtocolError
from hub.live.rooms import Room
from hub.live.sendqueue import SendQueue


class MirrorLink:
    """The hub's side of one mirror connection: its send queue and its latest cumulative ack."""

    def __init__(self, bound: int) -> None:
        self.outbox = SendQueue(bound)
        self.acked = 0
        self.acked_at = 0.0  # when `acked` last grew (its commit): for the ack latency

    def ack(self, seq: int) -> None:
        # Acks are cumulative, so only the newest matters: the writer sends `acked` when due.
        if seq > self.acked:
            self.acked = seq
            self.acked_at = time.perf_counter()
            self.outbox.ready.set()


class LiveSession:
    def __init__(self, session_id: uuid.UUID, last_seq: int, ended: bool, room: Room) -> None:
        self.id = session_id
        # Highest seq accepted into the buffer (== stored after a restart: loaded from storage).
        self.last_accepted = last_seq
        # Highest seq committed to PostgreSQL; acks never pass it.
        self.stored_seq = last_seq
        self.ended = ended
        self.room = room
        self.mirror: MirrorLink | None = None
        self.pins = 0  # connections using this session; see Registry.use
        self.erased = False  # deleted by an admin: its clients are closed with 4004
        self.mirror_since = 0.0  # when the local mirror connected (database clock); 0: none
        # Ended (at that time) after this seq, which the room has not published yet: its
        # watchers get `ended` once it has (see LiveHub._end_after).
        self.end_after: tuple[int, datetime] | None = None
        # Taken out of memory while connections may still hold it (LiveHub._lose_track):
        # nobody may join or attach to it any more.
        self.dropped = False
        self._stored_changed = asyncio.Event()

    # Held by connections -----------------------------------------------------------------

    def pin(self) -> None:
        self.pins += 1

    def unpin(self) -> None:
        self.pins -= 1

    @property
    def idle(self) -> bool:
        return self.pins == 0 and self.stored_seq == self.last_accepted

    def drop(self) -> None:
        """Out of memory while connections may still hold it: they are turned away."""
        self.dropped = True

    def erase(self) -> None:
        """Deleted: its clients are closed with UNKNOWN_SESSION, never to come back."""
        self.erased = True
        if self.mirror is not None:
            self.mirror.outbox.close(closecodes.UNKNOWN_SESSION, "session was deleted")
        self.room.close_watchers(closecodes.UNKNOWN_SESSION, "session was deleted")

    # The seq rules -----------------------------------------------------------------------

    def check_seq(self, seq: int) -> None:
        """Raise unless `seq` is the next one. Repeats are never stored or broadcast twice."""
        expected = self.last_accepted + 1
        if seq == expected:
            return
        if seq < expected:
            raise ProtocolError(
                "duplicate_seq",
                f"seq {seq} was already received; next expected is {expected}",
                seq,
                expected,
            )
        raise ProtocolError(
            "seq_gap", f"seq {seq} skips ahead; resend from seq {expected}", seq, expected
        )

    def accepted(self, seq: int) -> None:
        """Frame `seq` (checked with `check_seq`) is in the write buffer."""
        self.last_accepted = seq

    # The mirror --------------------------------------------------------------------------

    def attach_mirror(self, link: MirrorLink, since: float) -> None:
        """One mirror at a time: a new connection replaces the old (a device that reconnected
        before its old socket timed out); the old one is closed with REPLACED."""
        if self.mirror is not None:
            self.mirror.outbox.close(closecodes.REPLACED)
        self.mirror = link
        self.mirror_since = since
        link.ack(self.stored_seq)  # everything stored so far: the writer starts after it
        self.broadcast_presence()

    def detach_mirror(self, link: MirrorLink) -> bool:
        if self.mirror is not link:
            return False
        self.mirror = None
        self.mirror_since = 0.0
        self.broadcast_presence()
        return True

    def close_mirror(
        self, code: closecodes.CloseCode, reason: str = "", flush: bool = False
    ) -> None:
        if self.mirror is not None:
            self.mirror.outbox.close(code, reason, flush)

    # Presence, from this node's view -----------------------------------------------------

    def broadcast_presence(self, joining: int = 0) -> None:
        self.room.broadcast_presence(joining, mirror_here=self.mirror is not None)

    def watcher_count(self) -> int:
        """Watchers of the session on every node, as far as this one knows."""
        return self.room.presence(mirror_here=self.mirror is not None).watchers

    def snapshot(self, last_seq: int, ended: bool) -> str:
        return self.room.snapshot(last_seq, ended, mirror_here=self.mirror is not None)

    # The end -----------------------------------------------------------------------------

    def end_after_seq(self, last_seq: int, ended_at: datetime) -> bool:
        """The session ended after `last_seq`: no mirror may write any more. True if the room
        has published every frame up to it already (its watchers can be told now)."""
        self.ended = True
        self.room.want(last_seq)
        self.end_after = (last_seq, ended_at)
        return self.room.published_seq >= last_seq

    def end_due(self) -> tuple[int, datetime] | None:
        """The pending end, once the room has published up to it (then no longer pending)."""
        if self.end_after is None or self.room.published_seq < self.end_after[0]:
            return None
        due, self.end_after = self.end_after, None
        return due

    # Storage -----------------------------------------------------------------------------

    def adopt_stored(self, stored_seq: int) -> None:
        """Storage holds frames up to `stored_seq`, perhaps stored by another node's mirror
        connection: a mirror connecting here continues after them."""
        if stored_seq > self.last_accepted:
            self.last_accepted = stored_seq
        self.on_stored(stored_seq)

    def on_stored(self, seq: int) -> None:
        if seq > self.stored_seq:
            self.stored_seq = seq
            # Storage has every frame up to `seq`: the next one accepted comes after it.
            self.last_accepted = max(self.last_accepted, seq)
            if self.mirror is not None:
                self.mirror.ack(seq)
            self.room.trim(seq)
            self._stored_changed.set()

    async def wait_stored(self, seq: int) -> None:
        while self.stored_seq < seq:
            self._stored_changed.clear()
            await self._stored_changed.wait()
