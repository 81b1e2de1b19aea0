"""One run of one target at one load: a fresh database, a fresh server, the generator's
connections, T seconds of sending, the drain, and every figure measured on the way: latency,
CPU of the server, of PostgreSQL's backends, of this generator and of everyone else on the
machine, memory, what the server logged. The database is dropped whatever happens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import asyncpg
import psutil

from .load import Generator
from .lobby import Lobbies
from .process import Process, file_safe
from .report import progress, report_log_warnings
from .results import Load, Result
from .targets import Server, Target
from .verify import tally


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


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


async def run_once(
    target: Target, load: Load, args: argparse.Namespace, lobbies: Lobbies | None = None
) -> Result:
    """One run: fresh database, fresh server process(es), connect, stream, drain, measure.
    `lobbies`: `/ws/watch` overview connections on every session besides (scenario lobby)."""
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
        server = Server(
            target, url, args.server_cpus, args.watcher_protocol, args.watcher_max_delay_ms
        )
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
            if lobbies is not None:
                hello = server.hello("watcher", session_ids[0])
                await lobbies.open(server.watch_port, hello, session_ids, generator.sent())
            result = await measure(
                target.name, load, server, generator, database, profile, args.py_spy_native
            )
            result.stored = await db.fetchval("SELECT count(*) FROM frames")
            result.stores = server.variant.stores
            health = await server.health()
            # (A hub of an older commit may not report these yet.)
            if health and all("buffer_peak_frames" in h for h in health):
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
            if lobbies is not None:
                await lobbies.close()
            if generator is not None:
                await generator.close()
            if server is not None:
                await asyncio.to_thread(server.stop)
                report_log_warnings(server.log_warnings(), result)
        finally:  # the database goes whatever happened above
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()


def start_profiler(
    process: Process, load: Load, prefix: str, native: bool
) -> subprocess.Popen[bytes]:
    """py-spy on one server process for the sending window: collapsed stacks, one line per
    stack. With `native`, C frames too (libc write, the GC …); py-spy then pauses the process
    for each sample, so it samples less often."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = f"{prefix}-{file_safe(process.name)}-S{load.sessions}.txt"
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
    books = tally(g.sent(), g.received())
    latencies = sorted(g.latencies)
    lags = sorted(g.send_lags)
    acks = sorted(g.ack_latencies)
    first_send = wall0 + 0.2
    deliveries = books.deliveries
    return Result(
        target=target,
        load=load,
        sent=books.sent,
        offered_per_s=books.sent / max(send_end - start, 1e-9),
        deliveries=deliveries,
        expected_deliveries=books.sent * load.watchers,
        delivered_per_s=deliveries / max(g.last_delivery - first_send, 1e-9) if deliveries else 0,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else float("nan"),
        ack_p50_ms=percentile(acks, 0.50) * 1000,
        ack_p99_ms=percentile(acks, 0.99) * 1000,
        lost=books.lost,
        duplicates=books.duplicates,
        out_of_order=books.out_of_order,
        behind_s=behind,
        drain_s=drain,
        acked=books.acked,
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
