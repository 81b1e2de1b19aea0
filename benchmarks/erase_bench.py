"""Erasure of a very long session: how long `DELETE /sessions/{id}` takes.

Starts a real hub (`python -m hub serve`, with its default HUB_DB_STATEMENT_TIMEOUT_S) on a
fresh database, as http_bench.py does, creates a session over HTTP and fills it directly in
PostgreSQL, each table with one INSERT … SELECT generate_series: --minutes * 60 * --rate
metric frames of a heavy payload (20 metric values and a pose of 33 landmarks; 324,000 of them
take about 900 MB), 50 tasks with 20 metric rows each, and 1,000 audit entries naming the
session. Then it times the DELETE. The erasure runs in one transaction whose slowest statement
(the session's DELETE, cascading to its frames) must finish within the statement timeout: an
answer of 503 means the default cuts such an erasure short.

    python benchmarks/erase_bench.py                  # 180 minutes at 30 frames/s: 324,000
    python benchmarks/erase_bench.py --minutes 600
    python benchmarks/erase_bench.py --admin-url postgresql://postgres@db:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg
import httpx
from http_bench import DEFAULT_ADMIN_URL, free_port, fresh_database, hub_process

FILL = [
    "INSERT INTO tasks (id, session_id, task_name, status) "
    "SELECT gen_random_uuid(), $1, 'task_' || g, 'success' FROM generate_series(1, 50) g",
    "INSERT INTO metrics (task_id, name, value) "
    "SELECT t.id, 'metric_' || g, random() FROM tasks t, generate_series(1, 20) g "
    "WHERE t.session_id = $1",
    "INSERT INTO audit_log (actor, role, action, session_id) "
    "SELECT 'bench', 'therapist', 'read_session', $1 FROM generate_series(1, 1000)",
]
FRAMES = """
INSERT INTO frames (session_id, seq, kind, device_ts, received_at, payload)
SELECT $1, g, 'metrics', extract(epoch FROM now()) + g / $3::float8,
       now() + make_interval(secs => g / $3::float8),
       jsonb_build_object(
           'values', (SELECT jsonb_object_agg('metric_' || m, random())
                      FROM generate_series(1, 20) m WHERE g > 0),
           'pose', (SELECT jsonb_agg(jsonb_build_array(random(), random(), random(), random()))
                    FROM generate_series(1, 33) k WHERE g > 0))
FROM generate_series(1, $2) g
"""


async def run(admin_url: str, minutes: int, rate: int) -> None:
    frames = minutes * 60 * rate
    async with (
        fresh_database(admin_url) as database_url,
        hub_process(database_url, free_port(), role="admin") as (base, token),
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http,
    ):
        created = await http.post("/sessions", json={"child_name": "Bench", "child_age": 7})
        created.raise_for_status()
        session_id = created.json()["id"]
        conn = await asyncpg.connect(database_url)
        try:
            started = time.perf_counter()
            await conn.execute(FRAMES, session_id, frames, rate)
            for statement in FILL:
                await conn.execute(statement, session_id)
            await conn.execute("VACUUM ANALYZE")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('frames'))")
            print(f"filled {frames} frames ({size}) in {time.perf_counter() - started:.1f} s")
        finally:
            await conn.close()
        started = time.perf_counter()
        answer = await http.delete(f"/sessions/{session_id}", timeout=600)
        took = time.perf_counter() - started
        print(
            f"DELETE /sessions/{{id}} of {minutes} min at {rate}/s: {answer.status_code} "
            f"in {took:.2f} s"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="PostgreSQL URL in which to create the benchmark database",
    )
    parser.add_argument("--minutes", type=int, default=180, help="length of the session")
    parser.add_argument("--rate", type=int, default=30, help="frames per second")
    args = parser.parse_args()
    await run(args.admin_url, args.minutes, args.rate)


if __name__ == "__main__":
    asyncio.run(main())
