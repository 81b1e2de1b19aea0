"""Rooms: one per live session; fan-out to watchers through bounded per-watcher send queues.

`Room.offer` runs on the mirror's reader and never awaits: it appends the frame's JSON text
(encoded once for all watchers) to each watcher's send queue (`hub.live.sendqueue`). Each
watcher has its own writer task that drains its queue into its socket, so a slow watcher only
ever delays itself. A watcher whose queue passes its bound is closed with LAGGING and resumes
with `since`: we chose that over downsampling because dropping frames would break the
gap-free guarantee, while a resume is served from memory or PostgreSQL.
"""

from __future__ import annotations

import dataclasses
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
from hub.live.limits import METRIC_BYTES, TASK_BYTES, Limits, refusal
from hub.live.sendqueue import Watcher

__all__ = ["DEFAULT_REPLAY_BYTES", "RemotePresence", "Room", "Watcher"]

# The default byte bound of the replay log, for callers (tests) that give only the frames.
DEFAULT_REPLAY_BYTES = 1 << 20


@dataclasses.dataclass
class RemotePresence:
    watchers: int
    mirror_since: float  # when the node's mirror connected (database clock); 0: none
    heard_at: float  # monotonic time of the last heartbeat


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
        replay_bytes: int = DEFAULT_REPLAY_BYTES,
        latest: dict[str, float] | None = None,
    ):
        self.session = session
        self.tasks: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, float] = {}
        # What the session holds, counted as it grows (see `Limits`): every metric name in
        # `latest` or in a task, and an upper bound of the snapshot's size.
        self.metric_names: set[str] = set()
        self.state_bytes = 0
        for task in tasks:
            stored_metrics, task["metrics"] = task["metrics"], {}
            self._add_task(str(task["id"]), task)
            self._add_metrics(task["metrics"], stored_metrics)
        self._add_metrics(self.latest, latest or {})
        self.watchers: set[Watcher] = set()
        # Other nodes' share of the presence, refreshed by their heartbeats.
        self.remote: dict[str, RemotePresence] = {}
        self.replay_frames = replay_frames
        # Highest seq published to this room's watchers; every frame up to it was published.
        self.published_seq = seq
        # Highest seq known to exist (here or on another node): above `published_seq` while
        # frames are missing here, which the room then reads from storage (`hub.live.gaps`).
        self.known_seq = seq
        # Frames that arrived ahead of a gap, waiting for the gap to be filled.
        self.pending: dict[int, tuple[str, Frame | None]] = {}
        self.max_pending = max_pending
        self.pending_bytes = 0
        # Recent frames (seq, text). Trimmed only below the stored seq, so every frame that is
        # not here is in PostgreSQL: a resume reads PostgreSQL, then this log, then the outbox.
        self.log: deque[tuple[int, str]] = deque()
        self.log_bytes = 0
        self.replay_bytes = replay_bytes  # the log's bound in bytes, besides `replay_frames`

    def offer(self, seq: int, text: str | None, frame: Frame | None = None) -> None:
        """Take frame `seq` from anywhere. A repeat is ignored; a frame ahead of a gap waits
        in `pending` (see `behind`). `text` None: the frame exists but must be read from
        storage (a backplane could not carry it); so must frames past `max_pending`."""
        if seq <= self.published_seq:
            return
        self.known_seq = max(self.known_seq, seq)
        if seq > self.published_seq + 1 or text is None:
            if (
                text is not None
                and seq not in self.pending
                and len(self.pending) < self.max_pending
                and self.pending_bytes + len(text) <= self.replay_bytes
            ):
                self.pending[seq] = (text, frame)
                self.pending_bytes += len(text)
            return
        self._publish(seq, text, frame)
        pending = self.pending
        while pending:
            entry = pending.pop(self.published_seq + 1, None)
            if entry is None:
                break
            self.pending_bytes -= len(entry[0])
            self._publish(self.published_seq + 1, *entry)
        if not pending:
            self.pending_bytes = 0
            return
        # Entries at or below seq cannot be published any more (duplicates): drop them.
        for stale in [s for s in pending if s <= self.published_seq]:
            self.pending_bytes -= len(pending.pop(stale)[0])

    @property
    def behind(self) -> bool:
        """Frames up to `known_seq` exist but have not reached this room yet."""
        return self.published_seq < self.known_seq

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
        self.published_seq = seq
        self.log.append((seq, text))
        self.log_bytes += len(text)
        if isinstance(frame, MetricsFrame):
            self._add_metrics(self.latest, frame.values)
        elif isinstance(frame, TaskFrame):
            self._apply_task(frame)
        for watcher in self.watchers:
            watcher.deliver(seq, text, frame)

    def _apply_task(self, frame: TaskFrame) -> None:
        # In place: a frame costs what it changes, never a copy of the task's state.
        key = str(frame.task_id)
        task = self.tasks.get(key)
        if task is None:
            task = {
                "id": key,
                "task_name": frame.task_name,
                "metrics": {},
                "duration_seconds": None,
            }
            self._add_task(key, task)
        task["status"] = frame.status
        if frame.duration_seconds is not None:
            task["duration_seconds"] = frame.duration_seconds
        self._add_metrics(task["metrics"], frame.metrics)

    def _add_task(self, key: str, task: dict[str, Any]) -> None:
        self.tasks[key] = task
        self.state_bytes += TASK_BYTES + len(task["task_name"])

    def _add_metrics(self, into: dict[str, float], values: dict[str, float]) -> None:
        if not values.keys() <= into.keys():  # new names (a set test in C: the usual no)
            for name in values.keys() - into.keys():
                self.state_bytes += METRIC_BYTES + len(name)
                self.metric_names.add(name)
        into.update(values)

    def refusal(self, frame: Frame, limits: Limits) -> ProtocolError | None:
        """Why `frame` would take this session past `limits`, or None: it fits. Checked where
        the mirror's frames are accepted (before `offer`), so a frame over a limit is never
        stored or published; other nodes' rooms take what that node accepted."""
        if type(frame) is MetricsFrame and frame.values.keys() <= self.latest.keys():
            return None  # the usual frame, answered without a call: new values of known names
        return refusal(frame, limits, self.latest, self.tasks, self.metric_names, self.state_bytes)

    def trim(self, stored_seq: int) -> None:
        log = self.log
        while (
            log
            and (len(log) > self.replay_frames or self.log_bytes > self.replay_bytes)
            and log[0][0] <= stored_seq
        ):
            self.log_bytes -= len(log.popleft()[1])

    def oldest_logged(self) -> int | None:
        return self.log[0][0] if self.log else None

    def logged_after(self, seq: int) -> list[str]:
        return [text for s, text in self.log if s > seq]

    def want(self, seq: int) -> bool:
        """Frames up to `seq` exist (another node accepted them, or storage holds them).
        True if that is news: the room is behind now and should be filled."""
        if seq <= self.known_seq:
            return False
        self.known_seq = seq
        return True

    def add_task_results(self, task_id: str, values: dict[str, float]) -> None:
        """Results recorded over HTTP (stored already) show in snapshots, as a finished task
        frame's do; a task this room does not hold is left to storage."""
        task = self.tasks.get(task_id)
        if task is not None:
            task["metrics"] = {**task["metrics"], **values}

    def update_session(self, **fields: Any) -> None:
        """What the snapshot says of the session row (e.g. `ended_at`) changed."""
        self.session.update(fields)

    # Watchers ----------------------------------------------------------------------------

    def add_watcher(self, watcher: Watcher) -> None:
        self.watchers.add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def close_watchers(
        self,
        code: closecodes.CloseCode,
        reason: str = "",
        flush: bool = False,
        last: str | None = None,
    ) -> None:
        """Close every watcher with `code`, after sending what is queued if `flush`, and
        `last` after it."""
        for watcher in self.watchers:
            if last is not None:
                watcher.outbox.push(last)
            watcher.outbox.close(code, reason, flush)

    # Presence ----------------------------------------------------------------------------

    @property
    def remote_mirror(self) -> bool:
        """Another node says the session's mirror is connected there."""
        return any(r.mirror_since for r in self.remote.values())

    def hear(self, node: str, watchers: int, mirror_since: float, heard_at: float) -> bool:
        """Another node's share of the presence (none: it left); True if what this room's
        watchers see changed."""
        before = self.remote.get(node)
        if watchers == 0 and not mirror_since:
            self.remote.pop(node, None)
        else:
            self.remote[node] = RemotePresence(watchers, mirror_since, heard_at)
        after = self.remote.get(node)
        if before is None or after is None:
            return (before is None) != (after is None)
        return (before.watchers, bool(before.mirror_since)) != (
            after.watchers,
            bool(after.mirror_since),
        )

    def knows(self, node: str) -> bool:
        return node in self.remote

    def forget_silent(self, heard_before: float) -> int:
        """Forget the nodes not heard since `heard_before`; how many there were."""
        gone = [node for node, r in self.remote.items() if r.heard_at < heard_before]
        for node in gone:
            del self.remote[node]
        return len(gone)

    def heard_all(self, heard_at: float) -> None:
        """Count every known node as heard at `heard_at` (our own link was down meanwhile)."""
        for remote in self.remote.values():
            remote.heard_at = heard_at

    def presence(self, joining: int = 0, mirror_here: bool = False) -> Presence:
        """`mirror_here`: the session's mirror is connected to this node (the session knows)."""
        remote = self.remote.values()
        mirror = mirror_here or any(r.mirror_since for r in remote)
        return Presence(
            mirror="connected" if mirror else "disconnected",
            watchers=len(self.watchers) + joining + sum(r.watchers for r in remote),
        )

    def broadcast_presence(self, joining: int = 0, mirror_here: bool = False) -> None:
        text = encode(self.presence(joining, mirror_here)).decode()
        for watcher in self.watchers:
            watcher.outbox.push(text)

    def snapshot(self, last_seq: int, ended: bool, mirror_here: bool = False) -> str:
        # msgspec encodes the rows' datetimes and UUIDs itself.
        return encode(
            Snapshot(
                session=self.session,
                tasks=list(self.tasks.values()),
                latest=dict(self.latest),
                presence=self.presence(mirror_here=mirror_here),
                last_seq=last_seq,
                ended=ended,
            )
        ).decode()
