"""Live-path benchmark: S mirrors at R Hz, W watchers each, for T seconds, hub vs baseline.

    python benchmarks/live_bench.py clinic            # S=50, R=30, W=2, T=20
    python benchmarks/live_bench.py max               # raise S until p99 > 250 ms or a loss
    python benchmarks/live_bench.py all               # both, hub and baseline (~6-9 min)
    python benchmarks/live_bench.py scaleout          # both, one hub process vs two (~10 min)
    python benchmarks/live_bench.py clinic --target hub --sessions 100 --seconds 10
    python benchmarks/live_bench.py clinic --target hub-redis

Every run starts a fresh server process (`hub serve`, or benchmarks/baseline_app.py: one
transaction per frame before broadcasting) on a fresh database `bench_<random>` created on
--database-url's server and dropped afterwards. The targets hub-postgres and hub-redis start
two hub processes instead, joined by that backplane (HUB_BACKPLANE; hub-redis also starts a
redis-server): mirrors connect to process A, watchers to process B, so every delivery crosses
the backplane. The server (every process of it) is pinned to one core (`taskset -c 0`), this
load generator to the other (`-c 1`): one process, asyncio + uvloop, `websockets` clients
without compression. Mirrors send metric frames on an absolute schedule (no drift) with their
send time (time.time()) in `ts`; watchers take latency = receive time - ts. See
benchmarks/README.md for what each figure means. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import orjson
import psutil
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import apply_mask  # C implementation when websockets has speedups

ROOT = Path(__file__).resolve().parent.parent
BASELINE_APP = Path(__file__).resolve().parent / "baseline_app.py"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a target runs: the app, and for a scaled-out hub the backplane between its two
    processes (mirrors connect to the first, watchers to the second)."""

    app: str  # "hub" or "baseline"
    backplane: str | None = None  # None: one process; "postgres" or "redis": two

    @property
    def processes(self) -> int:
        return 1 if self.backplane is None else 2


VARIANTS = {
    "hub": Variant("hub"),
    "baseline": Variant("baseline"),
    "hub-postgres": Variant("hub", "postgres"),
    "hub-redis": Variant("hub", "redis"),
}
TARGETS = tuple(VARIANTS)  # also the order of the columns
DEFAULT_TARGETS = ("hub", "baseline")  # clinic, max, all
SCALEOUT_TARGETS = ("hub", "hub-postgres", "hub-redis")
NODE_NAMES = "AB"
P99_LIMIT_MS = 250.0
MAX_STEPS = (10, 25, 50, 100, 200, 300, 400, 500, 600, 800, 1000)
CONNECT_CONCURRENCY = 64
# A run whose generator could not offer this share of the nominal rate measured the
# generator, not the server.
GENERATOR_OK_SHARE = 0.97
GENERATOR_BUSY = 0.85  # of its core

FRAME = (
    '{"type":"metrics","seq":%d,"ts":%.6f,"values":{"accuracy":%.4f,"stability":%.4f,'
    '"max_angle":%.2f},"task_id":"%s"}'
)


@dataclasses.dataclass
class Load:
    sessions: int
    rate: float
    watchers: int
    seconds: float
    drain: float

    @property
    def frames_per_mirror(self) -> int:
        return round(self.rate * self.seconds)


@dataclasses.dataclass
class Result:
    target: str
    load: Load
    sent: int = 0
    offered_per_s: float = 0.0
    deliveries: int = 0
    expected_deliveries: int = 0
    delivered_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    ack_p50_ms: float = float("nan")
    ack_p99_ms: float = float("nan")
    buffer_peak: int | None = None  # hub only: its write buffers' high-water marks (/health)
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    behind_s: float = 0.0  # how far the slowest watcher was behind when sending stopped
    drain_s: float = 0.0  # time after sending stopped until everything arrived (or timeout)
    stored: int = 0
    acked: int = 0
    errors: int = 0  # error frames and unexpected closes seen by the generator
    server_cpu_s: float = 0.0  # the sum over the server's processes (A + B when scaled out)
    # Each hub process's share of server_cpu_s (A, then B).
    process_cpu_s: list[float] = dataclasses.field(default_factory=list)
    redis_cpu_s: float | None = None  # the redis-server of a Redis backplane
    backplane_resets: int | None = None  # scaled out: reconnections of the backplane (/health)
    # Close codes of connections the server closed (1006: dropped) during the run, and counts.
    closes: dict[str, int] = dataclasses.field(default_factory=dict)
    # Per hub process: warning/error lines in its log during the run (teardown not included).
    log_warnings: dict[str, int] = dataclasses.field(default_factory=dict)
    server_cpu_util: float = 0.0
    cpu_per_1000: float = float("nan")
    peak_rss_mb: float = 0.0
    db_cpu_s: float = 0.0
    gen_cpu_util: float = 0.0
    send_lag_p99_ms: float = 0.0
    # CPU time of every other process on the machine during the run (a lower bound: a process
    # that started and ended within the run is missed).
    other_cpu_s: float = 0.0
    wall_s: float = 0.0  # from the first send to the end of the drain

    @property
    def processes(self) -> int:
        return len(self.process_cpu_s) or 1

    @property
    def process_shares(self) -> str:
        """Each hub process's CPU, in % of one core: "A/B"."""
        return "/".join(fmt(c / self.wall_s * 100, 0) for c in self.process_cpu_s)

    @property
    def db_cpu_util(self) -> float:
        return self.db_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def redis_cpu_util(self) -> float:
        return (self.redis_cpu_s or 0.0) / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_with_redis_per_1000(self) -> float:
        """Server CPU plus redis-server's, per 1000 deliveries."""
        cpu = self.server_cpu_s + (self.redis_cpu_s or 0.0)
        return cpu / self.deliveries * 1000 if self.deliveries else float("nan")

    @property
    def other_cpu_util(self) -> float:
        return self.other_cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def offered_share(self) -> float:
        return self.offered_per_s / (self.load.sessions * self.load.rate)

    @property
    def generator_limited(self) -> bool:
        """The generator could not offer the load because it ran out of CPU (rather than
        because the server pushed back)."""
        return self.offered_share < GENERATOR_OK_SHARE and self.gen_cpu_util > GENERATOR_BUSY

    def closes_text(self) -> str:
        return ", ".join(f"{code}x{n}" for code, n in self.closes.items())

    def failures(self) -> list[str]:
        """Why this run fails the `max` criteria (empty: it passes)."""
        out = []
        if not self.p99_ms <= P99_LIMIT_MS:
            out.append(f"p99 {self.p99_ms:.0f} ms")
        if self.lost:
            out.append(f"{self.lost} lost")
        if self.duplicates or self.out_of_order:
            out.append(f"{self.duplicates} dup / {self.out_of_order} ooo")
        if self.stored != self.sent:
            out.append(f"stored {self.stored} of {self.sent}")
        if self.acked != self.sent:
            out.append(f"acked {self.acked} of {self.sent}")
        if self.closes:
            out.append(f"server closed {self.closes_text()}")
        if self.offered_share < GENERATOR_OK_SHARE and not self.generator_limited:
            out.append(f"mirrors held back: offered {self.offered_share:.0%} of the load")
        return out


