"""Real hub processes and real WebSocket clients for the live tests (no mocks, no sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.engine import make_url
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub import closecodes
from hub.auth import Role, TokenService
from hub.storage.frames import asyncpg_dsn
from tests.support import ROOT

# Every hub the tests start signs and verifies with this secret (authentication stays on).
TEST_SECRET = "test-secret-" + "x" * 40
TOKENS = TokenService(TEST_SECRET.encode())


def token(role: Role, session_id: str | None = None, ttl_s: int = 3600) -> str:
    sid = uuid.UUID(session_id) if session_id else None
    return TOKENS.issue(role, f"test-{role}", ttl_s, session_id=sid)


def staff_headers(role: Role = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role)}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HubProcess:
    """`hub serve` in a child process on a free port, with its output kept in a log file."""

    def __init__(
        self,
        database_url: str | None,
        log_path: Path,
        port: int | None = None,
        migrate: bool = False,
        workers: int | None = None,
        **env: str,
    ) -> None:
        # database_url None: no DATABASE_URL, so the hub runs its embedded PostgreSQL.
        self.database_url = database_url
        self.migrate = migrate
        self.workers = workers
        self.log_path = log_path
        self.env = env
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        if self.database_url is not None:
            env["DATABASE_URL"] = self.database_url
        env["HUB_AUTH_SECRET"] = TEST_SECRET
        env.update(self.env)
        env.setdefault("HUB_LOG_LEVEL", "info")
        args = [sys.executable, "-m", "hub", "serve", "--port", str(self.port)]
        if not self.migrate:
            args.append("--no-migrate")
        if self.workers is not None:
            args += ["--workers", str(self.workers)]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group, so a kill reaches uvicorn's worker processes too.
            start_new_session=self.workers is not None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.logs()}")
                try:
                    response = await client.get(f"{self.http}/health", timeout=1.0)
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"hub did not come up:\n{self.logs()}")
                await asyncio.sleep(0.05)  # polling the port: the only readiness signal there is

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, timeout)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        if self.workers is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(10)


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Proxy:
    """A TCP proxy in front of a service, to take the service away: `stop()` closes every
    link and refuses new ones (the service is down); `freeze()` lets the links stand but
    passes nothing on (a half-open connection, which only a health check can find)."""

    def __init__(self, connect: Callable[[], Awaitable[Streams]]) -> None:
        self.connect = connect
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.StreamWriter, bool] = {}  # client side -> frozen
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # The same port every time: the backplane reconnects to where it was.
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def running(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def freeze(self) -> None:
        for writer in self._links:
            self._links[writer] = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._links[writer] = False
        try:
            up_reader, up_writer = await self.connect()
        except OSError:
            writer.transport.abort()
            return
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, writer), self._pump(up_reader, writer, writer)
            )
        finally:
            self._links.pop(writer, None)
            self._tasks.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await src.read(65536):
                if not self._links.get(link, True):  # frozen: swallowed, like a dead link
                    dst.write(data)
                    await dst.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            dst.transport.abort()


def pg_proxy(database_url: str) -> tuple[Proxy, Callable[[], str]]:
    """A proxy to the test run's PostgreSQL (TCP or, for the embedded one, a Unix socket),
    and a function giving the asyncpg DSN through it (once it has a port)."""
    url = make_url(database_url)
    query = dict(url.query)
    host = query.pop("host", None) or url.host or "localhost"
    host = host if isinstance(host, str) else host[0]
    port_in_query = query.pop("port", None)
    port = int(str(port_in_query)) if port_in_query else url.port or 5432

    async def connect() -> Streams:
        if host.startswith("/"):
            return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        return await asyncio.open_connection(host, port)

    proxy = Proxy(connect)

    def dsn() -> str:
        proxied = url.set(host="127.0.0.1", port=proxy.port, query=query)
        return asyncpg_dsn(proxied.render_as_string(hide_password=False))

    return proxy, dsn


def balancer(ports: list[int]) -> Proxy:
    """A TCP load balancer, as clinics put in front of several hubs: each new connection
    goes to the first backend that accepts it, in order (no sticky sessions)."""

    async def first_up() -> Streams:
        for port in ports:
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        raise OSError("no backend is up")

    return Proxy(first_up)


class RedisServer:
    """Our own redis-server on a free port (so a test may kill and restart it)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("redis-server")

    def start(self, timeout: float = 10.0) -> None:
        binary = self.binary()
        assert binary is not None
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:  # ready once it answers PING
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not come up")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def require_redis_server() -> None:
    """Redis tests fail rather than skip in CI; elsewhere a missing server skips them."""
    if RedisServer.binary() is None:
        message = "redis-server not found on PATH (On Debian: apt-get install -y redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


