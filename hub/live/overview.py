"""Overview mode: one session conflated for a tile on a wall of sessions (sans-I/O).

Metric frames are conflated (only the latest value of each metric since the last update is
kept); task frames and presence changes are events, kept in order and never conflated. The
connection's one timer asks each dirty overview for its update at most `hz` times a second,
so a tile costs at most `hz` messages a second whatever the mirror's rate.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hub.frames import Frame, MetricsFrame, TaskFrame

_encode = msgspec.json.encode


class Overview:
    __slots__ = ("events", "interval_s", "key", "last_seq", "sent_at", "task", "values")

    def __init__(self, session_id: str, hz: int, last_seq: int, task: dict[str, Any] | None):
        self.key = session_id
        self.interval_s = 1 / hz
        self.last_seq = last_seq
        self.values: dict[str, float] = {}  # changed since the last update: latest of each
        self.task = task  # the current task: id, name, status of the newest task event
        self.events: list[str] = []  # task frames and presence texts, as encoded, in order
        self.sent_at = float("-inf")

    @property
    def dirty(self) -> bool:
        return bool(self.values or self.events)

    def frame(self, seq: int, text: str, frame: Frame | None) -> None:
        """Frame `seq`, published; `frame` decoded (None: a frame this hub cannot read,
        counted in `last_seq` only)."""
        self.last_seq = seq
        if isinstance(frame, MetricsFrame):
            self.values.update(frame.values)
        elif isinstance(frame, TaskFrame):
            self.task = {
                "task_id": str(frame.task_id),
                "task_name": frame.task_name,
                "status": frame.status,
            }
            self.events.append(text)

    def event(self, text: str) -> None:
        """A message that is not a frame but must not be lost (presence)."""
        self.events.append(text)

    def due(self, now: float) -> bool:
        return self.dirty and now - self.sent_at >= self.interval_s

    def update(self, now: float) -> str:
        """The `overview` message with what changed since the last one; starts afresh."""
        text = (
            f'{{"type":"overview","session_id":"{self.key}","last_seq":{self.last_seq},'
            f'"values":{_encode(self.values).decode()},"task":{_encode(self.task).decode()},'
            f'"events":[{",".join(self.events)}]}}'
        )
        self.values = {}
        self.events = []
        self.sent_at = now
        return text
