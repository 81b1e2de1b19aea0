"""Mirror client for the Mirror Hub wire protocol v1 (see docs/protocol.md).

Copy this file into a mirror application: it needs only `websockets` (>= 14) and the standard
library, and uses `orjson` when it is installed. Every frame gets the next `seq` and stays in
an in-memory store until the hub acks it as committed to PostgreSQL, so a dropped connection,
a hub restart or a rejected batch loses nothing: the client reconnects and resends.

    session_id, mirror_token = create_session_with_token(URL, "Ada", token=STAFF_TOKEN)
    client = MirrorClient(URL, session_id, mirror_token)
    await client.start()
    await client.send_metrics({"accuracy": 0.91, "stability": 0.8})
    await client.end(timeout=30)   # everything acked, session marked ended
    await client.close()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import re
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

try:
    import orjson

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj).decode()

except ImportError:  # orjson is optional: it is only faster

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)


PROTOCOL = 1
# Close codes after which reconnecting cannot help (reconnect=False in hub/closecodes.py).
# Any other code, including 1006 for a dropped network, means: back off, reconnect, resume.
FINAL_CLOSE_CODES = {1000, 1002, 1003, 1007, 1008, 1009, 4001, 4004, 4005, 4029}
# The hub's default message size limit. Each `welcome` states the real one
# (`max_message_bytes`); until the first welcome, frames are checked against this default.
DEFAULT_MAX_MESSAGE_BYTES = 65_536
HANDSHAKE_TIMEOUT = 10.0
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}")
TASK_EVENTS = {"started", "status", "finished"}
TASK_STATUSES = {"pending", "in_progress", "success", "failed", "skipped"}
_BATCH_HEAD, _BATCH_TAIL = '{"type":"batch","frames":[', "]}"


class HubClosed(Exception):
    """The connection ended for good: a final close code, or a protocol error nobody can fix."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed for good: {code} {reason}".rstrip())
        self.code, self.reason = code, reason


def ws_url(base_url: str, path: str) -> str:
    """http(s)://host:port → ws(s)://host:port + path; ws(s):// URLs pass through."""
    base = base_url.rstrip("/")
    for plain, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(plain):
            base = ws + base.removeprefix(plain)
    return base + path


def create_session_with_token(
    base_url: str,
    child_name: str,
    timeout: float = 10.0,
    *,
    token: str | None = None,
    **child: Any,
) -> tuple[str, str | None]:
    """POST /sessions (blocking, stdlib only) with a staff `token` (admin or therapist).
    Returns the new session's id and its `mirror_token`, the credential the mirror streams
    with (None when the hub runs without authentication). Raises urllib.error.HTTPError,
    e.g. 401 without a valid token."""
    url = base_url.rstrip("/")
    if url.startswith(("ws://", "wss://")):
        url = "http" + url.removeprefix("ws")
    body = dumps({"child_name": child_name, **child}).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + "/sessions", body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        created = json.loads(response.read())
    return str(created["id"]), created.get("mirror_token")


def create_session(
    base_url: str, child_name: str, timeout: float = 10.0, *, token: str | None = None, **child: Any
) -> str:
    """POST /sessions; returns the new session id (see create_session_with_token)."""
    return create_session_with_token(base_url, child_name, timeout, token=token, **child)[0]


def checked_metrics(values: dict[str, float]) -> dict[str, float]:
    # Validate before a seq is assigned: a frame the hub rejects could never be acked, and
    # every later seq would wait behind it forever.
    if len(values) > 200:
        raise ValueError("at most 200 metrics per frame")
    out: dict[str, float] = {}
    for name, value in values.items():
        number = float(value)
        if not METRIC_NAME.fullmatch(name) or not (math.isfinite(number) and abs(number) <= 1e12):
            raise ValueError(f"invalid metric {name!r}={value!r}")
        out[name] = number
    return out


