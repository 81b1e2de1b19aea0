"""Live-path benchmark: S mirrors at R Hz, W watchers each, for T seconds, hub vs baseline.

    python benchmarks/live_bench.py clinic            # S=50, R=30, W=2, T=20
    python benchmarks/live_bench.py max               # raise S until p99 > 250 ms or a loss
    python benchmarks/live_bench.py all               # both, hub and baseline (~6-9 min)
    python benchmarks/live_bench.py scaleout          # both, one hub process vs two (~10 min)
    python benchmarks/live_bench.py clinic --target hub --sessions 100 --seconds 10
    python benchmarks/live_bench.py clinic --target hub-redis
    python benchmarks/live_bench.py clinic --target hub,hub@HEAD~5 --seconds 20
    python benchmarks/live_bench.py clinic --target hub-p2,hub,hub@HEAD~5   # protocol 2 watchers
    python benchmarks/live_bench.py max --target hub --watcher-protocol 2
    python benchmarks/live_bench.py lobby --target hub --watcher-protocol 2   # + 20 lobbies
    python benchmarks/live_bench.py max --target hub,fanout   # against a fan-out storing nothing

Every run starts a fresh server process (`hub serve`, or benchmarks/baseline_app.py: one
transaction per frame before broadcasting, or with `fanout` none at all) on a fresh database
`bench_<random>` created on --database-url's server and dropped afterwards. The targets
hub-postgres and hub-redis start two hub processes instead, joined by that backplane
(HUB_BACKPLANE; hub-redis also starts a redis-server): mirrors connect to process A, watchers
to process B, so every delivery crosses the backplane. `hub@REF` (or `hub-redis@REF` …) runs
the hub of commit REF, exported with git archive, beside this checkout's. The server (every
process of it) is pinned to one core (`taskset -c 0`), this load generator to the other (`-c
1`): one process, asyncio + uvloop, WebSocket clients without compression. Mirrors send metric
frames on an absolute schedule (no drift) with their send time (time.time()) in `ts`; watchers
take latency = receive time - ts. See benchmarks/README.md for what each figure means. This
is a benchmark, not a test.

This file is the command line; the benchmark itself is the package livebench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import uvloop
from livebench.load import CLIENTS
from livebench.report import describe_setup, progress, scale_out_note, to_json
from livebench.scenarios import MAX_STEPS, RUNS, SCENARIOS
from livebench.targets import DEFAULT_TARGETS, SCALEOUT_TARGETS, TARGETS, resolved, split_target

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def main(args: argparse.Namespace) -> int:
    names = args.target or (SCALEOUT_TARGETS if args.scenario == "scaleout" else DEFAULT_TARGETS)
    with resolved(names) as targets:
        print(describe_setup(args, targets))
        if any(t.variant.processes > 1 for t in targets):
            print(scale_out_note(args))
        out: dict[str, Any] = {}
        started = time.monotonic()
        for name in RUNS[args.scenario]:
            out[name] = await SCENARIOS[name](args, targets)
    progress(f"done in {time.monotonic() - started:.0f}s")
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(to_json(out), indent=1))
    return 0


def parse_targets(text: str) -> tuple[str, ...]:
    if text == "both":
        return DEFAULT_TARGETS
    targets = tuple(t.strip() for t in text.split(","))
    for target in targets:
        try:
            split_target(target)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Mirror Hub live-path benchmark: hub vs one-transaction-per-frame baseline,"
        " and one hub process vs two joined by a backplane (scaleout)."
    )
    parser.add_argument(
        "scenario",
        choices=list(RUNS),
        help="all: clinic then max; scaleout: the same for hub, hub-postgres and hub-redis",
    )
    parser.add_argument("--sessions", type=int, help="S (clinic: 50; max: the largest step)")
    parser.add_argument("--rate", type=float, help="R, frames/s per mirror (30)")
    parser.add_argument("--watchers", type=int, help="W, watchers per session (2)")
    parser.add_argument("--seconds", type=float, help="T, seconds of sending (clinic 20, max 10)")
    parser.add_argument("--drain", type=float, help="seconds allowed after T for stragglers")
    parser.add_argument(
        "--watcher-protocol",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: every hub target's watchers speak protocol 2 (frames in batches; the"
        " baseline and hubs of older commits that do not speak it need 1); hub-p2 always does",
    )
    parser.add_argument(
        "--watcher-max-delay-ms",
        type=int,
        default=0,
        help="protocol 2 watchers ask for this batching delay (max_delay_ms in hello)",
    )
    parser.add_argument(
        "--target",
        type=parse_targets,
        help=f"one of {', '.join(TARGETS)}, a comma-separated list of them, or both (hub and"
        " baseline: the default of clinic, max and all; scaleout's is hub,hub-postgres,hub-redis);"
        " a hub target with @REF (hub@HEAD~5) runs the hub of git commit REF",
    )
    parser.add_argument("--lobbies", type=int, default=20, help="lobby: /ws/watch connections")
    parser.add_argument("--overview-hz", type=int, default=4, help="lobby: overview_hz")
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
