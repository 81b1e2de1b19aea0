"""HTTP request and response bodies (msgspec Structs); the OpenAPI schemas come from these.

msgspec is the one schema library of the hub, for HTTP bodies and WebSocket frames alike: it
decodes and validates in one pass, several times faster than the alternatives, and emits JSON
Schema that `hub.openapi` turns into OpenAPI components.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from hub.storage.models import TASK_STATUSES

TaskStatus = Literal["pending", "in_progress", "success", "failed", "skipped"]
assert set(get_args(TaskStatus)) == set(TASK_STATUSES)  # one list, two spellings

# (?!\n): `$` alone would also match before a trailing newline.
METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*(?!\n)$"
MetricName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=100,
        pattern=METRIC_NAME_PATTERN,
        description="Metric name such as `accuracy`, `stability`, `max_angle`.",
    ),
]
# Finite, bounded metric values: JSON has no NaN and storing 1e300 helps nobody.
MetricValue = Annotated[float, Meta(ge=-1e12, le=1e12)]
Metrics = Annotated[dict[MetricName, MetricValue], Meta(max_length=200)]


# PostgreSQL text cannot hold NUL characters; refuse them up front (422, not 500).
NO_NUL = r"^[^\x00]*$"
TaskName = Annotated[
    str, Meta(min_length=1, max_length=100, pattern=NO_NUL, description="e.g. `raise_hand`")
]


# A pseudonym, not a name: letters, digits and `_ . : -` only (e.g. `child-0042`).
CHILD_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*(?!\n)$"
ChildRef = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=CHILD_REF_PATTERN,
        description="The clinic's pseudonymous reference to the child, e.g. `child-0042`.",
    ),
]


class SessionCreate(Struct, forbid_unknown_fields=True):
    child_name: Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
    child_age: Annotated[int, Meta(ge=0, le=25)] | None = None
    child_height_cm: Annotated[float, Meta(gt=20, lt=250)] | None = None
    child_weight_kg: Annotated[float, Meta(gt=1, lt=300)] | None = None
    child_ref: ChildRef | None = None


class SessionOut(Struct):
    id: uuid.UUID
    created_at: datetime
    child_name: str
    child_age: int | None
    child_height_cm: float | None
    child_weight_kg: float | None
    mirror_connected_at: datetime | None = None
    ended_at: datetime | None = None
    child_ref: str | None = None


class SessionCreated(SessionOut):
    # The credential the session's mirror streams with (role mirror, this session only).
    mirror_token: str | None = None


class SessionPage(Struct):
    items: list[SessionOut]
    # Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: str | None = None


Finite = Annotated[float, Meta(ge=-1e12, le=1e12)]


class MetricInfo(Struct, forbid_unknown_fields=True):
    """How to show and judge one metric (hub.catalogue)."""

    display_name: Annotated[str, Meta(min_length=1, max_length=100)]
    unit: Annotated[str, Meta(max_length=20, description="as shown: `%`, `°`, `cm`, or empty")]
    # The UCUM code of the shown unit (`%`, `deg`, `cm`, `1`); null: none is known.
    ucum: Annotated[str, Meta(min_length=1, max_length=40)] | None = None
    # Shown value = stored value times scale (accuracy is stored 0-1 and shown in %).
    scale: Annotated[float, Meta(gt=0, le=1e6)] = 1.0
    decimals: Annotated[int, Meta(ge=0, le=6)] = 2
    # [low, high] in the shown unit; null: no range is known.
    good_range: tuple[Finite, Finite] | None = None
    better: Literal["higher", "lower", "in_range"] | None = None

    def __post_init__(self) -> None:
        if self.good_range is not None and self.good_range[0] > self.good_range[1]:
            raise ValueError("good_range must be [low, high] with low <= high")


class Catalogue(Struct, forbid_unknown_fields=True):
    metrics: dict[MetricName, MetricInfo]


class TaskCreate(Struct, forbid_unknown_fields=True):
    task_name: TaskName
    duration_seconds: Annotated[float, Meta(ge=0, le=86_400)] | None = None
    status: TaskStatus = "pending"
    metrics: Metrics = msgspec.field(default_factory=dict)


class TaskOut(Struct):
    id: uuid.UUID
    session_id: uuid.UUID
    task_name: str
    status: TaskStatus
    duration_seconds: float | None
    metrics: dict[str, Any]
    created_at: datetime
    updated_at: datetime


MetricsBatch = Annotated[
    dict[MetricName, MetricValue],
    Meta(
        min_length=1,
        max_length=200,
        description='Metric name → value, e.g. {"accuracy": 0.92, "max_angle": 170}.',
    ),
]


class MetricOut(Struct):
    id: int
    task_id: uuid.UUID
    name: str
    value: float
    recorded_at: datetime


class SeriesPoint(Struct):
    t: datetime
    value: float
    # The frame's seq (with buckets: the last in the bucket). None: a task result, recorded
    # with POST /tasks/{id}/metrics or by a finished task frame, not a streamed frame.
    seq: int | None = None


class SeriesOut(Struct):
    session_id: uuid.UUID
    metric: str
    bucket_ms: int | None
    points: list[SeriesPoint]


class MetricSummary(Struct):
    """One metric of one task over the metric frames the mirror streamed."""

    count: int
    min: float
    mean: float
    max: float
    last: float  # the value of the highest seq


class TaskReport(Struct):
    task_id: uuid.UUID
    task_name: str
    status: TaskStatus
    # As recorded (a finished frame or POST /sessions/{id}/tasks); null if none was.
    duration_seconds: float | None
    # Device times of the task's first and last stored frame; null: no frame names the task.
    first_frame_at: datetime | None
    last_frame_at: datetime | None
    frames: int
    metrics: dict[str, MetricSummary]  # from the metric frames, by metric name
    results: dict[str, Any]  # the task's recorded result metrics


class Completeness(Struct):
    frames_stored: int
    first_seq: int | None
    last_seq: int | None
    # Seqs between 1 and last_seq that are not stored, as [first, last] ranges (at most 1,000).
    missing_ranges: list[tuple[int, int]]
    missing_count: int
    # Times the mirror's connection was lost and made again (connections after the first);
    # null for a session recorded before the hub counted them.
    mirror_disconnections: int | None = None


class SessionReport(Struct):
    session_id: uuid.UUID
    child_ref: str | None
    created_at: datetime
    mirror_connected_at: datetime | None
    ended_at: datetime | None
    tasks: list[TaskReport]  # in the order they were created
    # Metric frames that name no task.
    outside_tasks: dict[str, MetricSummary]
    completeness: Completeness


class LiveStats(Struct):
    sessions: int  # live sessions in memory
    mirrors: int
    watchers: int
    buffered_frames: int  # accepted, not yet committed
    buffer_max_frames: int
    buffer_peak_frames: int  # highest since start; never above buffer_max_frames
    storage_failures: int  # consecutive failed flush attempts; 0 while storage answers
    node: str  # this node's id on the backplane
    backplane: Literal["memory", "postgres", "redis"]
    backplane_resets: int  # reconnections of the backplane since start


class Health(Struct):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "unavailable"]
    version: str
    # "disabled" only when HUB_AUTH_DISABLED is set: nobody needs a credential then.
    auth: Literal["enabled", "disabled"]
    live: LiveStats


class Liveness(Struct):
    status: Literal["ok"]


class Readiness(Struct):
    status: Literal["ready", "not_ready"]
    database: Literal["ok", "unavailable"]
    # "unknown" while the database does not answer.
    migrations: Literal["current", "not_current", "unknown"]
    draining: bool  # shutting down (SIGTERM): storing what it holds, taking nothing new
    failed: list[str]  # the checks that failed: database, migrations, draining


class FieldError(Struct):
    field: str
    message: str


class ErrorBody(Struct):
    error: str  # machine-readable code: validation_error, not_found, payload_too_large, …
    message: str
    fields: list[FieldError] | None = None


class AuditOut(Struct):
    id: int
    at: datetime
    actor: str
    role: str
    action: str  # read_session, list_sessions, read_tasks, read_metrics, read_series, watch, …
    session_id: uuid.UUID | None


class AuditPage(Struct):
    items: list[AuditOut]
    # Pass as `before_id` for the next (older) page; null on the last page.
    next_before_id: int | None = None


class Deleted(Struct):
    deleted: uuid.UUID


class ProgressPoint(Struct):
    """One metric's mean over one exercise of one visit (the metric frames it streamed)."""

    session_id: uuid.UUID
    created_at: datetime  # when the visit's session was created
    task_name: str
    metric: str
    mean: float
    count: int


class ChildProgress(Struct):
    child_ref: str
    sessions: int  # visits with this child_ref (at most the newest 100 are summarised)
    points: list[ProgressPoint]  # oldest visit first
