"""Wire protocol v1: a sans-I/O codec for the JSON text messages on the WebSockets.

No asyncio here: `decode_client_message` turns bytes into typed messages or raises
ProtocolError with a machine-readable code; `encode` (and `error_message` for a ProtocolError)
turns the hub → client Structs below into the bytes the hub sends.
docs/protocol.md describes the same protocol for client authors.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from hub.schemas import Metrics, TaskName, TaskStatus

PROTOCOL_VERSION = 1
# Watchers may ask for protocol 2: frames come in `batch` messages (mirrors speak 1 only).
PROTOCOL_BATCHED = 2
MAX_BATCH = 500
# What the hub puts into one `batch` to a protocol 2 watcher at most (besides a first frame
# that is larger alone), so that clients with a 1 MiB message limit can read every batch.
MAX_BATCH_BYTES = 512 * 1024

Seq = Annotated[int, Meta(ge=1, le=2**62)]
Timestamp = Annotated[float, Meta(ge=0, le=1e11, description="device clock, seconds since epoch")]


class ProtocolError(Exception):
    """A message broke the protocol. `code` is machine-readable; `seq` the offending frame."""

    def __init__(
        self, code: str, message: str, seq: int | None = None, expected_seq: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.seq = seq
        self.expected_seq = expected_seq


# Client → hub ----------------------------------------------------------------------------


class Hello(Struct, tag="hello", tag_field="type", forbid_unknown_fields=True):
    """First message of every client. `token` is the credential; `since` is for watchers;
    `max_delay_ms` for protocol 2 watchers (how long a frame may wait to share a batch)."""

    token: str | None = None
    since: Annotated[int, Meta(ge=0)] | None = None
    protocol: int = PROTOCOL_VERSION
    max_delay_ms: Annotated[int, Meta(ge=0, le=3_600_000)] | None = None
    # `/ws/watch` only: overview updates a second per session (capped by the hub).
    overview_hz: Annotated[int, Meta(ge=1, le=1000)] | None = None


class MetricsFrame(
    Struct, tag="metrics", tag_field="type", forbid_unknown_fields=True, omit_defaults=True
):
    """Live metric values at device time `ts`, optionally within a task."""

    seq: Seq
    ts: Timestamp
    values: Metrics
    task_id: uuid.UUID | None = None


TaskEventKind = Literal["started", "status", "finished"]


class TaskFrame(
    Struct, tag="task", tag_field="type", forbid_unknown_fields=True, omit_defaults=True
):
    """A task started, changed status, or finished (with duration and result metrics)."""

    seq: Seq
    ts: Timestamp
    task_id: uuid.UUID
    task_name: TaskName
    event: TaskEventKind
    status: TaskStatus
    duration_seconds: Annotated[float, Meta(ge=0, le=86_400)] | None = None
    metrics: Metrics = msgspec.field(default_factory=dict)


Frame = MetricsFrame | TaskFrame


class Batch(Struct, tag="batch", tag_field="type", forbid_unknown_fields=True):
    frames: Annotated[list[Frame], Meta(min_length=1, max_length=MAX_BATCH)]


class End(Struct, tag="end", tag_field="type", forbid_unknown_fields=True):
    """The mirror is done: the hub marks the session ended once every frame is stored."""

    last_seq: Annotated[int, Meta(ge=0)]


ClientMessage = Hello | MetricsFrame | TaskFrame | Batch | End

_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_KNOWN_TYPES = {"hello", "metrics", "task", "batch", "end"}


def decode_client_message(data: bytes | str) -> ClientMessage:
    """Decode and validate one message; ProtocolError says what is wrong and, if known, the seq."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(data, exc) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError("malformed_json", f"message is not valid JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("invalid_message", "message is nested too deeply") from None


