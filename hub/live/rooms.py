"""Rooms: one per live session; fan-out to watchers through bounded per-watcher outboxes.

`publish` runs on the mirror's reader and never awaits: it appends the frame's JSON text (encoded
once for all watchers) to each watcher's outbox. Each watcher has its own writer task that
drains its outbox into its socket, so a slow watcher only ever delays itself. A watcher whose
outbox passes its bound is closed with LAGGING and resumes with `since`: we chose that over
downsampling because dropping frames would break the gap-free guarantee, while a resume is
served from memory or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from typing import Any

import msgspec

from hub import closecodes
from hub.frames import (
    Frame,
    MetricsFrame,
    Presence,
    ProtocolError,
    Snapshot,
    TaskFrame,
    decode_client_message,
    encode,
)


@dataclasses.dataclass
class RemotePresence:
    watchers: int
    mirror_since: float  # when the node's mirror connected (database clock); 0: none
    heard_at: float  # monotonic time of the last heartbeat


class Outbox:
    """A bounded queue of JSON texts for one connection, drained by that connection's writer."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.items: deque[str] = deque()
        self.ready = asyncio.Event()
        self.closing = asyncio.Event()  # set once a close is requested
        self.close_code: closecodes.CloseCode | None = None
        self.close_reason = ""
        self.flush_before_close = False
        self.oldest_at = 0.0  # when the oldest queued item arrived (perf_counter)

    def push(self, text: str) -> bool:
        if self.close_code is not None:
            return False
        if len(self.items) >= self.bound:
            self.close(closecodes.LAGGING, "send queue full; reconnect with since=<last seq>")
            return False
        if not self.items:
            self.oldest_at = time.perf_counter()
        self.items.append(text)
        self.ready.set()
        return True

    def close(self, code: closecodes.CloseCode, reason: str = "", flush: bool = False) -> None:
        """Ask the writer to close the socket, after sending what is queued if `flush`;
        otherwise queued items are dropped (the peer resumes from what it has)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason or code.meaning
            self.flush_before_close = flush
            self.ready.set()
            self.closing.set()


class Watcher:
    def __init__(self, bound: int, since: int | None) -> None:
        self.outbox = Outbox(bound)
        # Frames at or below this seq were already seen (a resume after a hub restart can
        # see the mirror resend frames the watcher got before): skip them.
        self.skip_upto = since or 0

    def offer(self, seq: int, text: str) -> None:
        if seq > self.skip_upto:
            self.outbox.push(text)


class Room:
    """What this node's watchers of one session see: the frames in seq order, and the state a
    snapshot needs. Frames arrive from the local mirror or from other nodes (backplane,
    storage); `offer` publishes each exactly once, in order, however they arrive."""

    def __init__(
        self,
        session: dict[str, Any],
        tasks: list[dict[str, Any]],
        replay_frames: int,
        seq: int,
        max_pending: int,
    ):
        self.session = session
        self.tasks: dict[str, dict[str, Any]] = {str(t["id"]): t for t in tasks}
        self.latest: dict[str, float] = {}
        self.watchers: set[Watcher] = set()
        self.mirror_connected = False  # a mirror on this node
        # Other nodes' share of the presence, refreshed by their heartbeats.
        self.remote: dict[str, RemotePresence] = {}
        self.replay_frames = replay_frames
        # Highest seq published to this room's watchers; every frame up to it was published.
        self.seq = seq
        # Highest seq known to exist; above `seq` while frames are missing here.
        self.wanted = seq
        # Frames that arrived ahead of a gap, waiting for the gap to be filled.
        self.pending: dict[int, tuple[str, Frame | None]] = {}
        self.max_pending = max_pending
        # Recent frames (seq, text). Trimmed only below the stored seq, so every frame that is
        # not here is in PostgreSQL: a resume reads PostgreSQL, then this log, then the outbox.
        self.log: deque[tuple[int, str]] = deque()

    def offer(self, seq: int, text: str | None, frame: Frame | None = None) -> None:
        """Take frame `seq` from anywhere. A repeat is ignored; a frame ahead of a gap waits
        in `pending` (see `behind`). `text` None: the frame exists but must be read from
        storage (a backplane could not carry it); so must frames past `max_pending`."""
        if seq <= self.seq:
            return
        self.wanted = max(self.wanted, seq)
        if seq > self.seq + 1 or text is None:
            if text is not None and len(self.pending) < self.max_pending:
                self.pending[seq] = (text, frame)
            return
        self._publish(seq, text, frame)
        pending = self.pending
        while pending:
            entry = pending.pop(self.seq + 1, None)
            if entry is None:
                break
            self._publish(self.seq + 1, *entry)
        if not pending:
            return
        # Entries at or below seq cannot be published any more (duplicates): drop them.
        for stale in [s for s in pending if s <= self.seq]:
            del pending[stale]

    @property
    def behind(self) -> bool:
        """Frames up to `wanted` exist but have not reached this room yet."""
        return self.seq < self.wanted

    def _publish(self, seq: int, text: str, frame: Frame | None) -> None:
        if frame is None:  # from another node or from storage: decoded only here
            try:
                decoded = decode_client_message(text)
            except (ProtocolError, msgspec.DecodeError):
                # A frame this hub cannot read (a newer hub's, during a rolling upgrade): the
                # watchers still get it as it is, as a resume from storage would give it;
                # only the snapshot's state misses what it says.
                decoded = None
            if isinstance(decoded, (MetricsFrame, TaskFrame)):
                frame = decoded
        self.seq = seq
        self.log.append((seq, text))
        if isinstance(frame, MetricsFrame):
            self.latest.update(frame.values)
        elif isinstance(frame, TaskFrame):
            self._apply_task(frame)
        for watcher in self.watchers:
            watcher.offer(seq, text)

    def _apply_task(self, frame: TaskFrame) -> None:
        key = str(frame.task_id)
        task = self.tasks.setdefault(
            key, {"id": key, "task_name": frame.task_name, "metrics": {}, "duration_seconds": None}
        )
        task["status"] = frame.status
        if frame.duration_seconds is not None:
            task["duration_seconds"] = frame.duration_seconds
        task["metrics"] = {**task["metrics"], **frame.metrics}

    def trim(self, stored_seq: int) -> None:
        log = self.log
        while len(log) > self.replay_frames and log[0][0] <= stored_seq:
            log.popleft()

    def oldest_logged(self) -> int | None:
        return self.log[0][0] if self.log else None

    def logged_after(self, seq: int) -> list[str]:
        return [text for s, text in self.log if s > seq]

    def presence(self, joining: int = 0) -> Presence:
        remote = self.remote.values()
        mirror = self.mirror_connected or any(r.mirror_since for r in remote)
        return Presence(
            mirror="connected" if mirror else "disconnected",
            watchers=len(self.watchers) + joining + sum(r.watchers for r in remote),
        )

    def broadcast_presence(self, joining: int = 0) -> None:
        text = encode(self.presence(joining)).decode()
        for watcher in self.watchers:
            watcher.outbox.push(text)

    def snapshot(self, last_seq: int, ended: bool) -> str:
        # msgspec encodes the rows' datetimes and UUIDs itself.
        return encode(
            Snapshot(
                session=self.session,
                tasks=list(self.tasks.values()),
                latest=dict(self.latest),
                presence=self.presence(),
                last_seq=last_seq,
                ended=ended,
            )
        ).decode()
