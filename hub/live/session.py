"""Per-session live state: the seq rules, which mirror owns the session, what is stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

from hub import closecodes
from hub.frames import ProtocolError
from hub.live.rooms import Outbox, Room


class MirrorLink:
    """The hub's side of one mirror connection: its outbox and its latest cumulative ack."""

    def __init__(self, bound: int) -> None:
        self.outbox = Outbox(bound)
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
        self.pins = 0  # connections using this session; see LiveHub.use
        self.erased = False  # deleted by an admin: its clients are closed with 4004
        self.mirror_since = 0.0  # when the local mirror connected (database clock); 0: none
        # Ended (at that time) after this seq, which the room has not published yet: its
        # watchers get `ended` once it has (see LiveHub._end_after).
        self.end_after: tuple[int, datetime] | None = None
        # Taken out of memory while connections may still hold it (LiveHub._lost_track):
        # nobody may join or attach to it any more.
        self.dropped = False
        # A task filling this node's gap in the session's frames from storage.
        self.filling: asyncio.Task[None] | None = None
        self._stored_changed = asyncio.Event()

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

    def attach_mirror(self, link: MirrorLink, since: float) -> None:
        """One mirror at a time: a new connection replaces the old (a device that reconnected
        before its old socket timed out); the old one is closed with REPLACED."""
        if self.mirror is not None:
            self.mirror.outbox.close(closecodes.REPLACED)
        self.mirror = link
        self.mirror_since = since
        link.acked = self.stored_seq
        self.room.mirror_connected = True
        self.room.broadcast_presence()

    def detach_mirror(self, link: MirrorLink) -> bool:
        if self.mirror is not link:
            return False
        self.mirror = None
        self.mirror_since = 0.0
        self.room.mirror_connected = False
        self.room.broadcast_presence()
        return True

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

    @property
    def idle(self) -> bool:
        return self.pins == 0 and self.stored_seq == self.last_accepted