def _classify(data: bytes | str, exc: msgspec.ValidationError) -> ProtocolError:
    # Error path only: look at the raw object to name the offending type and seq. Valid JSON
    # can still fail to decode untyped (numbers beyond float range, deep nesting).
    try:
        raw: Any = _any_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return ProtocolError("invalid_message", f"invalid message: {exc}")
    if not isinstance(raw, dict):
        return ProtocolError("invalid_message", "a message must be a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in _KNOWN_TYPES:
        return ProtocolError(
            "unknown_type", f"unknown message type {kind!r}; expected one of {sorted(_KNOWN_TYPES)}"
        )
    seq = raw.get("seq")
    if kind == "batch" and isinstance(raw.get("frames"), list):
        # Name the frame the error points at: "… - at `$.frames[3].values[...]`".
        where = re.search(r"\$\.frames\[(\d+)\]", str(exc))
        index = int(where.group(1)) if where else 0
        bad = raw["frames"][index] if index < len(raw["frames"]) else None
        seq = bad.get("seq") if isinstance(bad, dict) else None
    return ProtocolError(
        "invalid_frame",
        f"invalid {kind} message: {exc}",
        seq if type(seq) is int else None,  # not `true`, which isinstance(…, int) admits
    )


# Client → hub on `/ws/watch` (after hello) -------------------------------------------------

LOBBY = "*"  # the `session_id` of the lobby feed: sessions going live and ending


class Subscribe(Struct, tag="subscribe", tag_field="type", forbid_unknown_fields=True):
    session_id: Annotated[str, Meta(max_length=64)]  # a session's UUID, or LOBBY
    since: Annotated[int, Meta(ge=0)] | None = None
    mode: Literal["full", "overview"] = "full"
    overview_hz: Annotated[int, Meta(ge=1, le=1000)] | None = None


class Unsubscribe(Struct, tag="unsubscribe", tag_field="type", forbid_unknown_fields=True):
    session_id: Annotated[str, Meta(max_length=64)]


WatchMessage = Subscribe | Unsubscribe
_watch_decoder: msgspec.json.Decoder[WatchMessage] = msgspec.json.Decoder(WatchMessage)


def decode_watch_message(data: str) -> WatchMessage:
    """A `/ws/watch` client's message after hello; ProtocolError says what is wrong."""
    try:
        return _watch_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(
            "invalid_message", f"expected subscribe or unsubscribe: {exc}"
        ) from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError("malformed_json", f"message is not valid JSON: {exc}") from None


def frames_of(message: Frame | Batch) -> list[Frame]:
    return message.frames if isinstance(message, Batch) else [message]


def encode(message: Struct) -> bytes:
    return _encoder.encode(message)


# Hub → client ----------------------------------------------------------------------------


class Welcome(Struct, tag="welcome", tag_field="type"):
    session_id: uuid.UUID
    role: Literal["mirror", "watcher"]
    # Mirror: the highest seq the hub has accepted; resend only frames after it.
    # Watcher: the highest seq of the session so far.
    last_seq: int
    # Everything up to this seq is committed (a mirror drops those frames: an implicit ack).
    acked_seq: int
    max_message_bytes: int
    protocol: int = PROTOCOL_VERSION
    max_batch: int = MAX_BATCH
    # Which hub node (process) serves this connection: for logs and support, not for routing.
    node: str = ""


class BatchedWelcome(Welcome, tag="welcome"):
    """A protocol 2 watcher's welcome: also the batching delay in effect."""

    max_delay_ms: int = 0


class Ack(Struct, tag="ack", tag_field="type"):
    """Cumulative: every frame up to and including `seq` is committed to PostgreSQL."""

    seq: int


class Error(Struct, tag="error", tag_field="type", omit_defaults=True):
    code: str
    message: str
    seq: int | None = None  # the offending frame, when known
    expected_seq: int | None = None  # for seq_gap / duplicate_seq: the seq the hub expects


class Presence(Struct, tag="presence", tag_field="type"):
    mirror: Literal["connected", "disconnected"]
    watchers: int


class Ended(Struct, tag="ended", tag_field="type"):
    last_seq: int


class Snapshot(Struct, tag="snapshot", tag_field="type"):
    """What a watcher gets on join without `since`: the state as of `last_seq`."""

    session: dict[str, Any]
    tasks: list[dict[str, Any]]
    latest: dict[str, float]
    presence: Presence
    last_seq: int
    ended: bool


class SessionError(Struct, tag="error", tag_field="type", omit_defaults=True):
    """`/ws/watch`: about one subscription (`unknown`, `forbidden`, `cap`, `resync` …)."""

    session_id: str
    code: str
    message: str
    last_seq: int | None = None  # on `resync`: the last seq delivered; resume with since


def error_message(exc: ProtocolError) -> bytes:
    return encode(
        Error(code=exc.code, message=exc.message, seq=exc.seq, expected_seq=exc.expected_seq)
    )


class Batching:
    """How one protocol 2 watcher gets its frames: `batch` messages of up to `max_frames`
    frames and `max_bytes` (a larger frame goes alone), built by joining the frames' encoded
    texts (never decoded again); while frames keep coming, at most one batch per
    `max_delay_s` (0: whatever is queued goes at once)."""

    __slots__ = ("max_bytes", "max_delay_s", "max_frames", "prefix")

    def __init__(
        self,
        session_id: uuid.UUID,
        max_delay_ms: int = 0,
        max_frames: int = MAX_BATCH,
        max_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self.prefix = f'{{"type":"batch","session_id":"{session_id}","frames":['
        self.max_delay_s = max_delay_ms / 1000
        self.max_frames = max_frames
        self.max_bytes = max_bytes

    def message(self, frames: list[str]) -> str:
        """One `batch` message carrying `frames` (encoded frame texts, oldest first)."""
        return self.prefix + ",".join(frames) + "]}"

    def messages(self, frames: list[str]) -> list[str]:
        """`frames` in as many `batch` messages as the bounds need, in order."""
        out: list[str] = []
        start = size = 0
        for i, text in enumerate(frames):
            if i > start and (i - start >= self.max_frames or size + len(text) > self.max_bytes):
                out.append(self.message(frames[start:i]))
                start, size = i, 0
            size += len(text)
        if start < len(frames):
            out.append(self.message(frames[start:]))
        return out
