"""SQLAlchemy 2.0 models; `Base.metadata` is Alembic's target.

Constraints that keep the data sane live in the schema, not only in the API, so rows written
by any path (HTTP, the live stream, a migration, a psql session) obey them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TASK_STATUSES = ("pending", "in_progress", "success", "failed", "skipped")
FRAME_KINDS = ("metrics", "task")

# Stable constraint names make migrations and drift checks deterministic.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Session(Base):
    """One exercise session of one child at one mirror."""

    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint("length(child_name) BETWEEN 1 AND 200", name="child_name_length"),
        CheckConstraint("child_age BETWEEN 0 AND 25", name="child_age_range"),
        CheckConstraint("child_height_cm > 20 AND child_height_cm < 250", name="height_range"),
        CheckConstraint("child_weight_kg > 1 AND child_weight_kg < 300", name="weight_range"),
        CheckConstraint("length(child_ref) BETWEEN 1 AND 64", name="child_ref_length"),
        Index("ix_sessions_created_at_id", "created_at", "id"),
        Index("ix_sessions_child_ref_created_at", "child_ref", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    child_name: Mapped[str] = mapped_column(String(200))
    child_age: Mapped[int | None]
    child_height_cm: Mapped[float | None] = mapped_column(Float)
    child_weight_kg: Mapped[float | None] = mapped_column(Float)
    # A pseudonym the clinic chooses for the child (no name): links the child's sessions.
    child_ref: Mapped[str | None] = mapped_column(String(64))
    # Set by the live path: when the mirror first connected and when the session ended.
    mirror_connected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Mirror connections made to the session (each one after the first followed a lost one);
    # NULL for sessions recorded before the hub counted them.
    mirror_connections: Mapped[int | None] = mapped_column(Integer, server_default=text("0"))


class Task(Base):
    """One exercise (raise_hand, squat, …) within a session."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("status", TASK_STATUSES), name="status_allowed"),
        CheckConstraint("duration_seconds >= 0", name="duration_non_negative"),
        CheckConstraint("length(task_name) BETWEEN 1 AND 100", name="task_name_length"),
        Index("ix_tasks_session_id_created_at", "session_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    task_name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Metric(Base):
    """A named measurement of a task (accuracy, stability, max_angle, …)."""

    __tablename__ = "metrics"
    __table_args__ = (
        CheckConstraint("length(name) BETWEEN 1 AND 100", name="name_length"),
        Index("ix_metrics_task_id_recorded_at", "task_id", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Frame(Base):
    """Every frame a mirror streamed, exactly once: the session's durable record.

    The primary key (session_id, seq) is what makes storage idempotent: a resent frame hits
    ON CONFLICT DO NOTHING. Metric frames form the time series; task frames also update `tasks`.
    """

    __tablename__ = "frames"
    __table_args__ = (
        CheckConstraint("seq >= 1", name="seq_positive"),
        CheckConstraint(_in("kind", FRAME_KINDS), name="kind_allowed"),
    )

    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    task_id: Mapped[uuid.UUID | None]
    # Device clock (seconds since the epoch, as the mirror measured) and hub clock.
    device_ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)


class AuditEntry(Base):
    """Who read or watched which session, and when. No foreign key: the trail of a session
    outlives nothing (erasure removes it), but must not block deleting the session."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_session_id_at", "session_id", "at"),
        Index("ix_audit_log_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(40))
    session_id: Mapped[uuid.UUID | None]


class ConsoleSession(Base):
    """A therapist's sign-in to the console: the browser holds a random secret in a cookie,
    the hub only its SHA-256 (`id`), so a copy of this table opens no console."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    # The `jti` of the login code that opened it: unique, so each code opens one session.
    login_code: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
