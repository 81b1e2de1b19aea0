"""Watcher client for the Mirror Hub wire protocol v1 (see docs/protocol.md).

Copy this file into a therapist dashboard: it needs only `websockets` (>= 14) and the standard
library. It tracks the last seq it saw and, after any drop (network, hub restart, or 4008
when it read too slowly), reconnects with `since` so the hub replays exactly what was missed.
Gaps and duplicates are counted, never fatal: a dashboard should keep showing live values.

    watcher = WatcherClient("http://127.0.0.1:8000", session_id)
    await watcher.start()
    async for message in watcher:       # snapshot, metrics, task, presence, ended
        print(message)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import logging
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

# Protocol 2: the hub sends frames in `batch` messages (fewer messages for the same frames);
# pass protocol=1 for one frame per message.
PROTOCOL = 2
# Close codes after which reconnecting cannot help (reconnect=False in hub/closecodes.py).
# 4032: the session already has its maximum of watchers.
FINAL_CLOSE_CODES = {1000, 1002, 1003, 1007, 1008, 1009, 4001, 4004, 4005, 4029, 4032}
HANDSHAKE_TIMEOUT = 10.0
Message = dict[str, Any]
Callback = Callable[[Message], Awaitable[None] | None]


def ws_url(base_url: str, path: str) -> str:
    """http(s)://host:port → ws(s)://host:port + path; ws(s):// URLs pass through."""
    base = base_url.rstrip("/")
    for plain, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(plain):
            base = ws + base.removeprefix(plain)
    return base + path