# -- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    if cpus is None:
        return command
    if shutil.which("taskset") is None:
        raise SystemExit("taskset not found (util-linux); use --no-pin")
    return ["taskset", "-c", cpus, *command]


class Process:
    """One child process listening on `port`, pinned to `cpus`, its output in a temporary log."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        cpus: str | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.log_mark: int | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            pinned(cpus, command),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)  # taskset execs: same pid

    async def wait_ready(self, probe: Callable[[int], bool], within_s: float = 60.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.tail()}")
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(probe, self.port):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready in {within_s:.0f}s:\n{self.tail()}")

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for i, proc in enumerate(self.processes()):
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
                if i == 0:  # children that already exited and were waited for
                    total += t.children_user + t.children_system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the main process (VmHWM), when available."""
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def lines(self) -> list[str]:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace").splitlines()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines()[-lines:])

    def mark_log(self) -> None:
        """Remember how far the log is: what follows comes from the teardown."""
        self.log_mark = len(self.lines())

    def warnings(self) -> tuple[Counter[str], int]:
        """The log's warning and error lines up to the mark, numbers and ids blanked so that
        repeats of a message count together; and how many such lines follow the mark."""
        during: Counter[str] = Counter()
        after = 0
        for index, line in enumerate(self.lines()):
            found = LOG_LEVEL.search(line)
            if found is None:
                continue
            if self.log_mark is not None and index >= self.log_mark:
                after += 1
            else:
                during[VARYING.sub("#", found.group(0))[:160]] += 1
        return during, after


LOG_LEVEL = re.compile(r"\b(?:WARNING|ERROR|CRITICAL)\b:?\s.*")  # the hub's and uvicorn's
VARYING = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{12}|\d+(?:\.\d+)?")


def http_ready(port: int) -> bool:
    return _http_status(f"http://127.0.0.1:{port}/health") == 200


def redis_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(64).startswith(b"+PONG")