class MirrorClient:
    """One mirror writing one session; start() it, queue frames, end() and close() it."""

    def __init__(
        self,
        base_url: str,
        session_id: str,
        token: str | None = None,
        *,
        max_unacked: int = 20_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        self.url = ws_url(base_url, f"/ws/sessions/{session_id}/mirror")
        self.session_id = session_id
        self._token, self._max_unacked = token, max_unacked
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        self._frames: dict[int, tuple[str, int]] = {}  # seq → (JSON text, UTF-8 size), unacked
        self._last_seq = 0  # highest seq assigned
        self._acked_seq = 0  # everything <= this is durable in the hub's database
        self._cursor = 1  # next seq to write on the current connection
        self._rewound_to = 0  # last seq_gap rewind target on this connection
        self._max_batch = 500
        self._max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES  # from each welcome
        self._last_error = ""  # the latest `error` frame, to explain a close that follows it
        self._wakeup = asyncio.Event()  # new frames queued / cursor moved / end requested
        self._progress = asyncio.Event()  # replaced on every change; waiters await the old one
        self._ending = self._ended = False
        self._connections = 0
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.frames_written = 0  # frames put on the wire, resends included
        self.close_code: int | None = None  # set when the client stopped for good
        self.close_reason = ""

    # -- public API --------------------------------------------------------------------------

    @property
    def unacked(self) -> int:
        return len(self._frames)

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def reconnects(self) -> int:
        return max(0, self._connections - 1)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mirror {self.session_id}")

    async def send_metrics(
        self, values: dict[str, float], task_id: str | None = None, ts: float | None = None
    ) -> int:
        frame: dict[str, Any] = {
            "type": "metrics",
            "ts": _ts(ts),
            "values": checked_metrics(values),
        }
        if task_id is not None:
            frame["task_id"] = str(uuid.UUID(str(task_id)))
        return await self._queue(frame)

    async def send_task(
        self,
        task_id: str,
        task_name: str,
        event: str,
        status: str,
        duration_seconds: float | None = None,
        metrics: dict[str, float] | None = None,
        *,
        ts: float | None = None,
    ) -> int:
        if (
            not 1 <= len(task_name) <= 100
            or event not in TASK_EVENTS
            or status not in TASK_STATUSES
        ):
            raise ValueError(f"invalid task frame {task_name!r} {event!r} {status!r}")
        frame: dict[str, Any] = {
            "type": "task",
            "ts": _ts(ts),
            "task_id": str(uuid.UUID(str(task_id))),
            "task_name": task_name,
            "event": event,
            "status": status,
            "metrics": checked_metrics(metrics or {}),
        }
        if duration_seconds is not None:
            if not 0 <= duration_seconds <= 86_400:
                raise ValueError("duration_seconds must be within 0..86400")
            frame["duration_seconds"] = float(duration_seconds)
        return await self._queue(frame)

    async def wait_acked(self, seq: int | None = None, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until every frame up to `seq` (default: the last queued) is durable."""
        target = self._last_seq if seq is None else seq
        async with asyncio.timeout(timeout):
            while self._acked_seq < target:
                self._raise_if_stopped()
                await self._progress.wait()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait for a `welcome`; raises HubClosed if the hub refused the session for good."""
        async with asyncio.timeout(timeout):
            while not self.connected.is_set():
                self._raise_if_stopped()
                await self._progress.wait()

    async def end(self, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Wait for all acks, send `end`, wait for `ended`; returns the session's last seq."""
        async with asyncio.timeout(timeout):
            await self.wait_acked()
            self._ending = True  # from here on send_* raise: the session is closing
            self._wakeup.set()
            while not self._ended:
                self._raise_if_stopped()
                await self._progress.wait()
        return self._last_seq

    async def close(self) -> None:
        """Stop the connection loop; frames not yet acked stay in `unacked`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop(1000, "closed by client")

    # -- internals ---------------------------------------------------------------------------

    async def _queue(self, frame: dict[str, Any]) -> int:
        self._raise_if_stopped()
        # Client-side backpressure: hold the producer instead of growing memory without bound
        # while the hub or the network is behind.
        while len(self._frames) >= self._max_unacked:
            await self._progress.wait()
            self._raise_if_stopped()
        if self._ending:
            raise RuntimeError("end() was called; no more frames")
        frame["seq"] = seq = self._last_seq + 1
        text = dumps(frame)
        size = len(text.encode())
        if size + len(_BATCH_HEAD) + len(_BATCH_TAIL) > self._max_message_bytes:
            raise ValueError(
                f"frame of {size} bytes is over the hub's limit of {self._max_message_bytes}"
            )
        self._frames[seq] = (text, size)
        self._last_seq = seq
        self._wakeup.set()
        return seq

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _raise_if_stopped(self) -> None:
        if self.close_code is not None and not self._ended:
            raise HubClosed(self.close_code, self.close_reason)

    def _stop(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.connected.clear()
        self._notify()

    async def _run(self) -> None:
        delay = self._backoff_initial
        while True:
            connections = self._connections
            try:
                code, reason, retry = await self._connect_once()
            except Exception as exc:  # a bug here: stop visibly instead of hanging the waiters
                logging.getLogger(__name__).exception("mirror client failed")
                self._stop(1011, f"client error: {exc!r}")
                return
            if self._connections > connections:
                delay = self._backoff_initial  # got as far as `welcome`: the hub is healthy
            # After our `end`, a 1000 close (or 4005 on a reconnect) means the job is done.
            if self._ending and code in (1000, 4005) and self._acked_seq == self._last_seq:
                self._ended = True
            if self._ended or not retry:
                self._stop(code, reason)
                return
            # Exponential backoff with jitter so a restarted hub is not hit by every mirror
            # at the same instant.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self._backoff_max)

    async def _connect_once(self) -> tuple[int, str, bool]:
        """One connection's lifetime; returns (close code, reason, whether to reconnect)."""
        try:
            async with connect(self.url, max_size=2**20, compression=None) as ws:
                if await self._handshake(ws):
                    await self._serve(ws)
                return 1002, self.close_reason or "protocol error", False
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return 1006, "connection lost", True
            code = exc.rcvd.code
            reason = exc.rcvd.reason
            if self._last_error and code in FINAL_CLOSE_CODES and code != 1000:
                reason = f"{reason} ({self._last_error})"  # e.g. 1002 after unsupported_protocol
            return code, reason, code not in FINAL_CLOSE_CODES
        except InvalidStatus as exc:  # HTTP answer instead of a WebSocket upgrade
            status = exc.response.status_code
            return 1006, f"HTTP {status} on upgrade", status >= 500 or status == 429
        except InvalidURI as exc:
            return 1006, str(exc), False
        # Refused, DNS, timeouts, a handshake cut short: all transient.
        except (OSError, TimeoutError, EOFError, InvalidHandshake) as exc:
            return 1006, f"{type(exc).__name__}: {exc}", True

    async def _handshake(self, ws: ClientConnection) -> bool:
        self._last_error = ""
        await ws.send(dumps({"type": "hello", "token": self._token, "protocol": PROTOCOL}))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            welcome = json.loads(await ws.recv())
            while welcome.get("type") != "welcome":
                # An `error` (unsupported_protocol, hello_required …) comes before the close.
                if welcome.get("type") == "error":
                    self._last_error = f"{welcome.get('code')}: {welcome.get('message', '')}"
                welcome = json.loads(await ws.recv())
        hub_seq = int(welcome["last_seq"])
        hub_acked = int(welcome.get("acked_seq", 0))
        self._max_batch = int(welcome.get("max_batch", self._max_batch))
        self._max_message_bytes = int(welcome.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
        if hub_seq > self._last_seq:
            if self._last_seq:  # someone else wrote these seqs: ours would be dropped
                self.close_reason = f"hub has seq {hub_seq}, this client only {self._last_seq}"
                return False
            # A restarted app resuming a session: continue after what the hub has.
            self._last_seq = self._acked_seq = hub_seq
        # `acked_seq` is an implicit ack: everything up to it is committed. Frames the hub has
        # accepted but not yet committed (acked_seq < seq <= last_seq) stay here until acked.
        self._on_ack(hub_acked)
        self._cursor = max(hub_seq, self._acked_seq) + 1
        self._rewound_to = 0
        self._connections += 1
        self.connected.set()
        self._notify()
        return True

    async def _serve(self, ws: ClientConnection) -> None:
        reader = asyncio.create_task(self._read_loop(ws))
        writer = asyncio.create_task(self._write_loop(ws))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.connected.clear()
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in done:
            task.result()  # re-raises ConnectionClosed (handled by the caller) or a bug

    async def _read_loop(self, ws: ClientConnection) -> None:
        while True:
            message = json.loads(await ws.recv())
            kind = message.get("type")
            if kind == "ack":
                self._on_ack(int(message["seq"]))
            elif kind == "error" and not self._on_error(message):
                await ws.close(1000)
                return
            elif kind == "error":
                self._last_error = f"{message.get('code')}: {message.get('message', '')}"
            elif kind == "ended":
                self._ended = True
                self._notify()

    def _on_ack(self, seq: int) -> None:
        seq = min(seq, self._last_seq)
        if seq > self._acked_seq:
            for done in range(self._acked_seq + 1, seq + 1):
                del self._frames[done]
            self._acked_seq = seq
            self._notify()

    def _on_error(self, message: dict[str, Any]) -> bool:
        """Handle an `error`; False means nobody can fix it and the client must stop."""
        code, text = message.get("code"), str(message.get("message", ""))
        expected_seq = message.get("expected_seq")  # on seq_gap and duplicate_seq
        if code == "duplicate_seq":
            # The hub already has that frame (its ack will come) and everything before
            # `expected_seq`: skip ahead instead of resending frames it has.
            if isinstance(expected_seq, int) and expected_seq > self._cursor:
                self._cursor = min(expected_seq, self._last_seq + 1)
                self._wakeup.set()
            return True
        if code == "seq_gap":
            expected = expected_seq if isinstance(expected_seq, int) else self._acked_seq + 1
            if expected <= self._acked_seq:
                self.close_reason = f"hub expects seq {expected}, already acked: {text}"
                return False
            # Frames in flight behind the gap report the same expected seq: rewind once.
            if expected < self._cursor and expected != self._rewound_to:
                self._rewound_to = self._cursor = expected
                self._wakeup.set()
            return True
        # end_mismatch cannot happen to this client (it sends `end` only once everything is
        # acked) unless another writer used the session. invalid_frame, malformed_json, …
        # are bugs in this client. Resending cannot help with any of them.
        self.close_reason = f"{code}: {text}"
        if message.get("seq") is not None:
            self.close_reason += f" (seq {message['seq']})"
        return False

    async def _write_loop(self, ws: ClientConnection) -> None:
        end_sent = False
        while True:
            self._cursor = max(self._cursor, self._acked_seq + 1)
            if self._cursor <= self._last_seq:
                await ws.send(self._next_message())
            elif self._ending and not end_sent:
                end_sent = True
                await ws.send(dumps({"type": "end", "last_seq": self._last_seq}))
            else:
                self._wakeup.clear()
                await self._wakeup.wait()

    def _next_message(self) -> str:
        """Frames from the cursor on: one frame, or a batch within max_batch and the size limit."""
        budget = self._max_message_bytes - len(_BATCH_HEAD) - len(_BATCH_TAIL)
        parts: list[str] = []
        seq = self._cursor
        while seq <= self._last_seq and len(parts) < self._max_batch:
            text, size = self._frames[seq]
            budget -= size + 1  # + the comma
            if parts and budget < 0:
                break
            if size > self._max_message_bytes:  # the hub's limit is below a frame queued earlier
                raise ValueError(
                    f"frame {seq} ({size} bytes) is over the hub's limit of "
                    f"{self._max_message_bytes} bytes"
                )
            parts.append(text)
            seq += 1
        self._cursor = seq
        self.frames_written += len(parts)
        return parts[0] if len(parts) == 1 else _BATCH_HEAD + ",".join(parts) + _BATCH_TAIL


def _ts(ts: float | None) -> float:
    value = time.time() if ts is None else float(ts)
    if not 0 <= value <= 1e11:
        raise ValueError("ts must be unix seconds")
    return value


async def _main(args: argparse.Namespace) -> int:
    session_id, token = args.session, args.token
    if session_id is None:  # --token is a staff token; the session brings its mirror token
        try:
            session_id, mirror_token = await asyncio.to_thread(
                create_session_with_token, args.url, "Demo child", token=args.token
            )
        except urllib.error.HTTPError as exc:
            print(
                f"POST /sessions failed: HTTP {exc.code}; --token must be an admin or "
                "therapist token"
            )
            return 1
        token = mirror_token or args.token
    client = MirrorClient(args.url, session_id, token)
    await client.start()
    print(f"session {session_id}: {args.rate} frames/s for {args.seconds}s")
    try:
        await client.wait_connected(timeout=10)  # so a resumed session continues after its seq
        start, task_id = time.monotonic(), str(uuid.uuid4())
        await client.send_task(task_id, "raise_hand", "started", "in_progress")
        for i in range(int(args.rate * args.seconds)):
            await asyncio.sleep(max(0.0, start + i / args.rate - time.monotonic()))
            await client.send_metrics({"accuracy": 0.8 + 0.1 * math.sin(i / 20)}, task_id)
        await client.send_task(task_id, "raise_hand", "finished", "success", args.seconds)
        last = await client.end(timeout=30)
        print(
            f"ended at seq {last}: written {client.frames_written}, {client.reconnects} reconnects"
        )
        return 0
    except (HubClosed, TimeoutError) as exc:
        print(f"failed: {exc!r}; acked {client.acked_seq} of {client.last_seq}")
        return 1
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Stream demo frames as one mirror.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--session", help="session id (default: create one)")
    parser.add_argument(
        "--token",
        help="without --session: an admin or therapist token to create the session with "
        "(the mirror then uses the session's mirror_token); with --session: a mirror token",
    )
    parser.add_argument("--rate", type=float, default=30.0, help="metrics frames per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    raise SystemExit(asyncio.run(_main(parser.parse_args())))