class WatcherClient:
    """Watches one session. Iterate it, or pass `on_message` (then nothing is queued)."""

    def __init__(
        self,
        base_url: str,
        session_id: str,
        token: str | None = None,
        *,
        since: int | None = None,
        protocol: int = PROTOCOL,
        on_message: Callback | None = None,
        queue_size: int = 10_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        self.url = ws_url(base_url, f"/ws/sessions/{session_id}/watch")
        self.session_id = session_id
        self._token, self._on_message, self._queue_size = token, on_message, queue_size
        self._protocol = protocol
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        # Unbounded queue with a manual bound, so the end-of-stream marker always fits.
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._space = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connections = 0
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.last_seq: int | None = since  # last frame seq seen; None = start from a snapshot
        self.hub_seq = 0  # the session's last seq according to the latest welcome
        self.last_error: Message | None = None  # the latest `error` frame from the hub
        self.gaps = 0  # times a frame skipped ahead of last_seq + 1
        self.missing = 0  # frames those gaps skipped
        self.duplicates = 0  # frames at or below last_seq (dropped, not delivered)
        self.snapshot: Message | None = None
        self.presence: Message | None = None
        self.ended = False
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def reconnects(self) -> int:
        return max(0, self._connections - 1)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"watcher {self.session_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stop(1000, "closed by client")

    async def wait_closed(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the watcher stopped for good (session ended, final close code, close())."""
        async with asyncio.timeout(timeout):
            await self.closed.wait()

    async def __aiter__(self) -> AsyncIterator[Message]:
        """Snapshot, frames (metrics / task, each seq once), presence and ended, in order."""
        while (message := await self._queue.get()) is not None:
            self._space.set()
            yield message
        self._queue.put_nowait(None)  # so a later iteration ends too

    # -- internals ---------------------------------------------------------------------------

    def _stop(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._queue.put_nowait(None)
        self.connected.clear()
        self.closed.set()

    async def _run(self) -> None:
        delay = self._backoff_initial
        while True:
            connections = self._connections
            try:
                code, reason, retry = await self._connect_once()
            except Exception as exc:  # a bug here: stop visibly instead of hanging consumers
                logging.getLogger(__name__).exception("watcher client failed")
                self._stop(1011, f"client error: {exc!r}")
                return
            if self._connections > connections:
                delay = self._backoff_initial
            if self.ended or not retry:
                self._stop(code, reason)
                return
            await asyncio.sleep(random.uniform(delay / 2, delay))  # jittered backoff
            delay = min(delay * 2, self._backoff_max)

    async def _connect_once(self) -> tuple[int, str, bool]:
        """One connection's lifetime; returns (close code, reason, whether to reconnect)."""
        try:
            async with connect(self.url, max_size=2**20, compression=None) as ws:
                await self._handshake(ws)
                while True:
                    await self._receive(json.loads(await ws.recv()))
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return 1006, "connection lost", True
            # 4008 (we read too slowly), 1012 (hub restart) and friends: resume with since.
            code, reason = exc.rcvd.code, exc.rcvd.reason
            final = code in FINAL_CLOSE_CODES
            if final and code != 1000 and self.last_error is not None:
                # e.g. 1002 after `unsupported_protocol`: say what the hub objected to.
                error = self.last_error
                reason = f"{reason} ({error.get('code')}: {error.get('message')})"
            return code, reason, not final
        except InvalidStatus as exc:
            status = exc.response.status_code
            return 1006, f"HTTP {status} on upgrade", status >= 500 or status == 429
        except InvalidURI as exc:
            return 1006, str(exc), False
        # Refused, DNS, timeouts, a handshake cut short: all transient.
        except (OSError, TimeoutError, EOFError, InvalidHandshake) as exc:
            return 1006, f"{type(exc).__name__}: {exc}", True

    async def _handshake(self, ws: ClientConnection) -> None:
        hello: Message = {"type": "hello", "token": self._token, "protocol": self._protocol}
        if self.last_seq is not None:
            hello["since"] = self.last_seq  # replay everything after what we have seen
        self.last_error = None
        await ws.send(json.dumps(hello))
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            welcome = json.loads(await ws.recv())
            while welcome.get("type") != "welcome":
                if welcome.get("type") == "error":  # unsupported_protocol …, then a close
                    self.last_error = welcome
                welcome = json.loads(await ws.recv())
        self.hub_seq = int(welcome["last_seq"])
        self._connections += 1
        self.connected.set()

    async def _receive(self, message: Message) -> None:
        if message.get("type") == "batch":  # protocol 2: each frame as if it came alone
            for frame in message.get("frames", []):
                await self._receive(frame)
            return
        if self._track(message):
            await self._deliver(message)

    def _track(self, message: Message) -> bool:
        """Update seq bookkeeping; False for a frame already seen (not delivered again)."""
        kind = message.get("type")
        if kind in ("metrics", "task"):
            seq = int(message["seq"])
            if self.last_seq is not None:
                if seq <= self.last_seq:
                    self.duplicates += 1
                    return False
                if seq > self.last_seq + 1:
                    self.gaps += 1
                    self.missing += seq - self.last_seq - 1
            self.last_seq = seq
        elif kind == "snapshot":
            self.snapshot, self.presence = message, message.get("presence")
            self.last_seq = int(message["last_seq"])
            self.ended = self.ended or bool(message.get("ended"))
        elif kind == "presence":
            self.presence = message
        elif kind == "error":
            self.last_error = message
        elif kind == "ended":
            self.ended = True
            final = int(message["last_seq"])
            if self.last_seq is not None and final > self.last_seq:  # frames never arrived
                self.gaps += 1
                self.missing += final - self.last_seq
        return True

    async def _deliver(self, message: Message) -> None:
        if self._on_message is not None:
            result = self._on_message(message)
            if inspect.isawaitable(result):
                await result
            return
        # A full queue stops us reading the socket; the hub then sees a slow watcher and
        # closes with 4008, and we resume with since: memory stays bounded on both sides.
        while self._queue.qsize() >= self._queue_size:
            self._space.clear()
            await self._space.wait()
        self._queue.put_nowait(message)


def _print_message(message: Message, tty: bool) -> None:
    kind = message["type"]
    if kind == "metrics":
        values = "  ".join(f"{k} {v:.3g}" for k, v in sorted(message["values"].items()))
        line = f"seq {message['seq']:>7}  {values}"
        print(f"\r\x1b[K{line}" if tty else line, end="" if tty else "\n", flush=True)
        return
    if kind == "task":
        extra = f" {message['duration_seconds']:.1f}s" if "duration_seconds" in message else ""
        line = f"seq {message['seq']:>7}  task {message['task_name']} {message['event']}"
        line += f" ({message['status']}){extra}"
    elif kind == "snapshot":
        tasks, ended = len(message["tasks"]), message["ended"]
        line = f"snapshot at seq {message['last_seq']}: {tasks} tasks, ended={ended}"
        line += f", latest {message['latest']}"
    elif kind == "presence":
        line = f"presence: mirror {message['mirror']}, {message['watchers']} watcher(s)"
    else:
        line = json.dumps(message)
    print(f"\r\x1b[K{line}" if tty else line, flush=True)


async def _main(args: argparse.Namespace) -> int:
    watcher = WatcherClient(args.url, args.session, args.token, since=args.since)
    tty = sys.stdout.isatty()
    await watcher.start()
    try:
        async for message in watcher:
            _print_message(message, tty)
    finally:
        await watcher.close()
        if tty:
            print()  # end the in-place metrics line
        print(
            f"last seq {watcher.last_seq}, gaps {watcher.gaps} ({watcher.missing} frames),"
            f" duplicates {watcher.duplicates}, reconnects {watcher.reconnects},"
            f" closed {watcher.close_code} {watcher.close_reason}".rstrip()
        )
    if watcher.close_code not in (None, 1000):
        # Closed with a code that says do not reconnect (bad credential 1008, unknown session
        # 4004 …) or refused at the upgrade: the watch failed, and scripts must see that.
        return 2
    return 1 if watcher.gaps else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print a session's live frames.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--session", required=True)
    parser.add_argument("--token", help="a therapist or admin token")
    parser.add_argument("--since", type=int, help="replay frames after this seq (0 = all)")
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(asyncio.run(_main(parser.parse_args())))
