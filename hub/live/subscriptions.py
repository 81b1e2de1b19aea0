"""Many sessions on one watcher connection (`/ws/watch`), without a socket.

A `Subscription` is a room's `Watcher` like any other (the room delivers to it and pushes
presence and `ended` into its outbox), but its outbox is its own small bounded queue inside
the connection, and every message it yields names its session. `Subscriptions` holds a
connection's subscriptions and decides what the connection's one writer sends next: the
connection's own messages first, then one message per ready subscription, round-robin, so a
session with a burst delays the others by one `batch` at most.

Past its bound (frames, or bytes) a subscription is dropped alone with an `error`
(`code: "resync"`, the last seq it delivered) and the connection carries on; the client
subscribes again with `since`. An overview subscription (`hub.live.overview`) queues no
frames: the connection's timer (`tick`) turns what changed into one `overview` message.

Rooms iterate their watchers while they deliver: a subscription dropped meanwhile leaves its
room later, when the endpoint collects `gone()`.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

from hub import closecodes
from hub.auth import Principal
from hub.frames import LOBBY, Subscribe
from hub.live.overview import Overview
from hub.live.sendqueue import SendQueue
from hub.live.subscription import Subscription, session_error, tagged

__all__ = ["Subscription", "Subscriptions", "session_error", "tagged"]


class Subscriptions:
    """One `/ws/watch` connection's subscriptions and what its writer sends next."""

    def __init__(
        self,
        max_subscriptions: int,
        queue_frames: int,
        queue_bytes: int,
        overview_hz: int,
    ) -> None:
        self.max_subscriptions = max_subscriptions
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.overview_hz = overview_hz  # the connection's default (hello), capped already
        # The connection's own messages (errors, lobby events) and the writer's wake-up; a
        # close requested here (shutdown) closes the connection.
        self.outbox = SendQueue(max(queue_frames, 1024), max(queue_bytes, 1 << 20))
        self.subs: dict[str, Subscription] = {}
        self.lobby = False
        self.reserved: set[str] = set()  # granted, being opened (storage, audit)
        self._ready: deque[Subscription] = deque()
        self._queued: set[Subscription] = set()
        self._dirty: set[Subscription] = set()
        self._gone: list[Subscription] = []

    # The client's requests -----------------------------------------------------------------

    def refusal(self, message: Subscribe, principal: Principal) -> str | None:
        """Why `message` cannot be granted (a `SessionError` text), or None. The session's
        existence is the endpoint's to check (`unknown`): it needs storage."""
        key = message.session_id
        if key == LOBBY:
            if message.mode != "overview":
                return session_error(key, "unknown", "the lobby feed is an overview")
            if principal.role not in ("admin", "therapist"):
                return session_error(key, "forbidden", "the lobby is for therapists and admins")
            if self.lobby or key in self.reserved:
                return session_error(key, "already_subscribed", "already subscribed")
            return None
        try:
            session_id = uuid.UUID(key)
        except ValueError:
            return session_error(key, "unknown", "session id is not a UUID")
        if not principal.may_read(session_id):
            return session_error(key, "forbidden", "this credential may not watch the session")
        if str(session_id) in self.subs or key in self.reserved:
            return session_error(key, "already_subscribed", "already subscribed")
        if len(self.subs) + len(self.reserved) >= self.max_subscriptions:
            return session_error(
                key, "cap", f"at most {self.max_subscriptions} subscriptions per connection"
            )
        return None

    def reserve(self, key: str) -> None:
        self.reserved.add(key)

    def unreserve(self, key: str) -> None:
        self.reserved.discard(key)

    def add(
        self,
        session_id: uuid.UUID,
        since: int | None,
        overview_hz: int | None = None,
        last_seq: int = 0,
        task: dict[str, Any] | None = None,
    ) -> Subscription:
        """A full subscription, or (`overview_hz`) an overview starting at `last_seq`."""
        overview = None
        if overview_hz is not None:
            overview = Overview(str(session_id), overview_hz, last_seq, task)
        sub = Subscription(self, session_id, since, overview)
        self.subs[sub.key] = sub
        return sub

    def remove(self, key: str) -> Subscription | None:
        """Unsubscribe: nothing more is sent for it (what was queued is dropped)."""
        sub = self.subs.get(key)
        if sub is not None:
            self._leave(sub)
        return sub

    def say(self, text: str) -> None:
        """A message of the connection's own (`unsubscribed`, an error, a lobby event)."""
        self.outbox.push(text)

    def close_lobby(self, code: closecodes.CloseCode) -> None:
        """The lobby's node shuts down: the connection closes (its rooms close it too)."""
        self.outbox.close(code, flush=True)

    def gone(self) -> list[Subscription]:
        """Subscriptions ended since the last call: the endpoint takes them out of their rooms."""
        gone, self._gone = self._gone, []
        return gone

    # From the rooms ------------------------------------------------------------------------

    def wake(self, sub: Subscription) -> None:
        if sub not in self._queued:
            self._queued.add(sub)
            self._ready.append(sub)
            self.outbox.ready.set()

    def touched(self, sub: Subscription) -> None:
        self._dirty.add(sub)

    def closed(
        self, sub: Subscription, code: closecodes.CloseCode, reason: str, flush: bool
    ) -> None:
        """The room (or the outbox's bound) closes `sub`."""
        if sub.dropped:
            return
        if code is closecodes.RESTART:  # the hub is shutting down: the whole connection goes
            self.outbox.close(code, reason, flush)
        elif code is closecodes.NORMAL and flush:  # `ended` is queued: it leaves once sent
            sub.finishing = True
            self.wake(sub)
        elif code is closecodes.UNKNOWN_SESSION:  # deleted: nothing to resume
            self._leave(sub)
            self.say(session_error(sub.key, "unknown", reason or "session was deleted"))
        else:  # behind its queue, or this node lost track: resume with `since`
            self._leave(sub)
            message = f"{reason or code.meaning}; subscribe again with since"
            self.say(session_error(sub.key, "resync", message, sub.delivered))

    def _leave(self, sub: Subscription) -> None:
        sub.clear()
        if self.subs.get(sub.key) is sub:
            del self.subs[sub.key]
        self._dirty.discard(sub)
        self._gone.append(sub)
        self.outbox.ready.set()  # the endpoint collects `gone`

    # For the writer ------------------------------------------------------------------------

    def take(self) -> list[str]:
        """What to send now: the connection's messages, then one per ready subscription."""
        out: list[str] = []
        outbox = self.outbox
        while outbox.items:
            out.append(outbox.pop())
        ready = self._ready
        for _ in range(len(ready)):
            sub = ready.popleft()
            self._queued.discard(sub)
            if sub.dropped:
                continue
            text = sub.next_message()
            if text is not None:
                out.append(text)
            if sub.has_more:
                self.wake(sub)
            elif sub.finishing and not sub.held:
                self._leave(sub)
        return out

    @property
    def pending(self) -> bool:
        return bool(self.outbox.items) or bool(self._ready) or bool(self._gone)

    def tick(self, now: float) -> None:
        """The connection's overview timer: each overview that is due and has news queues
        its update."""
        for sub in list(self._dirty):
            overview = sub.overview
            if overview is None or sub.dropped:
                self._dirty.discard(sub)
            elif overview.due(now):
                self._dirty.discard(sub)
                sub.outbox.push_tagged(overview.update(now))

    @property
    def overview_interval_s(self) -> float | None:
        """How often the timer must tick (the fastest overview), None: no overview."""
        intervals = [s.overview.interval_s for s in self.subs.values() if s.overview is not None]
        return min(intervals) if intervals else None
