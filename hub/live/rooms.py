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
from collections import deque
from typing import Any

from hub import closecodes
from hub.frames import MetricsFrame, Presence, Snapshot, TaskFrame, encode


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

    def push(self, text: str) -> bool:
        if self.close_code is not None:
            return False
        if len(self.items) >= self.bound:
            self.close(closecodes.LAGGING, "send queue full; reconnect with since=<last seq>")
            return False
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
    def __init__(self, session: dict[str, Any], tasks: list[dict[str, Any]], replay_frames: int):
        self.session = session
        self.tasks: dict[str, dict[str, Any]] = {str(t["id"]): t for t in tasks}
        self.latest: dict[str, float] = {}
        self.watchers: set[Watcher] = set()
        self.mirror_connected = False
        self.replay_frames = replay_frames
        # Recent frames (seq, text). Trimmed only below the stored seq, so every frame that is
        # not here is in PostgreSQL: a resume reads PostgreSQL, then this log, then the outbox.
        self.log: deque[tuple[int, str]] = deque()

    def publish(self, seq: int, text: str, frame: MetricsFrame | TaskFrame) -> None:
        self.log.append((seq, text))
        if isinstance(frame, MetricsFrame):
            self.latest.update(frame.values)
        else:
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
        return Presence(
            mirror="connected" if self.mirror_connected else "disconnected",
            watchers=len(self.watchers) + joining,
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