async def create_session(http: str, **fields: Any) -> str:
    body = {"child_name": "Test Child", "child_age": 7, **fields}
    async with httpx.AsyncClient(headers=staff_headers("therapist")) as client:
        response = await client.post(f"{http}/sessions", json=body)
    response.raise_for_status()
    session_id: str = response.json()["id"]
    return session_id


def metrics_frame(seq: int, **values: float) -> dict[str, Any]:
    return {"type": "metrics", "seq": seq, "ts": time.time(), "values": values or {"accuracy": 0.5}}


def task_frame(seq: int, task_id: str, event: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "task",
        "seq": seq,
        "ts": time.time(),
        "task_id": task_id,
        "task_name": extra.pop("task_name", "raise_hand"),
        "event": event,
        "status": status,
        **extra,
    }


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return message


async def recv_until(ws: ClientConnection, type_: str, timeout: float = 10.0) -> dict[str, Any]:
    """Next message of `type_`, skipping others (acks, presence)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if message["type"] == type_:
                return message


@contextlib.asynccontextmanager
async def open_client(
    base_ws: str, session_id: str, role: str, **hello: Any
) -> AsyncIterator[tuple[ClientConnection, dict[str, Any]]]:
    """Connect as mirror or watcher, say hello (with the session's mirror token, or a
    therapist's, unless `token` is given), return the socket and the welcome."""
    if "token" not in hello:
        hello["token"] = token("mirror", session_id) if role == "mirror" else token("therapist")
    async with connect(
        f"{base_ws}/ws/sessions/{session_id}/{role}", max_size=2**22, compression=None
    ) as ws:
        await send(ws, {"type": "hello", **hello})
        welcome = await recv(ws)
        assert welcome["type"] == "welcome", welcome
        yield ws, welcome


async def wait_acked(ws: ClientConnection, seq: int, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if message["type"] == "ack" and message["seq"] >= seq:
                return
            assert message["type"] in ("ack", "presence"), message


def new_task_id() -> str:
    return str(uuid.uuid4())


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, list[Any]]:
    """Read until the hub closes the connection: its close code and the messages before it."""
    messages: list[Any] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                messages.append(orjson.loads(await ws.recv()))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"no close frame from the hub; got {messages}"
            return exc.rcvd.code, messages


async def follow(url: str, session_id: str, want: int, seen: list[int], closes: list[int]) -> None:
    """A watcher that resumes with `since` after every close, until it has `want` frames.
    Within one connection every frame must follow the previous one: a gap is a failure."""
    while len(seen) < want:
        try:
            async with connect(f"{url}/ws/sessions/{session_id}/watch") as ws:
                since = seen[-1] if seen else 0
                await send(ws, {"type": "hello", "token": token("therapist"), "since": since})
                async for raw in ws:
                    message = orjson.loads(raw)
                    if message["type"] in ("metrics", "task"):
                        expected = seen[-1] + 1 if seen else 1
                        assert message["seq"] == expected, f"silent gap: {expected} → {message}"
                        seen.append(message["seq"])
                        if len(seen) >= want:
                            return
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            closes.append(code)
            assert closecodes.should_reconnect(code), f"closed for good: {code}"
        except OSError:
            closes.append(1006)
        await asyncio.sleep(0.05)  # reconnect backoff of a real client


def embedded_processes(data_dir: Path) -> list[Any]:
    """Every live process of the embedded PostgreSQL in `data_dir`: the postmaster (its command
    line names the pgdata folder), its children, and the keeper (`… keep DATA_DIR`)."""
    import psutil

    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and str(data_dir / "pgdata") in cmdline:
                found.append(proc)
                found.extend(proc.children(recursive=True))
            elif cmdline[-2:] == ["keep", str(data_dir)]:
                found.append(proc)

    def alive(proc: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
        return False

    return [p for p in found if alive(p)]