class Server:
    """What the generator connects to: one server process (hub or baseline), or for a
    scaled-out target two hub processes, A and B, on one database, joined by a backplane
    (with the redis-server a Redis backplane needs, started for the run). Mirrors connect to
    the first process, watchers to the last, so with two every delivery crosses the backplane.
    Every process, redis-server included, is pinned to the same `cpus`: a scaled-out target
    gets the single process's CPU budget, and its server CPU is the sum over its processes."""

    def __init__(self, target: str, database_url: str, cpus: str | None) -> None:
        self.target = target
        self.variant = VARIANTS[target]
        self.database_url = database_url
        self.cpus = cpus
        self.secret = secrets.token_urlsafe(32)
        self.data_dir = tempfile.mkdtemp(prefix="bench-hub-")
        self.nodes: list[Process] = []  # A (mirrors), then B (watchers) when scaled out
        self.redis: Process | None = None

    @property
    def mirror_port(self) -> int:
        return self.nodes[0].port

    @property
    def watch_port(self) -> int:
        return self.nodes[-1].port

    async def start(self) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "HUB_LOG_LEVEL": "warning",
            "HUB_DATA_DIR": self.data_dir,
            # Credentials: the hub verifies tokens this benchmark signs with the same secret.
            "HUB_AUTH_SECRET": self.secret,
            # Every client of the benchmark comes from 127.0.0.1; in a clinic each device has
            # its own address, so the per-address connection cap must not apply here.
            "HUB_MAX_CONNECTIONS_PER_CLIENT": "1000000",
            "HUB_BACKPLANE": self.variant.backplane or "memory",
        }
        if self.variant.backplane == "redis":
            if shutil.which("redis-server") is None:
                raise SystemExit(f"redis-server not found: needed by --target {self.target}")
            port = free_port()
            command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            command += ["--save", "", "--appendonly", "no"]
            self.redis = Process("redis-server", command, port, self.cpus)
            await self.redis.wait_ready(redis_ready)
            env["HUB_BACKPLANE"] = f"redis://127.0.0.1:{port}/0"
        for index in range(self.variant.processes):
            port = free_port()
            if self.variant.app == "hub":
                command = [sys.executable, "-m", "hub", "serve", "--port", str(port)]
                if index:
                    command.append("--no-migrate")  # A migrated the database
            else:
                command = [sys.executable, str(BASELINE_APP), "--port", str(port)]
                command += ["--database-url", self.database_url]
            name = self.target
            if self.variant.processes > 1:
                name += "-" + NODE_NAMES[index]
            node = Process(name, command, port, self.cpus, env)
            self.nodes.append(node)
            await node.wait_ready(http_ready)  # B starts once A has migrated

    def describe(self) -> str:
        parts = [f"{n.name} pid {n.proc.pid} port {n.port}" for n in self.nodes]
        if self.redis is not None:
            parts.append(f"redis-server pid {self.redis.proc.pid} port {self.redis.port}")
        return ", ".join(parts)

    def everyone(self) -> list[Process]:
        return [*self.nodes, *([self.redis] if self.redis is not None else [])]

    def pids(self) -> set[int]:
        return {p.pid for process in self.everyone() for p in process.processes()}

    def cpu_seconds(self) -> list[float]:
        """Each server process's CPU seconds (A, then B)."""
        return [node.cpu_seconds() for node in self.nodes]

    def redis_cpu_seconds(self) -> float | None:
        return None if self.redis is None else self.redis.cpu_seconds()

    def rss(self) -> int:
        return sum(node.rss() for node in self.nodes)

    def peak_rss(self) -> int:
        return sum(node.peak_rss() for node in self.nodes)

    async def health(self) -> list[dict[str, Any]]:
        """Each hub process's /health `live` figures (empty for the baseline)."""
        if self.variant.app != "hub":
            return []
        out = []
        for node in self.nodes:
            with contextlib.suppress(OSError, ValueError, KeyError):
                url = f"http://127.0.0.1:{node.port}/health"
                out.append((await asyncio.to_thread(_http_json, url))["live"])
        return out

    def exited(self) -> list[Process]:
        return [p for p in self.everyone() if p.proc.poll() is not None]

    def stop(self) -> None:
        """SIGTERM to every hub process at once (each stores what it buffered), then to the
        redis-server they publish through."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.wait()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def mark_logs(self) -> None:
        for node in self.nodes:
            node.mark_log()

    def log_warnings(self) -> dict[str, tuple[Counter[str], int]]:
        """Per hub process (by name), what its log warned about during the run, and how many
        warning lines followed at teardown; then every log is deleted."""
        out = {node.name: node.warnings() for node in self.nodes}
        for process in self.everyone():
            with contextlib.suppress(OSError):
                os.unlink(process.log.name)
        return out

    def hello(self, role: str, session_id: uuid.UUID) -> str:
        """The `hello` for a mirror or watcher of `session_id`, with a credential when the hub
        has authentication (hub.auth); the baseline ignores the token."""
        message: dict[str, Any] = {"type": "hello", "protocol": 1}
        try:
            from hub.auth import TokenService
        except ImportError:  # a hub without authentication
            return orjson.dumps(message).decode()
        tokens = TokenService(self.secret.encode())
        if role == "mirror":
            message["token"] = tokens.issue("mirror", f"bench:{session_id}", 3600, session_id)
        else:
            message["token"] = tokens.issue("therapist", "bench", 3600)
        return orjson.dumps(message).decode()


def _http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)


class PostgresBackends:
    """CPU time of the PostgreSQL backends serving one database (a side figure: where the
    baseline's per-frame transactions spend their time)."""

    def __init__(self, database: str) -> None:
        self.marker = f" {database} "
        self.start: dict[int, float] = {}

    def _backends(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if cmdline.startswith("postgres:") and self.marker in cmdline + " ":
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    out[proc.pid] = t.user + t.system
        return out

    def mark(self) -> None:
        self.start = self._backends()

    def seconds(self) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self._backends().items())

    def pids(self) -> set[int]:
        return set(self._backends())


# -- load generator --------------------------------------------------------------------------

# Called with (one message's bytes, the time its TCP read returned) for every message after
# `welcome`.
OnMessage = Callable[[bytes, float], None]


class Closed(Exception):
    """The server closed the connection (or it dropped)."""


class Connection:
    """What the generator needs from a WebSocket client: open, hello, send, close. Incoming
    messages go to a callback, so a message costs no task switch."""

    # The code of the server's close frame (1006: the connection dropped without one); None
    # while open, or when this side closed it.
    close_code: int | None = None

    async def send(self, text: str) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class LeanConnection(asyncio.Protocol, Connection):
    """A minimal RFC 6455 client for load generation: no extensions (no compression), text
    frames only, frames parsed straight out of `data_received`, masks applied with websockets'
    C helper. About five times cheaper per message than a full client, so one generator core
    can drive hundreds of mirrors and their watchers. `--client websockets` cross-checks it."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, host: str, port: int, path: str, on_message: OnMessage) -> None:
        self.request_key = base64.b64encode(os.urandom(16))
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.request_key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.writable: asyncio.Future[None] | None = None  # set while the server pushes back
        self.closed = False
        self.fragments: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:  # neither a close frame nor our abort
            self.close_code = 1006
        self.closed = True
        for future in (self.opened, self.welcomed, self.writable):
            if future is not None and not future.done():
                future.set_exception(Closed("connection lost"))

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    def data_received(self, data: bytes) -> None:
        received = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self.request_key + self.GUID).digest())
            if not head.startswith("HTTP/1.1 101") or accept.decode() not in head:
                self.opened.set_exception(Closed(f"upgrade refused: {head.splitlines()[0]}"))
                self.abort()
                return
            self.upgraded = True
            self.opened.set_result(None)
        self._frames(received)

    def _frames(self, received: float) -> None:
        buffer, size, pos = self.buffer, len(self.buffer), 0
        while size - pos >= 2:
            first, length = buffer[pos], buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + length:
                break
            payload = bytes(buffer[pos + head : pos + head + length])
            pos += head + length
            opcode = first & 0x0F
            if opcode in (1, 2, 0):  # text, binary, continuation
                if not first & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments.clear()
                self._message(payload, received)
            elif opcode == 9:  # ping
                self._write(0x8A, payload)
            elif opcode == 8:  # close: answer it, then let the server end TCP
                self._write(0x88, payload[:2])
                self.closed = True
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_code = code
                if not self.welcomed.done():
                    self.welcomed.set_exception(Closed(f"closed with {code} before welcome"))
        del buffer[:pos]

    def _message(self, payload: bytes, received: float) -> None:
        if self.welcomed.done():
            self.on_message(payload, received)
            return
        message = orjson.loads(payload)
        if message.get("type") == "welcome":
            self.welcomed.set_result(None)
        elif message.get("type") == "error":
            self.welcomed.set_exception(Closed(f"hello refused: {message}"))

    def _write(self, opcode_byte: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        length = len(payload)
        if length < 126:
            head = bytes((opcode_byte, 0x80 | length))
        elif length < 65536:
            head = bytes((opcode_byte, 0x80 | 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((opcode_byte, 0x80 | 127)) + length.to_bytes(8, "big")
        mask = random.randbytes(4)  # masking is about proxies, not secrecy
        self.transport.write(head + mask + apply_mask(payload, mask))

    # Connection
    async def send(self, text: str) -> None:
        if self.closed:
            raise Closed("connection closed")
        self._write(0x81, text.encode())
        if self.writable is not None:  # TCP backpressure: wait like a real client would
            await self.writable

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, hello: str, on_message: OnMessage
    ) -> LeanConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: cls(host, port, path, on_message), host, port
        )
        await asyncio.wait_for(conn.opened, 60)
        conn._write(0x81, hello.encode())
        await asyncio.wait_for(conn.welcomed, 60)
        return conn


class LibraryConnection(Connection):
    """The same through the `websockets` client (compression=None): the reference."""

    def __init__(self, ws: ClientConnection, on_message: OnMessage) -> None:
        self.ws = ws
        self.on_message = on_message
        self.reader: asyncio.Task[None] | None = None
        self.closed = False

    async def _read(self) -> None:
        now = time.time
        try:
            async for raw in self.ws:
                self.on_message(raw if isinstance(raw, bytes) else raw.encode(), now())
        except ConnectionClosed:
            pass
        self.closed = True
        self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006

    async def send(self, text: str) -> None:
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            self.closed = True
            raise Closed(str(exc)) from None

    def abort(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        self.ws.transport.abort()

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, hello: str, on_message: OnMessage
    ) -> LibraryConnection:
        ws = await connect(
            f"ws://{host}:{port}{path}",
            compression=None,
            ping_interval=None,  # an overloaded server must not look like a dead one
            max_size=2**20,
            open_timeout=60,
            close_timeout=1,
        )
        await ws.send(hello)
        while True:  # `welcome` (watchers then get a snapshot, which on_message sees)
            message = orjson.loads(await ws.recv())
            if message["type"] == "welcome":
                break
            if message["type"] == "error":
                ws.transport.abort()
                raise Closed(f"hello refused: {message}")
        conn = cls(ws, on_message)
        conn.reader = asyncio.create_task(conn._read())
        return conn


CLIENTS: dict[str, Any] = {"lean": LeanConnection, "websockets": LibraryConnection}


class WatcherState:
    __slots__ = (
        "conn",
        "distinct",
        "duplicates",
        "last",
        "out_of_order",
        "received",
        "seen",
        "session",
    )

    def __init__(self, session: MirrorState, frames: int) -> None:
        self.session = session
        self.seen = bytearray(frames + 2)
        self.last = 0
        self.distinct = self.received = self.duplicates = self.out_of_order = 0
        self.conn: Connection | None = None


class MirrorState:
    __slots__ = ("acked", "conn", "errors", "id", "sent", "sent_at", "task_id")

    def __init__(self, session_id: uuid.UUID, frames: int) -> None:
        self.id = session_id
        self.task_id = str(uuid.uuid4())
        self.sent = 0
        self.sent_at = array("d", bytes(8 * (frames + 1)))  # by seq: the frame's `ts`
        self.acked = 0
        self.errors = 0
        self.conn: Connection | None = None


class Generator:
    def __init__(self, server: Server, load: Load, client: str = "lean") -> None:
        self.server = server
        self.load = load
        self.client = CLIENTS[client]
        self.mirrors: list[MirrorState] = []
        self.watchers: list[WatcherState] = []
        self.latencies = array("d")
        self.ack_latencies = array("d")
        self.send_lags = array("d")
        self.last_delivery = 0.0
        self.unexpected = 0  # error frames, and sends on a connection the server closed

    async def connect_all(self, session_ids: list[uuid.UUID]) -> None:
        frames = self.load.frames_per_mirror
        self.mirrors = [MirrorState(s, frames) for s in session_ids]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        watcher_hello = self.server.hello("watcher", session_ids[0])

        async def watcher(mirror: MirrorState) -> None:
            state = WatcherState(mirror, frames)
            self.watchers.append(state)
            async with gate:
                state.conn = await self.client.open(
                    "127.0.0.1",
                    self.server.watch_port,
                    f"/ws/sessions/{mirror.id}/watch",
                    watcher_hello,
                    self._on_watch(state),
                )

        async def mirror(state: MirrorState) -> None:
            async with gate:
                state.conn = await self.client.open(
                    "127.0.0.1",
                    self.server.mirror_port,
                    f"/ws/sessions/{state.id}/mirror",
                    self.server.hello("mirror", state.id),
                    self._on_ack(state),
                )

        # Watchers first, so they see every frame from seq 1 on.
        await asyncio.gather(*(watcher(m) for m in self.mirrors for _ in range(self.load.watchers)))
        await asyncio.gather(*(mirror(m) for m in self.mirrors))

    def _on_watch(self, state: WatcherState) -> OnMessage:
        latencies, loads = self.latencies, orjson.loads

        def on_message(raw: bytes, received: float) -> None:
            message = loads(raw)
            kind = message["type"]
            if kind != "metrics" and kind != "task":
                if kind == "error":
                    self.unexpected += 1
                return  # snapshot, presence
            latencies.append(received - message["ts"])
            self.last_delivery = received
            state.received += 1
            seq = message["seq"]
            seen = state.seen
            if seq >= len(seen):
                seen.extend(bytes(seq + 1 - len(seen)))
            if seq <= state.last:
                if seen[seq]:
                    state.duplicates += 1
                    return
                state.out_of_order += 1
            else:
                state.last = seq
            seen[seq] = 1
            state.distinct += 1

        return on_message

    def _on_ack(self, state: MirrorState) -> OnMessage:
        ack_latencies, loads = self.ack_latencies, orjson.loads

        def on_message(raw: bytes, received: float) -> None:
            message = loads(raw)
            if message["type"] == "ack":
                # Per frame: ack receive time - send time; an ack covers every frame up to seq.
                seq, sent_at = min(message["seq"], state.sent), state.sent_at
                if seq > state.acked:
                    ack_latencies.extend(
                        received - sent_at[s] for s in range(state.acked + 1, seq + 1)
                    )
                    state.acked = seq
            elif message["type"] == "error":
                state.errors += 1

        return on_message

    async def stream(self, start: float) -> None:
        """Every mirror sends its frames at `rate` Hz from loop time `start`, phases spread
        evenly over one period so the server sees a steady flow, not bursts."""
        loop = asyncio.get_running_loop()
        rate, frames, count = self.load.rate, self.load.frames_per_mirror, len(self.mirrors)
        lags, now = self.send_lags, time.time

        async def one(index: int, state: MirrorState) -> None:
            conn = state.conn
            assert conn is not None
            first = start + index / count / rate
            task_id, sent_at = state.task_id, state.sent_at
            try:
                for k in range(frames):
                    due = first + k / rate
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    lags.append(loop.time() - due)
                    seq = k + 1
                    wave = (seq % 97) / 97
                    values = (0.8 + 0.15 * wave, 0.7 + 0.2 * wave, 150 * wave)
                    sent_at[seq] = ts = now()
                    await conn.send(FRAME % (seq, ts, *values, task_id))
                    state.sent = seq
            except Closed:
                self.unexpected += 1

        await asyncio.gather(*(one(i, m) for i, m in enumerate(self.mirrors)))

    def backlog_seconds(self) -> float:
        """How far behind the slowest watcher is right now, in seconds of the mirror's rate."""
        behind = max((w.session.sent - w.distinct for w in self.watchers), default=0)
        return behind / self.load.rate

    def complete(self) -> bool:
        return all(w.distinct >= w.session.sent for w in self.watchers) and all(
            m.acked >= m.sent for m in self.mirrors
        )

    def connections(self) -> list[Connection]:
        conns = [w.conn for w in self.watchers] + [m.conn for m in self.mirrors]
        return [conn for conn in conns if conn is not None]

    def closes(self) -> dict[str, int]:
        """How many connections the server closed (or dropped), by close code."""
        codes = Counter(str(c.close_code) for c in self.connections() if c.close_code is not None)
        return dict(sorted(codes.items()))

    async def close(self) -> None:
        for conn in self.connections():
            conn.abort()


async def sample_rss(server: Server, peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], server.rss())
        await asyncio.sleep(1.0)


