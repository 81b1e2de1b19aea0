"""HTTP API under concurrent load: 100 concurrent task writes, then 100 concurrent task reads.

Starts a real hub (`python -m hub serve`) on a free port with a fresh database created for the
run and dropped afterwards, or measures a hub that is already running (`--url`). One session
is created; each round then fires `--concurrency` concurrent `POST /sessions/{id}/tasks`
and, once they are all answered, as many concurrent `GET /sessions/{id}/tasks` (the list
grows by `--concurrency` tasks a round; `--limit N` reads pages of N). For each batch it
prints the wall time and the p50 / p99 latency of the single requests, and at the end the
median over the rounds. A hub it started is stopped gracefully at the end, and its database
then tells whether every read was audited.

`--target hub,hub@REF` measures this checkout and the hub of another commit (checked out
into a temporary git worktree, run with the same Python) in the same run: each gets its own
database and process, the rounds alternate between them, and the summary prints the ratio.

    python benchmarks/http_bench.py                      # own hub, own database
    python benchmarks/http_bench.py --target hub,hub@99d37d4 --limit 100 --rounds 5
    python benchmarks/http_bench.py --url http://127.0.0.1:8000 --token "$(hub token create \
        --role therapist --name bench --ttl 1h)"
    python benchmarks/http_bench.py --admin-url postgresql://postgres@db:5432/postgres
    python benchmarks/http_bench.py --pool per-connection   # one client per connection

The admin URL names a database on the server in which `CREATE DATABASE` may be run (default
postgresql://postgres@127.0.0.1:5432/test, or $BENCH_ADMIN_URL). A hub the benchmark starts
signs with a random secret, and the benchmark gets its credential from `hub token create`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
# What the original backend took for 100 concurrent requests, for comparison.
REFERENCE_S = 0.8
STARTUP_TIMEOUT_S = 60.0
HUB = (sys.executable, "-m", "hub")
TASK = {"task_name": "raise_hand", "duration_seconds": 15.5, "status": "success"}


@dataclass
class Batch:
    wall_s: float
    latencies_s: list[float]
    # CPU the benchmark client itself used: on a small machine it competes with the hub.
    client_cpu_s: float
    hub_cpu_s: float | None = None  # CPU of the hub process (when the benchmark started it)

    @property
    def p50(self) -> float:
        return percentile(self.latencies_s, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_s, 99)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(asyncpg_dsn(admin_url), name)
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        print(f"dropped database {name}")


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """The tree of commit `ref` in a temporary git worktree, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    git = ("git", "-C", str(ROOT))
    subprocess.run(
        (*git, "worktree", "add", "--detach", str(folder), ref), check=True, capture_output=True
    )
    try:
        yield folder
    finally:
        subprocess.run((*git, "worktree", "remove", "--force", str(folder)), check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def hub_process(
    database_url: str,
    port: int,
    role: str = "therapist",
    root: Path = ROOT,
    pids: list[int] | None = None,
) -> AsyncIterator[tuple[str, str]]:
    """`hub serve` of the tree at `root` on `port` (migrating the empty database first) until
    the block ends, then stopped with SIGTERM; yields its base URL and a credential of
    `role` for it (and appends its process id to `pids`)."""
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        # That tree's `hub` package before the one installed in the environment.
        "PYTHONPATH": os.pathsep.join(filter(None, (str(root), os.environ.get("PYTHONPATH")))),
        "DATABASE_URL": database_url,
        "HUB_LOG_LEVEL": "warning",
        "HUB_AUTH_SECRET": secrets.token_urlsafe(48),
    }
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            *HUB,
            "serve",
            "--port",
            str(port),
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await wait_healthy(base, proc)
                token = await create_token(env, role, root)
            if pids is not None:
                pids.append(proc.pid)
            yield base, token
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(30):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def create_token(env: dict[str, str], role: str = "therapist", root: Path = ROOT) -> str:
    proc = await asyncio.create_subprocess_exec(
        *HUB,
        "token",
        "create",
        "--role",
        role,
        "--name",
        "http-bench",
        "--ttl",
        "1h",
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"hub token create failed: {err.decode(errors='replace')}")
    return out.decode().strip()


async def wait_healthy(base: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as client:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{base}/health", timeout=1.0)).status_code == 200:
                    return
            await asyncio.sleep(0.05)  # polling the port: the only readiness signal there is


async def timed(call: Callable[[], Awaitable[Any]], expected: int) -> float:
    start = time.perf_counter()
    response = await call()
    elapsed = time.perf_counter() - start
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text[:200]}"
        )
    return elapsed


def cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def batch(
    calls: list[Callable[[], Awaitable[Any]]], expected: int, hub_pid: int | None = None
) -> Batch:
    start, cpu, hub_cpu = time.perf_counter(), time.process_time(), cpu_of(hub_pid)
    latencies = await asyncio.gather(*(timed(call, expected) for call in calls))
    return Batch(
        time.perf_counter() - start,
        list(latencies),
        time.process_time() - cpu,
        None if hub_pid is None else cpu_of(hub_pid) - hub_cpu,
    )


