"""CSV export of a very long session: wall time, and the hub's memory during the export.

Starts a real hub (`python -m hub serve`) on a fresh database, as http_bench.py does, creates
a session over HTTP and fills it directly in PostgreSQL with --frames metric frames (three
metric values each, as the simulator sends: accuracy, stability, max_angle), then downloads
`GET /sessions/{id}/frames.csv` as fast as it can while sampling the hub process's resident
memory every 10 ms. A bounded export keeps the peak near the level before the export, however
many frames the session has; an export built in memory would grow by about the CSV's size.

    python benchmarks/export_bench.py                   # 1,000,000 frames
    python benchmarks/export_bench.py --frames 3000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg
import httpx
import psutil
from http_bench import DEFAULT_ADMIN_URL, free_port, fresh_database, hub_process

FRAMES = """
INSERT INTO frames (session_id, seq, kind, device_ts, received_at, payload)
SELECT $1, g, 'metrics', extract(epoch FROM now()) + g / 30.0,
       now() + make_interval(secs => g / 30.0),
       jsonb_build_object(
           'type', 'metrics', 'seq', g, 'ts', extract(epoch FROM now()) + g / 30.0,
           'values', jsonb_build_object('accuracy', round(random()::numeric, 4),
                                        'stability', round(random()::numeric, 4),
                                        'max_angle', round((90 + 90 * random())::numeric, 1)))
FROM generate_series(1, $2) g
"""
MB = 1024 * 1024


def hub_server_process(port: int) -> psutil.Process:
    """The child `hub serve` process listening on `port` (one process: no --workers)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if any(c.laddr.port == port for c in child.net_connections(kind="tcp")):
                return child
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    raise RuntimeError(f"no child process listens on port {port}")


async def sample_rss(process: psutil.Process, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        try:
            await asyncio.wait_for(stop.wait(), 0.01)
        except TimeoutError:
            pass


async def run(admin_url: str, frames: int) -> None:
    port = free_port()
    async with (
        fresh_database(admin_url) as database_url,
        hub_process(database_url, port, role="admin") as (base, token),
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http,
    ):
        created = await http.post("/sessions", json={"child_name": "Bench", "child_ref": "b-1"})
        created.raise_for_status()
        session_id = created.json()["id"]
        conn = await asyncpg.connect(database_url)
        try:
            started = time.perf_counter()
            await conn.execute(FRAMES, session_id, frames)
            await conn.execute("VACUUM ANALYZE frames")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('frames'))")
            print(f"filled {frames:,} frames ({size}) in {time.perf_counter() - started:.1f} s")
        finally:
            await conn.close()

        hub = hub_server_process(port)
        # One small export first: what any first request loads (code, pools) is not counted.
        (await http.get(f"/sessions/{session_id}/report", timeout=600)).raise_for_status()
        before = hub.memory_info().rss
        peak = [before]
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(hub, peak, stop))
        size_bytes = lines = 0
        started = time.perf_counter()
        async with http.stream("GET", f"/sessions/{session_id}/frames.csv", timeout=600) as r:
            r.raise_for_status()
            async for chunk in r.aiter_raw():
                size_bytes += len(chunk)
                lines += chunk.count(b"\n")
        took = time.perf_counter() - started
        stop.set()
        await sampler
        after = hub.memory_info().rss
        print(
            f"GET /sessions/{{id}}/frames.csv: {lines - 1:,} rows, {size_bytes / MB:.0f} MB "
            f"in {took:.1f} s ({size_bytes / MB / took:.0f} MB/s, {frames / took:,.0f} frames/s)"
        )
        print(
            f"hub RSS: {before / MB:.0f} MB before, peak {peak[0] / MB:.0f} MB during "
            f"(+{(peak[0] - before) / MB:.0f} MB), {after / MB:.0f} MB after"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL URL in which to create the benchmark database",
    )
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames in the session")
    args = parser.parse_args()
    await run(args.admin_url, args.frames)


if __name__ == "__main__":
    asyncio.run(main())