def process_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every process, by pid. (This VM's per-CPU counters in
    /proc/stat under-report busy time, so the machine's load is measured per process.)"""
    out: dict[int, float] = {}
    for proc in psutil.process_iter(["cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            out[proc.pid] = times.user + times.system
    return out


def others_cpu(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in ours)


async def wait_until_quiet(limit_s: float, threshold: float = 0.25) -> None:
    """A shared machine: wait (up to limit_s) until other processes leave the CPUs alone."""
    deadline = time.monotonic() + limit_s
    while True:
        before = process_cpu()
        await asyncio.sleep(1.0)
        busy = others_cpu(before, process_cpu(), {os.getpid()})
        if busy <= threshold:
            return
        if time.monotonic() >= deadline:
            progress(f"  ! the machine is still {busy:.0%} busy with other work; running anyway")
            return


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_once(target: str, load: Load, args: argparse.Namespace) -> Result:
    """One run: fresh database, fresh server process(es), connect, stream, drain, measure."""
    admin_url, profile = args.database_url, args.py_spy
    if args.quiet_wait > 0:
        await wait_until_quiet(args.quiet_wait)
    database = f"bench_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    server: Server | None = None
    generator: Generator | None = None
    result: Result | None = None
    try:
        url = with_database(admin_url, database)
        server = Server(target, url, args.server_cpus)
        await server.start()
        progress(f"  {server.describe()}, database {database}")
        db = await asyncpg.connect(url)
        try:
            session_ids = [uuid.uuid4() for _ in range(load.sessions)]
            await db.execute(
                "INSERT INTO sessions (id, child_name, created_at)"
                " SELECT id, 'Bench child', now() FROM unnest($1::uuid[]) AS id",
                session_ids,
            )
            generator = Generator(server, load, args.client)
            await generator.connect_all(session_ids)
            result = await measure(
                target, load, server, generator, database, profile, args.py_spy_native
            )
            result.stored = await db.fetchval("SELECT count(*) FROM frames")
            health = await server.health()
            if health:
                result.buffer_peak = sum(int(h["buffer_peak_frames"]) for h in health)
            if server.variant.processes > 1 and health:
                result.backplane_resets = sum(int(h.get("backplane_resets", 0)) for h in health)
            server.mark_logs()
        finally:
            await db.close()
        for process in server.exited():
            print(f"  ! {process.name} exited during the run:\n{process.tail()}", file=sys.stderr)
        return result
    finally:
        try:
            if generator is not None:
                await generator.close()
            if server is not None:
                await asyncio.to_thread(server.stop)
                report_log_warnings(server.log_warnings(), result)
        finally:  # the database goes whatever happened above
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()


def report_log_warnings(found: dict[str, tuple[Counter[str], int]], result: Result | None) -> None:
    """What the server processes logged at warning or above: during the run (until the
    figures were taken), and at teardown (the generator drops its connections, then SIGTERM)."""
    for name, (during, after) in found.items():
        if result is not None:
            result.log_warnings[name] = during.total()
        if during:
            progress(f"  {name} log: {during.total()} warning/error lines in the run, most often:")
            for message, count in during.most_common(4):
                progress(f"    {count:>6} x {message}")
        if after:
            progress(f"  {name} log: {after} warning/error lines at teardown")


def start_profiler(
    process: Process, load: Load, prefix: str, native: bool
) -> subprocess.Popen[bytes]:
    """py-spy on one server process for the sending window: collapsed stacks, one line per
    stack. With `native`, C frames too (libc write, the GC …); py-spy then pauses the process
    for each sample, so it samples less often."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = f"{prefix}-{process.name}-S{load.sessions}.txt"
    command = [exe, "record", "--pid", str(process.proc.pid)]
    command += ["--rate", "100", "--native"] if native else ["--rate", "250", "--nonblocking"]
    command += ["--format", "raw", "--duration", str(round(load.seconds)), "-o", out]
    progress(f"  py-spy -> {out}")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def measure(
    target: str,
    load: Load,
    server: Server,
    generator: Generator,
    database: str,
    profile: str | None = None,
    native: bool = False,
) -> Result:
    loop = asyncio.get_running_loop()
    backends = PostgresBackends(database)
    backends.mark()
    peak = [server.rss()]
    sampler = asyncio.create_task(sample_rss(server, peak))
    cpu0, redis0 = server.cpu_seconds(), server.redis_cpu_seconds()
    gen0, wall0 = time.process_time(), time.time()
    everyone0 = process_cpu()
    start = loop.time() + 0.2
    profilers = [start_profiler(n, load, profile, native) for n in server.nodes if profile]
    await generator.stream(start)
    send_end = loop.time()
    behind = generator.backlog_seconds()
    drain_deadline = send_end + load.drain
    while not generator.complete() and loop.time() < drain_deadline:  # noqa: ASYNC110 - polls
        await asyncio.sleep(0.05)
    drain = loop.time() - send_end
    wall = time.time() - wall0
    cpus = [after - before for after, before in zip(server.cpu_seconds(), cpu0, strict=True)]
    cpu = sum(cpus)
    redis1 = server.redis_cpu_seconds()
    gen_cpu = time.process_time() - gen0
    db_cpu = backends.seconds()
    ours = {os.getpid(), *server.pids(), *backends.pids()}
    other_cpu = others_cpu(everyone0, process_cpu(), ours)
    sampler.cancel()
    for profiler in profilers:
        await asyncio.to_thread(profiler.wait)
    peak_rss = max(peak[0], server.peak_rss())

    g = generator
    sent = sum(m.sent for m in g.mirrors)
    deliveries = sum(w.received for w in g.watchers)
    latencies = sorted(g.latencies)
    lags = sorted(g.send_lags)
    acks = sorted(g.ack_latencies)
    first_send = wall0 + 0.2
    result = Result(
        target=target,
        load=load,
        sent=sent,
        offered_per_s=sent / max(send_end - start, 1e-9),
        deliveries=deliveries,
        expected_deliveries=sent * load.watchers,
        delivered_per_s=deliveries / max(g.last_delivery - first_send, 1e-9) if deliveries else 0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else float("nan"),
        ack_p50_ms=percentile(acks, 0.50) * 1000,
        ack_p99_ms=percentile(acks, 0.99) * 1000,
        lost=sum(max(0, w.session.sent - w.distinct) for w in g.watchers),
        duplicates=sum(w.duplicates for w in g.watchers),
        out_of_order=sum(w.out_of_order for w in g.watchers),
        behind_s=behind,
        drain_s=drain,
        acked=sum(min(m.acked, m.sent) for m in g.mirrors),
        errors=g.unexpected + sum(m.errors for m in g.mirrors),
        server_cpu_s=cpu,
        process_cpu_s=cpus,
        redis_cpu_s=None if redis0 is None or redis1 is None else redis1 - redis0,
        closes=g.closes(),
        server_cpu_util=cpu / wall,
        cpu_per_1000=cpu / deliveries * 1000 if deliveries else float("nan"),
        peak_rss_mb=peak_rss / 2**20,
        db_cpu_s=db_cpu,
        gen_cpu_util=gen_cpu / wall,
        send_lag_p99_ms=percentile(lags, 0.99) * 1000,
        other_cpu_s=other_cpu,
        wall_s=wall,
    )
    return result


# -- reporting -------------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def scaled_out(r: Result) -> bool:
    return r.processes > 1


def with_redis(r: Result) -> bool:
    return r.redis_cpu_s is not None


def closed_or_scaled(r: Result) -> bool:
    return scaled_out(r) or bool(r.closes)


class Row(NamedTuple):
    """A line of the side-by-side table: its label, its cell, the value compared with the
    hub's (ratio columns), and when it is shown (if it holds for any of the results)."""

    name: str
    show: Callable[[Result], str]
    value: Callable[[Result], float] | None = None
    only_if: Callable[[Result], bool] | None = None


ROWS: list[Row] = [
    Row("offered frames/s (mirrors)", lambda r: fmt(r.offered_per_s, 0), lambda r: r.offered_per_s),
    Row(
        "delivered frames/s (watchers)",
        lambda r: fmt(r.delivered_per_s, 0),
        lambda r: r.delivered_per_s,
    ),
    Row("latency p50 ms", lambda r: fmt(r.p50_ms, 2), lambda r: r.p50_ms),
    Row("latency p99 ms", lambda r: fmt(r.p99_ms, 2), lambda r: r.p99_ms),
    Row("latency max ms", lambda r: fmt(r.max_ms, 1), lambda r: r.max_ms),
    Row("ack latency p50 ms", lambda r: fmt(r.ack_p50_ms, 1), lambda r: r.ack_p50_ms),
    Row("ack latency p99 ms", lambda r: fmt(r.ack_p99_ms, 1), lambda r: r.ack_p99_ms),
    Row("behind when sending stopped s", lambda r: fmt(r.behind_s, 2)),
    Row("lost / duplicate / out-of-order", lambda r: f"{r.lost}/{r.duplicates}/{r.out_of_order}"),
    Row("stored / sent", lambda r: f"{r.stored}/{r.sent}"),
    Row("acked / sent", lambda r: f"{r.acked}/{r.sent}"),
    Row(
        "server CPU s / 1000 deliveries", lambda r: fmt(r.cpu_per_1000, 3), lambda r: r.cpu_per_1000
    ),
    Row("server CPU (of one core) %", lambda r: fmt(r.server_cpu_util * 100, 0)),
    Row(
        "  per process (A / B) CPU s",
        lambda r: " / ".join(fmt(c, 1) for c in r.process_cpu_s),
        only_if=scaled_out,
    ),
    Row(
        "redis-server CPU s",
        lambda r: "-" if r.redis_cpu_s is None else fmt(r.redis_cpu_s, 1),
        only_if=with_redis,
    ),
    Row(
        "server+redis CPU s / 1000 deliv.",
        lambda r: fmt(r.cpu_with_redis_per_1000, 3),
        lambda r: r.cpu_with_redis_per_1000,
        with_redis,
    ),
    Row("server peak RSS MB", lambda r: fmt(r.peak_rss_mb, 0), lambda r: r.peak_rss_mb),
    Row(
        "hub write-buffer peak frames",
        lambda r: "-" if r.buffer_peak is None else str(r.buffer_peak),
    ),
    Row("PostgreSQL backends CPU s", lambda r: fmt(r.db_cpu_s, 1), lambda r: r.db_cpu_s),
    Row(
        "backplane resets",
        lambda r: "-" if r.backplane_resets is None else str(r.backplane_resets),
        only_if=scaled_out,
    ),
    Row("generator CPU %", lambda r: fmt(r.gen_cpu_util * 100, 0)),
    Row("other processes' CPU (of one core) %", lambda r: fmt(r.other_cpu_util * 100, 0)),
    Row("generator send lag p99 ms", lambda r: fmt(r.send_lag_p99_ms, 2)),
    Row("errors / unexpected closes", lambda r: str(r.errors)),
    Row(
        "closed by the server (code x n)", lambda r: r.closes_text() or "0", None, closed_or_scaled
    ),
    Row(
        "server log warning/error lines",
        lambda r: str(sum(r.log_warnings.values())),
        only_if=scaled_out,
    ),
]


def shown(conditional: Iterable[Any], results: Iterable[Result]) -> list[Any]:
    """The rows or columns to show: those without a condition, and those whose condition holds
    for at least one of the results."""
    results = list(results)
    return [c for c in conditional if c.only_if is None or any(map(c.only_if, results))]


def print_comparison(title: str, results: dict[str, Result]) -> None:
    print(f"\n{title}")
    targets = [t for t in TARGETS if t in results]
    # Every other target against the single-process hub: how many times its figure.
    compared = [t for t in targets if t != "hub"] if "hub" in results else []
    widths = [max(14, len(t) + 6) for t in compared]
    header = f"{'':34}" + "".join(f"{t:>16}" for t in targets)
    header += "".join(f"{t + '/hub':>{w}}" for t, w in zip(compared, widths, strict=True))
    print(header)
    print("-" * len(header))
    for row in shown(ROWS, results.values()):
        line = f"{row.name:34}" + "".join(f"{row.show(results[t]):>16}" for t in targets)
        if row.value is not None:
            hub = row.value(results["hub"]) if compared else 0.0
            for t, w in zip(compared, widths, strict=True):
                ratio = (fmt(row.value(results[t]) / hub, 2) + "x") if hub else "-"
                line += f"{ratio:>{w}}"
        print(line)


class Column(NamedTuple):
    """A column of the `max` step table."""

    header: str
    width: int
    cell: Callable[[Result], str]
    only_if: Callable[[Result], bool] | None = None


STEP_COLUMNS: list[Column] = [
    Column("S", 5, lambda r: str(r.load.sessions)),
    Column("offered/s", 10, lambda r: fmt(r.offered_per_s, 0)),
    Column("deliv/s", 10, lambda r: fmt(r.delivered_per_s, 0)),
    Column("p50 ms", 8, lambda r: fmt(r.p50_ms, 2)),
    Column("p99 ms", 9, lambda r: fmt(r.p99_ms, 1)),
    Column("max ms", 9, lambda r: fmt(r.max_ms, 0)),
    Column("lost/dup/ooo", 13, lambda r: f"{r.lost}/{r.duplicates}/{r.out_of_order}"),
    Column("stored/sent", 15, lambda r: f"{r.stored}/{r.sent}"),
    Column("acked", 8, lambda r: str(r.acked == r.sent)),
    Column("CPU/1k", 7, lambda r: fmt(r.cpu_per_1000, 3)),
    Column("CPU%", 5, lambda r: fmt(r.server_cpu_util * 100, 0)),
    Column("A/B CPU%", 9, lambda r: r.process_shares, scaled_out),
    Column("redis%", 6, lambda r: fmt(r.redis_cpu_util * 100, 0), with_redis),
    Column("PG%", 4, lambda r: fmt(r.db_cpu_util * 100, 0), scaled_out),
    Column("RSS MB", 7, lambda r: fmt(r.peak_rss_mb, 0)),
    Column("gen%", 5, lambda r: fmt(r.gen_cpu_util * 100, 0)),
    Column("other%", 6, lambda r: fmt(r.other_cpu_util * 100, 0)),
]


def verdict(r: Result, short: bool = False) -> str:
    failures = r.failures()
    if short:
        return "FAIL" if failures else "gen-limited" if r.generator_limited else "pass"
    text = "pass" if not failures else "FAIL: " + ", ".join(failures)
    return text + (" (generator-limited)" if r.generator_limited else "")


def print_steps(target: str, results: list[Result]) -> None:
    print(
        f"\nmax, {target}: R={results[0].load.rate:g} Hz, W={results[0].load.watchers},"
        f" T={results[0].load.seconds:g} s per step"
    )
    columns = shown(STEP_COLUMNS, results)
    header = " ".join(f"{c.header:>{c.width}}" for c in columns) + "  verdict"
    print(header)
    print("-" * len(header))
    for r in results:
        print(" ".join(f"{c.cell(r):>{c.width}}" for c in columns) + f"  {verdict(r)}")


def print_max_side_by_side(summary: dict[str, Any]) -> None:
    """Every target's steps next to each other: p99, server CPU per 1000 deliveries, verdict."""
    targets = [t for t in TARGETS if t in summary]
    steps = {t: {r.load.sessions: r for r in summary[t]["steps"]} for t in targets}
    sessions = sorted({s for by_s in steps.values() for s in by_s})
    print("\nmax, side by side: latency p99 ms / server CPU s per 1000 deliveries / verdict")
    header = f"{'S':>5}" + "".join(f"{t:>26}" for t in targets)
    print(header)
    print("-" * len(header))
    for s in sessions:
        line = f"{s:>5}"
        for t in targets:
            r = steps[t].get(s)
            cell = "" if r is None else f"{fmt(r.p99_ms, 1)} / {fmt(r.cpu_per_1000, 3)} / "
            line += f"{cell + (verdict(r, short=True) if r else ''):>26}"
        print(line)
    print(f"{'best':>5}" + "".join(f"{summary[t]['best'] or 'none'!s:>26}" for t in targets))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(r: Result) -> str:
    text = (
        f"p50 {fmt(r.p50_ms, 2)} ms, p99 {fmt(r.p99_ms, 2)} ms, lost {r.lost},"
        f" stored {r.stored}/{r.sent}, CPU {fmt(r.server_cpu_util * 100, 0)}%,"
        f" gen {fmt(r.gen_cpu_util * 100, 0)}%"
    )
    if scaled_out(r):
        text += f", A/B {r.process_shares}%, PostgreSQL {fmt(r.db_cpu_util * 100, 0)}%"
    if with_redis(r):
        text += f", redis-server {fmt(r.redis_cpu_util * 100, 0)}%"
    if r.closes:
        text += f", server closed {r.closes_text()}"
    return text


async def scenario_clinic(args: argparse.Namespace, targets: Iterable[str]) -> dict[str, Result]:
    load = Load(
        sessions=args.sessions or 50,
        rate=args.rate or 30.0,
        watchers=args.watchers if args.watchers is not None else 2,
        seconds=args.seconds or 20.0,
        drain=args.drain if args.drain is not None else max(10.0, args.seconds or 20.0),
    )
    results: dict[str, Result] = {}
    for target in targets:
        progress(
            f"clinic: {target}, S={load.sessions} R={load.rate:g} W={load.watchers}"
            f" T={load.seconds:g}s …"
        )
        results[target] = r = await run_once(target, load, args)
        progress(f"  {describe(r)}")
    print_comparison(
        f"clinic: S={load.sessions} mirrors x R={load.rate:g} Hz, W={load.watchers} watchers"
        f" each, T={load.seconds:g} s{pin_note(args, results)}",
        results,
    )
    if "hub" in results:
        ok = results["hub"].p99_ms < 20 and not results["hub"].failures()
        print(f"target: hub p99 < 20 ms with nothing lost: {'met' if ok else 'MISSED'}")
    return results


async def scenario_max(args: argparse.Namespace, targets: Iterable[str]) -> dict[str, Any]:
    steps = [int(s) for s in args.steps.split(",")] if args.steps else list(MAX_STEPS)
    if args.sessions:
        steps = [s for s in steps if s <= args.sessions]
    seconds = args.seconds or 10.0
    summary: dict[str, Any] = {}
    for target in targets:
        results: list[Result] = []
        best: int | None = None
        limited = False
        for sessions in steps:
            load = Load(
                sessions=sessions,
                rate=args.rate or 30.0,
                watchers=args.watchers if args.watchers is not None else 2,
                seconds=seconds,
                drain=args.drain if args.drain is not None else max(5.0, seconds),
            )
            progress(f"max: {target}, S={sessions} …")
            r = await run_once(target, load, args)
            results.append(r)
            progress(f"  {describe(r)}")
            if r.failures():
                break
            if r.generator_limited:
                limited = True  # the server kept up, but this generator could not load it more
                break
            best = sessions
        print_steps(target, results)
        more = " (stopped: the load generator, not the server, was the limit)" if limited else ""
        print(f"largest passing S for {target}: {best if best is not None else 'none'}{more}")
        summary[target] = {"best": best, "steps": results, "generator_limited": limited}
    if len(summary) > 1:
        print_max_side_by_side(summary)
    if "hub" in summary:
        best = summary["hub"]["best"] or 0
        print(
            f"target: hub max >= 200 sessions (aim 400+): {'met' if best >= 200 else 'MISSED'}"
            f" ({best})"
        )
    return summary


def pin_note(args: argparse.Namespace, targets: Iterable[str]) -> str:
    if args.server_cpus is None:
        return " (unpinned)"
    shared = ""
    if any(VARIANTS[t].processes > 1 for t in targets):
        shared = ", both hub processes and redis-server too"
    return f" (server on CPU {args.server_cpus}{shared}, generator on CPU {args.client_cpus})"


def scale_out_note(args: argparse.Namespace) -> str:
    cpus = "unpinned" if args.server_cpus is None else f"all on CPU {args.server_cpus}"
    return (
        "two-process targets: mirrors connect to hub process A, watchers to hub process B (each"
        " delivery crosses the backplane);\n"
        f"  A, B and hub-redis's redis-server share the single process's CPU budget ({cpus});"
        " server CPU = A + B, redis-server's is shown apart"
    )


def to_json(value: Any) -> Any:
    if isinstance(value, Result | Load):
        return {k: to_json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def describe_setup(args: argparse.Namespace) -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = "?"
    return (
        f"hub {rev or '?'}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]};"
        f" client {args.client}; {time.strftime('%Y-%m-%d %H:%M')}"
    )


async def main(args: argparse.Namespace) -> int:
    targets = args.target or (SCALEOUT_TARGETS if args.scenario == "scaleout" else DEFAULT_TARGETS)
    print(describe_setup(args))
    if any(VARIANTS[t].processes > 1 for t in targets):
        print(scale_out_note(args))
    out: dict[str, Any] = {}
    started = time.monotonic()
    scenarios: dict[str, Callable[[argparse.Namespace, Iterable[str]], Awaitable[Any]]] = {
        "clinic": scenario_clinic,
        "max": scenario_max,
    }
    both = args.scenario in ("all", "scaleout")
    for name in ("clinic", "max") if both else (args.scenario,):
        out[name] = await scenarios[name](args, targets)
    progress(f"done in {time.monotonic() - started:.0f}s")
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(to_json(out), indent=1))
    return 0


def parse_targets(text: str) -> tuple[str, ...]:
    if text == "both":
        return DEFAULT_TARGETS
    targets = tuple(t.strip() for t in text.split(","))
    unknown = [t for t in targets if t not in VARIANTS]
    if unknown or not targets:
        raise argparse.ArgumentTypeError(f"unknown target {', '.join(unknown)!r}")
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Mirror Hub live-path benchmark: hub vs one-transaction-per-frame baseline,"
        " and one hub process vs two joined by a backplane (scaleout)."
    )
    parser.add_argument(
        "scenario",
        choices=["clinic", "max", "all", "scaleout"],
        help="all: clinic then max; scaleout: the same for hub, hub-postgres and hub-redis",
    )
    parser.add_argument("--sessions", type=int, help="S (clinic: 50; max: the largest step)")
    parser.add_argument("--rate", type=float, help="R, frames/s per mirror (30)")
    parser.add_argument("--watchers", type=int, help="W, watchers per session (2)")
    parser.add_argument("--seconds", type=float, help="T, seconds of sending (clinic 20, max 10)")
    parser.add_argument("--drain", type=float, help="seconds allowed after T for stragglers")
    parser.add_argument(
        "--target",
        type=parse_targets,
        help=f"one of {', '.join(TARGETS)}, a comma-separated list of them, or both (hub and"
        " baseline: the default of clinic, max and all; scaleout's is hub,hub-postgres,hub-redis)",
    )
    parser.add_argument("--steps", help=f"max: comma-separated S steps (default {MAX_STEPS})")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="a PostgreSQL server and a database to connect to for CREATE/DROP",
    )
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list for the server")
    parser.add_argument("--client-cpus", default="1", help="CPU list for this generator")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="lean",
        help="WebSocket client of the generator (lean: minimal and fast; websockets: reference)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other processes to go idle",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PREFIX",
        help="profile each server run with py-spy (collapsed stacks in PREFIX-<target>-S<n>.txt)",
    )
    parser.add_argument(
        "--py-spy-native", action="store_true", help="with --py-spy: include C frames"
    )
    args = parser.parse_args(argv)
    if args.no_pin:
        args.server_cpus = args.client_cpus = None
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.client_cpus is not None:
        # The same as `taskset -c 1` for this process (and the threads it starts later).
        os.sched_setaffinity(0, {int(c) for c in arguments.client_cpus.split(",")})
    raise SystemExit(uvloop.run(main(arguments)))