def line(label: str, result: Batch) -> str:
    hub = "" if result.hub_cpu_s is None else f", hub CPU {result.hub_cpu_s:5.2f} s"
    return (
        f"{label:<6} wall {result.wall_s:7.3f} s   p50 {result.p50 * 1000:8.1f} ms   "
        f"p99 {result.p99 * 1000:8.1f} ms   (client CPU {result.client_cpu_s:5.2f} s{hub})"
    )


@dataclass
class RawResponse:
    status_code: int
    body: bytes
    request: Any

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"{self.request.method} {self.request.url}: {self.status_code}")


class RawClient:
    """A minimal HTTP/1.1 client on one keep-alive connection (`--client raw`): a few
    microseconds per request where httpx takes milliseconds, so that on a small machine the
    load generator does not take the CPU the hub is measured with."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": parts.netloc, **headers}.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.lock = asyncio.Lock()

    async def post(self, path: str, json: Any) -> RawResponse:
        body = orjson.dumps(json)
        return await self.request("POST", path, body)

    async def get(self, path: str, params: dict[str, str] | None = None) -> RawResponse:
        return await self.request("GET", f"{path}?{urlencode(params)}" if params else path)

    async def request(self, method: str, path: str, body: bytes = b"") -> RawResponse:
        async with self.lock:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            extra = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(f"{method} {path} HTTP/1.1\r\n{self.head}{extra}\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(h.lower().split(": ", 1) for h in lines[1:] if ": " in h)
            content = await reader.readexactly(int(fields.get("content-length", "0")))
            if fields.get("connection") == "close":
                writer.close()
                self.streams = None
            request = types.SimpleNamespace(method=method, url=path)
            return RawResponse(int(lines[0].split(" ", 2)[1]), content, request)

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()


@contextlib.asynccontextmanager
async def clients(
    base: str, token: str | None, concurrency: int, pool: str
) -> AsyncIterator[list[Any]]:
    """The HTTP clients a batch spreads its requests over (round-robin).

    shared: one client with `concurrency` connections. per-connection: `concurrency`
    clients of one connection each, like as many independent users; httpx's connection pool
    costs CPU that grows with the connections it manages, so on a small machine the shared
    pool can be the bottleneck of the measurement (see the client CPU column).
    """
    # Below uvicorn's 5 s keep-alive timeout: reusing a connection the server is closing
    # at that moment fails with ReadError.
    keepalive_s = 2.0
    count, per_client = (1, concurrency) if pool == "shared" else (concurrency, 1)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if pool == "raw":
        raw = [RawClient(base, headers) for _ in range(concurrency)]
        try:
            yield raw
        finally:
            for client in raw:
                await client.aclose()
        return
    limits = httpx.Limits(
        max_connections=per_client,
        max_keepalive_connections=per_client,
        keepalive_expiry=keepalive_s,
    )
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60.0)
            )
            for _ in range(count)
        ]


@dataclass
class Target:
    """One hub under load: its label (`hub`, `hub@REF`, or the URL), and its results."""

    label: str
    base: str = ""
    token: str | None = None
    database_url: str | None = None  # set when the benchmark started the hub
    pid: int | None = None  # likewise
    session_id: str = ""
    posts: list[Batch] = field(default_factory=list)
    gets: list[Batch] = field(default_factory=list)
    reads: int = 0  # GET /sessions/{id}/tasks answered: each must leave an audit row


async def run_round(
    target: Target, number: int, concurrency: int, pool: str, limit: int | None
) -> None:
    async with clients(target.base, target.token, concurrency, pool) as pool_clients:
        client = pool_clients[0]
        if not target.session_id:
            response = await client.post(
                "/sessions", json={"child_name": "Bench Child", "child_age": 7}
            )
            if response.status_code == 401:
                raise SystemExit(
                    "the hub wants a credential: pass --token (see `hub token create`)"
                )
            response.raise_for_status()
            target.session_id = response.json()["id"]
        tasks_url = f"/sessions/{target.session_id}/tasks"
        params = {} if limit is None else {"limit": str(limit)}
        spread = [pool_clients[i % len(pool_clients)] for i in range(concurrency)]
        posts = [partial(c.post, tasks_url, json=TASK) for c in spread]
        post = await batch(posts, 201, target.pid)
        gets = [partial(c.get, tasks_url, params=params) for c in spread]
        get = await batch(gets, 200, target.pid)
        listed = len((await client.get(tasks_url, params=params)).json())
        target.reads += concurrency + 1
    target.posts.append(post)
    target.gets.append(get)
    print(f"{target.label} round {number}: ({listed} tasks per answer)")
    print("  " + line("POST", post))
    print("  " + line("GET", get))


def medians(results: list[Batch]) -> tuple[float, float, float, float, float | None]:
    hub = [r.hub_cpu_s for r in results if r.hub_cpu_s is not None]
    return (
        statistics.median(r.wall_s for r in results),
        statistics.median(r.p50 for r in results),
        statistics.median(r.p99 for r in results),
        statistics.median(r.client_cpu_s for r in results),
        statistics.median(hub) if hub else None,
    )


def summary(targets: list[Target], rounds: int) -> None:
    print(f"\nmedian over {rounds} rounds:")
    for target in targets:
        for label, results in (("POST", target.posts), ("GET", target.gets)):
            wall, p50, p99, cpu, hub_cpu = medians(results)
            hub = "" if hub_cpu is None else f", hub CPU {hub_cpu:5.2f} s"
            print(
                f"  {target.label:<14} {label:<5} wall {wall:7.3f} s   p50 {p50 * 1000:8.1f} ms"
                f"   p99 {p99 * 1000:8.1f} ms   (client CPU {cpu:5.2f} s{hub})"
            )
    first = targets[0]
    for other in targets[1:]:
        for label, mine, theirs in (
            ("POST", first.posts, other.posts),
            ("GET", first.gets, other.gets),
        ):
            ratio = medians(theirs)[0] / medians(mine)[0]
            text = f"  {label} wall: {other.label} / {first.label} = {ratio:.2f}x"
            mine_cpu, theirs_cpu = medians(mine)[4], medians(theirs)[4]
            if mine_cpu and theirs_cpu:
                text += f", hub CPU: {theirs_cpu / mine_cpu:.2f}x"
            print(text)
    print(f"reference: the original backend took ~{REFERENCE_S} s for 100 concurrent requests")
    print(f"(client machine: {os.cpu_count()} CPUs; a local hub and PostgreSQL share them)")


async def audited(target: Target) -> None:
    """After the hub stopped: are all its reads in the audit trail?"""
    if target.database_url is None:
        return
    conn = await asyncpg.connect(target.database_url)
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE session_id = $1 AND action = 'read_tasks'",
            uuid.UUID(target.session_id),
        )
    finally:
        await conn.close()
    verdict = "all audited" if rows == target.reads else "NOT ALL AUDITED"
    print(f"{target.label}: {rows} audit rows for {target.reads} reads: {verdict}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="base URL of a running hub (default: start one)")
    parser.add_argument(
        "--token",
        default=os.environ.get("HUB_TOKEN"),
        help="credential for --url (therapist or admin; default $HUB_TOKEN)",
    )
    parser.add_argument(
        "--target",
        default="hub",
        help="comma-separated hubs to start: hub (this checkout) or hub@REF (a commit)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL URL in which to create the benchmark database",
    )
    parser.add_argument("--port", type=int, default=0, help="port for the hub (default: free)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--limit", type=int, help="tasks per GET answer (default: all)")
    parser.add_argument(
        "--pool",
        choices=["shared", "per-connection", "raw"],
        default="shared",
        help="httpx: one client with all connections, or one client per connection; raw: a"
        " minimal HTTP/1.1 client per connection (the least client CPU)",
    )
    args = parser.parse_args()

    if args.url:
        targets = [Target(args.url, args.url.rstrip("/"), args.token)]
        print(f"hub {args.url}: {args.concurrency} concurrent requests per batch, {args.pool} pool")
        for number in range(1, args.rounds + 1):
            await run_round(targets[0], number, args.concurrency, args.pool, args.limit)
        summary(targets, args.rounds)
        return
    labels = [label.strip() for label in args.target.split(",") if label.strip()]
    if not labels or any(label != "hub" and not label.startswith("hub@") for label in labels):
        raise SystemExit("--target: hub or hub@REF, comma-separated")
    targets = [Target(label) for label in labels]
    async with contextlib.AsyncExitStack() as stack:
        for target in targets:
            root = ROOT
            if target.label.startswith("hub@"):
                root = stack.enter_context(checkout(target.label.removeprefix("hub@")))
            target.database_url = await stack.enter_async_context(fresh_database(args.admin_url))
            # Unwound after the hub has stopped (gracefully) and before its database is dropped.
            await stack.enter_async_context(_audit_check(target))
            port = args.port if args.port and len(targets) == 1 else free_port()
            pids: list[int] = []
            target.base, target.token = await stack.enter_async_context(
                hub_process(target.database_url, port, root=root, pids=pids)
            )
            target.pid = pids[0]
            print(f"{target.label}: {target.base}")
        print(f"{args.concurrency} concurrent requests per batch, {args.pool} connection pool")
        # Alternating rounds: a busy moment of the machine falls on every hub alike.
        for number in range(1, args.rounds + 1):
            for target in targets:
                await run_round(target, number, args.concurrency, args.pool, args.limit)
        summary(targets, args.rounds)


@contextlib.asynccontextmanager
async def _audit_check(target: Target) -> AsyncIterator[None]:
    yield
    if target.session_id:
        await audited(target)


if __name__ == "__main__":
    asyncio.run(main())
