"""What one session may hold in memory, and whether a frame would take it past that.

A room counts what its session holds as it grows (every metric name, and an upper bound of the
snapshot's size: `TASK_BYTES`, `METRIC_BYTES`); `refusal` checks a frame against those counts
before it is accepted, so a frame over a limit is never stored or published.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hub.frames import Frame, MetricsFrame, ProtocolError, TaskFrame

# What a snapshot spends on a task besides its metrics (id, status, times, JSON syntax), and
# on one metric entry besides its name (quotes, colon, the longest number, a comma). The
# state's size is counted with these, so it stays an upper bound of the snapshot's.
TASK_BYTES = 256
METRIC_BYTES = 28


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one session may hold in memory (and so in its snapshot and its tasks rows)."""

    tasks: int = 500  # distinct task ids
    task_metrics: int = 256  # distinct result-metric names of one task
    session_metrics: int = 1_000  # distinct metric names over the session's values and tasks
    state_bytes: int = 1 << 20  # the snapshot's tasks and latest values, in bytes


def refusal(
    frame: Frame,
    limits: Limits,
    latest: dict[str, float],
    tasks: dict[str, dict[str, Any]],
    metric_names: set[str],
    state_bytes: int,
) -> ProtocolError | None:
    """Why `frame` would take a session holding `latest` values, `tasks`, `metric_names`
    and about `state_bytes` of state past `limits`, or None: it fits."""
    if isinstance(frame, MetricsFrame):
        if frame.values.keys() <= latest.keys():
            return None  # the usual frame: new values of names the session has
        return _metrics_refusal(
            frame.seq, latest, frame.values, 0, limits, False, metric_names, state_bytes
        )
    if not isinstance(frame, TaskFrame):
        return None  # a frame that adds nothing to the snapshot's state has no limit here
    task = tasks.get(str(frame.task_id))
    if task is None:
        if len(tasks) >= limits.tasks:
            return ProtocolError(
                "too_many_tasks",
                f"task {frame.task_id} would be this session's task number"
                f" {len(tasks) + 1}; the limit is {limits.tasks}",
                frame.seq,
                frame.seq,  # refused: the hub still expects this seq
            )
        return _metrics_refusal(
            frame.seq,
            {},
            frame.metrics,
            TASK_BYTES + len(frame.task_name),
            limits,
            True,
            metric_names,
            state_bytes,
        )
    return _metrics_refusal(
        frame.seq, task["metrics"], frame.metrics, 0, limits, True, metric_names, state_bytes
    )


def _metrics_refusal(
    seq: int,
    current: dict[str, float],
    values: dict[str, float],
    extra_bytes: int,
    limits: Limits,
    is_task: bool,
    metric_names: set[str],
    state_bytes: int,
) -> ProtocolError | None:
    new = [name for name in values if name not in current]
    if not new and not extra_bytes:
        return None  # the usual frame: new values of names the session has
    if is_task and len(current) + len(new) > limits.task_metrics:
        return ProtocolError(
            "too_many_metric_names",
            f"this frame would give its task {len(current) + len(new)} metric names;"
            f" the limit is {limits.task_metrics} per task",
            seq,
            seq,
        )
    unseen = sum(1 for name in new if name not in metric_names)
    if len(metric_names) + unseen > limits.session_metrics:
        return ProtocolError(
            "too_many_metric_names",
            f"this frame would give the session {len(metric_names) + unseen} metric"
            f" names; the limit is {limits.session_metrics} per session",
            seq,
            seq,
        )
    grown = extra_bytes + sum(METRIC_BYTES + len(name) for name in new)
    if grown and state_bytes + grown > limits.state_bytes:
        return ProtocolError(
            "session_state_too_large",
            f"this frame would grow the session's state (its snapshot) to about"
            f" {state_bytes + grown} bytes; the limit is {limits.state_bytes}",
            seq,
            seq,
        )
    return None
