"""Per-session live state: its lifecycle (`SessionState`), the seq rules, which mirror owns
the session, what is stored.

The lifecycle is a state machine in the style of python-websockets' `State`: the state changes
only through this class's methods (`end_after_seq`, `end_due`, `drop`, `erase`), along
`TRANSITIONS`; any other move raises `InvalidTransition`. These methods never await and never
touch a socket: they return what should happen and the caller (the node) does it. Callers ask
the derived facts (`writable`, `takes_frames_from`, `joinable`, `idle`, `mirror_connected`)
rather than combining states themselves.

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
import enum
import time
import uuid
from datetime import datetime

from hub import closecodes
from hub.frames import ProtocolError
from hub.live.rooms import Room
from hub.live.sendqueue import SendQueue


class SessionState(enum.Enum):
    """Where a session in this node's memory is in its life. There is no loading state: the
    registry builds a `LiveSession` only once its state has been read from storage."""

    LIVE = "live"  # a mirror may attach and write
    ENDING = "ending"  # ended after a seq this node's room has not published yet
    ENDED = "ended"  # ended, and the room has published every frame up to the end
    DROPPED = "dropped"  # out of memory while connections may hold it (its room lost track)
    ERASED = "erased"  # deleted by an admin: its clients are closed with 4004, for good


class SessionEvent(enum.Enum):
    END = "end"  # `end_after_seq`: the session ended after a seq (here or on another node)
    FINISH = "finish"  # `end_due`: the room has published up to the end; watchers are told
    DROP = "drop"  # `drop`: taken out of memory while connections may hold it
    ERASE = "erase"  # `erase`: deleted
    ATTACH = "attach"  # `attach_mirror`: a mirror connection takes the session over


LIVE, ENDING, ENDED = SessionState.LIVE, SessionState.ENDING, SessionState.ENDED
DROPPED, ERASED = SessionState.DROPPED, SessionState.ERASED

# Every legal move; anything else raises InvalidTransition. DROPPED and ERASED are final: the
# node holds neither in its registry, so no message from another node or storage reaches them.
TRANSITIONS: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (LIVE, SessionEvent.ATTACH): LIVE,  # no state change, but only a live session takes one
    (LIVE, SessionEvent.END): ENDING,
    # Told again (a mirror's `end` and another node's word, or a repeat): the newest counts.
    (ENDING, SessionEvent.END): ENDING,
    # Already told: nothing changes (storage keeps the first `ended_at`).
    (ENDED, SessionEvent.END): ENDED,
    (ENDING, SessionEvent.FINISH): ENDED,
    (LIVE, SessionEvent.DROP): DROPPED,
    (ENDING, SessionEvent.DROP): DROPPED,
    (ENDED, SessionEvent.DROP): DROPPED,
    (LIVE, SessionEvent.ERASE): ERASED,
    (ENDING, SessionEvent.ERASE): ERASED,
    (ENDED, SessionEvent.ERASE): ERASED,
}


class InvalidTransition(Exception):
    """A lifecycle method was called in a state that does not allow it: a bug in the caller."""

    def __init__(self, state: SessionState, event: SessionEvent) -> None:
        super().__init__(f"{event.value} is not allowed in state {state.value}")
        self.state = state
        self.event = event


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
            self.outbox.wake()


class LiveSession:
    def __init__(self, session_id: uuid.UUID, last_seq: int, ended: bool, room: Room) -> None:
        self.id = session_id
        self._state = ENDED if ended else LIVE
        self._last_accepted = last_seq  # see `last_accepted`
        self._stored_seq = last_seq  # see `stored_seq`
        self.room = room
        self._mirror: MirrorLink | None = None
        self._mirror_since = 0.0  # when the local mirror connected (database clock); 0: none
        self._pins = 0  # connections using this session; see Registry.use
        # In ENDING: the end (after that seq, at that time) its watchers are told once the
        # room has published up to it (see LiveHub._finish_if_due).
        self._pending_end: tuple[int, datetime] | None = None
        self._stored_changed = asyncio.Event()

    # The lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    def _move(self, event: SessionEvent) -> None:
        try:
            self._state = TRANSITIONS[self._state, event]
        except KeyError:
            raise InvalidTransition(self._state, event) from None

    @property
    def writable(self) -> bool:
        """A mirror may attach and write: the session has not ended, and is still this node's."""
        return self._state is LIVE

    def takes_frames_from(self, link: MirrorLink) -> bool:
        """`link`'s messages are taken: it is the session's mirror and the session is writable.
        (A replaced connection's are not: its mirror resends them to the one that owns it.)"""
        return self._mirror is link and self._state is LIVE

    @property
    def joinable(self) -> bool:
        """A watcher may join this object's room (a dropped one is fed no more)."""
        return self._state is not DROPPED and self._state is not ERASED

    @property
    def ended(self) -> bool:
        """Ended, whether or not this node's watchers have been told yet."""
        return self._state is ENDING or self._state is ENDED

    @property
    def ending(self) -> bool:
        """Ended after a seq this node's room has not published yet (see `end_due`)."""
        return self._state is ENDING

    @property
    def told_ended(self) -> bool:
        """Ended, and the room has published up to the end: a watcher joining now gets the
        catch-up, then `ended`."""
        return self._state is ENDED

    @property
    def pending_end(self) -> tuple[int, datetime] | None:
        """In ENDING: the end, as (last seq, ended at); else None."""
        return self._pending_end

    @property
    def dropped(self) -> bool:
        return self._state is DROPPED

    @property
    def erased(self) -> bool:
        return self._state is ERASED

    @property
    def gone(self) -> bool:
        """Dropped or erased: nothing more happens to this object."""
        return self._state is DROPPED or self._state is ERASED

    # Held by connections -----------------------------------------------------------------

    def pin(self) -> None:
        self._pins += 1

    def unpin(self) -> None:
        self._pins -= 1

    @property
    def idle(self) -> bool:
        """No connection uses it and everything it accepted is stored: it may leave memory."""
        return self._pins == 0 and self._stored_seq == self._last_accepted

    def drop(self) -> None:
        """Out of memory while connections may still hold it: they are turned away."""
        self._move(SessionEvent.DROP)

    def erase(self) -> None:
        """Deleted: its clients are closed with UNKNOWN_SESSION, never to come back."""
        self._move(SessionEvent.ERASE)
        if self._mirror is not None:
            self._mirror.outbox.close(closecodes.UNKNOWN_SESSION, "session was deleted")
        self.room.close_watchers(closecodes.UNKNOWN_SESSION, "session was deleted")

    # The seq rules -----------------------------------------------------------------------

    @property
    def last_accepted(self) -> int:
        """Highest seq accepted into the buffer (== stored after a restart: loaded from
        storage). Changed by `accepted`, `adopt_stored` and `on_stored`."""
        return self._last_accepted

    @property
    def stored_seq(self) -> int:
        """Highest seq committed to PostgreSQL; acks never pass it."""
        return self._stored_seq

    def check_seq(self, seq: int) -> None:
        """Raise unless `seq` is the next one. Repeats are never stored or broadcast twice."""
        expected = self._last_accepted + 1
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
        self._last_accepted = seq

    # The mirror --------------------------------------------------------------------------

    @property
    def mirror(self) -> MirrorLink | None:
        """This node's connection of the session's mirror, if any."""
        return self._mirror

    @property
    def mirror_connected(self) -> bool:
        """The session's mirror is connected to this node."""
        return self._mirror is not None

    @property
    def mirror_since(self) -> float:
        """When this node's mirror connection was made (database clock); 0.0: none."""
        return self._mirror_since

    def attach_mirror(self, link: MirrorLink, since: float) -> None:
        """One mirror at a time: a new connection replaces the old (a device that reconnected
        before its old socket timed out); the old one is closed with REPLACED. Only while
        `writable` (InvalidTransition otherwise: the caller checks first)."""
        self._move(SessionEvent.ATTACH)
        if self._mirror is not None:
            self._mirror.outbox.close(closecodes.REPLACED)
        self._mirror = link
        self._mirror_since = since
        link.ack(self._stored_seq)  # everything stored so far: the writer starts after it
        self.broadcast_presence()

    def detach_mirror(self, link: MirrorLink) -> bool:
        if self._mirror is not link:
            return False
        self._mirror = None
        self._mirror_since = 0.0
        self.broadcast_presence()
        return True

    def close_mirror(
        self, code: closecodes.CloseCode, reason: str = "", flush: bool = False
    ) -> None:
        if self._mirror is not None:
            self._mirror.outbox.close(code, reason, flush)

    # Presence, from this node's view -----------------------------------------------------

    def broadcast_presence(self, joining: int = 0) -> None:
        self.room.broadcast_presence(joining, mirror_here=self.mirror_connected)

    def watcher_count(self) -> int:
        """Watchers of the session on every node, as far as this one knows."""
        return self.room.presence(mirror_here=self.mirror_connected).watchers

    def snapshot(self, last_seq: int, ended: bool) -> str:
        return self.room.snapshot(last_seq, ended, mirror_here=self.mirror_connected)

    # The end -----------------------------------------------------------------------------

    def end_after_seq(self, last_seq: int, ended_at: datetime) -> bool:
        """The session ended after `last_seq`: no mirror may write any more. True if the room
        has published every frame up to it already (its watchers can be told now: `end_due`).
        In ENDED (told already) nothing changes and the answer is False."""
        before = self._state
        self._move(SessionEvent.END)
        if before is ENDED:
            return False
        self.room.want(last_seq)
        self._pending_end = (last_seq, ended_at)
        return self.room.published_seq >= last_seq

    def end_due(self) -> tuple[int, datetime] | None:
        """In ENDING, once the room has published up to the end: ENDED, and the end, which its
        watchers are told now (once). Otherwise None and nothing changes: this is a poll,
        made whenever the room has published more."""
        pending = self._pending_end
        if self._state is not ENDING or pending is None:
            return None
        if self.room.published_seq < pending[0]:
            return None
        self._move(SessionEvent.FINISH)
        self._pending_end = None
        return pending

    # Storage -----------------------------------------------------------------------------

    def adopt_stored(self, stored_seq: int) -> None:
        """Storage holds frames up to `stored_seq`, perhaps stored by another node's mirror
        connection: a mirror connecting here continues after them."""
        if stored_seq > self._last_accepted:
            self._last_accepted = stored_seq
        self.on_stored(stored_seq)

    def on_stored(self, seq: int) -> None:
        if seq > self._stored_seq:
            self._stored_seq = seq
            # Storage has every frame up to `seq`: the next one accepted comes after it.
            self._last_accepted = max(self._last_accepted, seq)
            if self._mirror is not None:
                self._mirror.ack(seq)
            self.room.trim(seq)
            self._stored_changed.set()

    async def wait_stored(self, seq: int) -> None:
        while self._stored_seq < seq:
            self._stored_changed.clear()
            await self._stored_changed.wait()
