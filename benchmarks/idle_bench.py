"""Idle-watcher memory benchmark: N idle protocol 2 watchers on S sessions, hub vs bare uvicorn.

    python benchmarks/idle_bench.py                                  # N=10,000, S=100, 600 s soak
    python benchmarks/idle_bench.py --connections 2000 --soak 30     # a quick one

For each target, in the same run: a fresh server process pinned to CPU 0, its server process
tree's RSS once settled, N WebSocket connections opened, RSS again (per connection = the
difference / N), then `--soak` seconds of nothing but the servers' pings, RSS sampled every
10 s and the server's CPU measured, and at the end a count of the connections still open.
Targets: `hub` (`python -m hub serve` on a fresh database, as livebench starts it; each
connection a joined watcher: `hello` with `"protocol": 2` and a therapist token, `welcome`,
snapshot) and `bare` (uvicorn + Starlette with the hub's flags; the app accepts, then awaits
`receive` until the client leaves). The generator is this one process, pinned to CPU 1.
See benchmarks/README.md. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from livebench.load import Closed, LeanConnection
from livebench.process import Process, free_port, http_json, http_ready
from livebench.report import progress
from livebench.run import with_database
from livebench.targets import VARIANTS, Server, Target

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
FD_SLACK = 200  # descriptors besides the connections: logs, database pool, listening socket
SAMPLE_EVERY_S = 10.0
TARGETS = ("hub", "bare")
BARE_APP = Path(__file__).resolve().parent / "bare_ws_app.py"


# The run --------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    """RLIMIT_NOFILE up to the hard limit, here (the servers started later inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(
            f"RLIMIT_NOFILE hard limit {hard} < {needed} (connections + {FD_SLACK}): raise it"
            " (ulimit -Hn, limits.conf, LimitNOFILE=) or lower --connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def caps_raised(connections: int) -> None:
    """The hub's caps that would refuse this run, raised (the hub process inherits them)."""
    big = str(max(1_000_000, 2 * connections))
    for name in (
        "HUB_MAX_WATCHERS_PER_SESSION",  # 100 watchers per session at the default size
        "HUB_MAX_CONNECTIONS_PER_CLIENT",  # every client comes from 127.0.0.1
        "HUB_MAX_UNAUTHENTICATED_PER_CLIENT",  # sockets between upgrade and hello
        "HUB_MAX_CONNECTIONS",  # 10,000 by default: exactly N, no room for the rest
    ):
        os.environ[name] = big


class Idle:
    """One idle connection: whether a snapshot came after `welcome`, and how it ended."""

    def __init__(self) -> None:
        self.conn: LeanConnection | None = None
        self.messages = 0

    def on_message(self, raw: bytes, received: float) -> None:
        self.messages += 1  # the hub's snapshot (then presence, if anything)


async def open_bare(port: int, idle: Idle) -> None:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: LeanConnection("127.0.0.1", port, "/ws/idle", idle.on_message), "127.0.0.1", port
    )
    idle.conn = conn
    await asyncio.wait_for(conn.opened, 60)
    conn.welcomed.set_result(None)  # nothing to say hello to: messages go to on_message


async def open_all(
    target: str, port: int, paths: list[str], hello: str, concurrency: int
) -> tuple[list[Idle], int]:
    """Every connection, `concurrency` at a time; (those open, how many failed)."""
    gate = asyncio.Semaphore(concurrency)
    idles = [Idle() for _ in paths]
    failures: list[str] = []
    done = [0]

    async def one(idle: Idle, path: str) -> None:
        async with gate:
            try:
                if target == "bare":
                    await open_bare(port, idle)
                else:
                    idle.conn = await LeanConnection.open(
                        "127.0.0.1", port, path, hello, idle.on_message
                    )
            except (OSError, Closed, TimeoutError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return
        done[0] += 1
        if done[0] % 1000 == 0:
            progress(f"  {done[0]} open")

    await asyncio.gather(*(one(i, p) for i, p in zip(idles, paths, strict=True)))
    if failures:
        progress(f"  ! {len(failures)} connections failed, first: {failures[0]}")
    return [i for i in idles if i.conn is not None and not i.conn.closed], len(failures)


async def settle(process: Any, seconds: float) -> int:
    """RSS once it stops moving (at most `seconds`): the smaller of two reads 1 s apart."""
    await asyncio.sleep(seconds)
    first = process.rss()
    await asyncio.sleep(1.0)
    return min(first, process.rss())


async def measure(target: str, args: argparse.Namespace) -> dict[str, Any]:
    n, cpus = args.connections, None if args.no_pin else "0"
    server: Server | None = None
    bare: Process | None = None
    admin = database = None
    idles: list[Idle] = []
    try:
        if target == "hub":
            database = f"bench_{secrets.token_hex(5)}"
            admin = await asyncpg.connect(args.database_url)
            await admin.execute(f'CREATE DATABASE "{database}"')
            url = with_database(args.database_url, database)
            server = Server(Target("hub-p2", VARIANTS["hub-p2"]), url, cpus, watcher_protocol=2)
            await server.start()
            progress(f"  {server.describe()}, database {database}")
            session_ids = [uuid.uuid4() for _ in range(args.sessions)]
            db = await asyncpg.connect(url)
            try:
                await db.execute(
                    "INSERT INTO sessions (id, child_name, created_at)"
                    " SELECT id, 'Bench child', now() FROM unnest($1::uuid[]) AS id",
                    session_ids,
                )
            finally:
                await db.close()
            tree: Any = server
            port, hello = server.watch_port, server.hello("watcher", session_ids[0])
            paths = [f"/ws/sessions/{session_ids[i % len(session_ids)]}/watch" for i in range(n)]
        else:
            port = free_port()
            command = [sys.executable, str(BARE_APP), "--port", str(port)]
            bare = Process("bare", command, port, cpus)
            await bare.wait_ready(http_ready)
            progress(f"  bare pid {bare.proc.pid} port {port}")
            tree, hello, paths = bare, "", ["/ws/idle"] * n
        load_start = os.getloadavg()
        before = await settle(tree, args.settle)
        started = time.monotonic()
        idles, failed = await open_all(target, port, paths, hello, args.connect_concurrency)
        connect_s = time.monotonic() - started
        progress(f"  {len(idles)} open in {connect_s:.0f}s; settling {args.settle:g}s")
        after = await settle(tree, args.settle)
        samples, cpu_pct, load = await soak(tree, args.soak)
        still = [i for i in idles if not i.conn.closed]  # type: ignore[union-attr]
        server_count = await server_open(target, server, bare)
        snapshots = sum(1 for i in idles if i.messages > 0)
        first = samples[0]
        drift = max(abs(rss - first) for rss in samples) / first * 100
        return {
            "target": target,
            "connections": len(idles),
            "failed": failed,
            "connect_s": connect_s,
            "rss_before": before,
            "rss_after": after,
            "per_connection_kb": (after - before) / max(len(idles), 1) / 1024,
            "end_kb": (samples[-1] - before) / max(len(idles), 1) / 1024,
            "soak_s": args.soak,
            "rss_samples": samples,
            "drift_pct": drift,
            "cpu_pct": cpu_pct,
            "load_avg_start": load_start,
            "load_avg": load,
            "open_at_end_client": len(still),
            "open_at_end_server": server_count,
            "snapshots": snapshots if target == "hub" else None,
            "closes": sorted({str(i.conn.close_code) for i in idles if i.conn.closed}),  # type: ignore[union-attr]
        }
    finally:
        for idle in idles:
            if idle.conn is not None:
                idle.conn.abort()
        if server is not None:
            await asyncio.to_thread(server.stop)
            server.log_warnings()
        if bare is not None:
            bare.terminate()
            await asyncio.to_thread(bare.wait)
            with contextlib.suppress(OSError):
                os.unlink(bare.log.name)
        if admin is not None:
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()


async def soak(tree: Any, seconds: float) -> tuple[list[int], float, tuple[float, ...]]:
    """RSS every 10 s for `seconds` (the first right away), the server's CPU % over it, and
    the machine's load average at the end."""
    loop = asyncio.get_running_loop()
    start, cpu0 = loop.time(), cpu_seconds(tree)
    samples = []
    k = 0
    while True:
        samples.append(tree.rss())
        k += 1
        due = start + k * SAMPLE_EVERY_S
        if due > start + seconds:
            break
        await asyncio.sleep(due - loop.time())
        if k % 6 == 0:
            progress(f"  soak {k * SAMPLE_EVERY_S:.0f}s: RSS {samples[-1] / 2**20:.1f} MB")
    await asyncio.sleep(max(0.0, start + seconds - loop.time()))
    samples.append(tree.rss())
    cpu = (cpu_seconds(tree) - cpu0) / max(loop.time() - start, 1e-9) * 100
    return samples, cpu, os.getloadavg()


def cpu_seconds(tree: Any) -> float:
    return sum(tree.cpu_seconds()) if isinstance(tree, Server) else tree.cpu_seconds()


async def server_open(target: str, server: Server | None, bare: Process | None) -> int | None:
    """How many connections the server says are open: the hub's watchers, bare's sockets."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        if server is not None:
            return sum(int(h["watchers"]) for h in await server.health())
        if bare is not None:
            url = f"http://127.0.0.1:{bare.port}/health"
            return int((await asyncio.to_thread(http_json, url))["open"])
    return None


# The report -----------------------------------------------------------------------------


def table(results: dict[str, dict[str, Any]]) -> str:
    names = [t for t in TARGETS if t in results]
    ratio = "hub" in results and "bare" in results
    mb = 2**20

    def row(label: str, key: Any, fmt: str, ratio_ok: bool = True) -> str:
        values = [key(results[t]) for t in names]
        cells = "".join(f"{format(v, fmt):>14}" if v is not None else f"{'-':>14}" for v in values)
        tail = ""
        if ratio and ratio_ok and values[-1]:
            tail = f"{values[0] / values[-1]:>12.2f}x"
        return f"{label:<38}{cells}{tail}"

    head = f"{'':<38}" + "".join(f"{t:>14}" for t in names) + (f"{'hub/bare':>13}" if ratio else "")
    lines = [head, "-" * len(head)]
    lines.append(row("connections open (after connect)", lambda r: r["connections"], ",d", False))
    lines.append(row("connect time s", lambda r: r["connect_s"], ".1f", False))
    lines.append(row("RSS before MB", lambda r: r["rss_before"] / mb, ".1f"))
    lines.append(row("RSS after MB", lambda r: r["rss_after"] / mb, ".1f"))
    lines.append(row("RSS per connection KB", lambda r: r["per_connection_kb"], ".1f"))
    lines.append(row("soak RSS first MB", lambda r: r["rss_samples"][0] / mb, ".1f", False))
    lines.append(row("soak RSS min MB", lambda r: min(r["rss_samples"]) / mb, ".1f", False))
    lines.append(row("soak RSS max MB", lambda r: max(r["rss_samples"]) / mb, ".1f", False))
    lines.append(row("soak RSS last MB", lambda r: r["rss_samples"][-1] / mb, ".1f", False))
    lines.append(row("soak drift (max |x - first|) %", lambda r: r["drift_pct"], ".2f", False))
    lines.append(row("RSS per connection at soak end KB", lambda r: r["end_kb"], ".1f"))
    lines.append(row("server CPU during soak %", lambda r: r["cpu_pct"], ".2f"))
    lines.append(row("open at end (client side)", lambda r: r["open_at_end_client"], ",d", False))
    lines.append(row("open at end (server says)", lambda r: r["open_at_end_server"], ",d", False))
    lines.append(row("watchers that got a snapshot", lambda r: r["snapshots"], ",d", False))
    load = lambda r: f"{r['load_avg_start'][0]:.2f} / {r['load_avg'][0]:.2f}"  # noqa: E731
    lines.append(row("load average (1 min) start / end", load, "", False))
    verdicts = []
    for name in names:
        r = results[name]
        kb, flat = r["per_connection_kb"], r["drift_pct"] <= 5
        all_open = r["open_at_end_client"] == r["connections"] and not r["failed"]
        drift = r["drift_pct"]
        verdicts.append(f"{name}: {kb:.1f} KB/conn, drift {drift:.1f} %, all open: {all_open}")
        if name == "hub":
            ok = kb <= 30 and flat and all_open
            verdicts.append(f"target: hub <= 30 KB/conn, flat +-5 %: {'met' if ok else 'MISSED'}")
    return "\n".join(lines + verdicts)


async def main(args: argparse.Namespace) -> int:
    limit = raise_fd_limit(args.connections + FD_SLACK)
    caps_raised(args.connections)
    progress(
        f"RLIMIT_NOFILE {limit}; N={args.connections} on {args.sessions} sessions; soak"
        f" {args.soak:g}s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    results: dict[str, dict[str, Any]] = {}
    for target in args.target.split(","):
        progress(f"{target}: …")
        results[target] = await measure(target, args)
    print(
        f"idle watchers: N={args.connections} on {args.sessions} sessions (hub: protocol 2),"
        f" soak {args.soak:g}s; server on CPU 0, generator on CPU 1; {os.cpu_count()} CPUs;"
        f" Python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(table(results))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(results, indent=1))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="N (default 10,000)")
    parser.add_argument("--sessions", type=int, default=100, help="hub sessions (default 100)")
    parser.add_argument("--soak", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each RSS read")
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--target", default="hub,bare", help="hub, bare or both (default)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--no-pin", action="store_true", help="no taskset / affinity")
    parser.add_argument("--json", help="every figure, raw, into this file")
    args = parser.parse_args(argv)
    for name in args.target.split(","):
        if name not in TARGETS:
            parser.error(f"unknown target {name!r} (hub, bare)")
    return args


if __name__ == "__main__":
    arguments = parse()
    if not arguments.no_pin:
        os.sched_setaffinity(0, {1})
    raise SystemExit(uvloop.run(main(arguments)))
