"""The scenarios: `clinic` (one load, every target side by side) and `max` (raise S step by
step until a run fails); `all` and `scaleout` run both. A scenario builds its Load from the
command line, runs each target (run.py) and prints its tables (report.py)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

from .lobby import Lobbies
from .report import (
    describe,
    pin_note,
    print_comparison,
    print_max_side_by_side,
    print_steps,
    progress,
)
from .results import Load, Result
from .run import run_once
from .targets import Target
from .verify import failures

MAX_STEPS = (10, 25, 50, 100, 200, 300, 400, 500, 600, 800, 1000)


def load_from(args: argparse.Namespace, sessions: int, seconds: float, min_drain: float) -> Load:
    """The load of a run: S and T as the scenario says, R, W and the drain as the command line
    says or else the defaults (the drain: T, at least `min_drain`)."""
    return Load(
        sessions=sessions,
        rate=args.rate or 30.0,
        watchers=args.watchers if args.watchers is not None else 2,
        seconds=seconds,
        drain=args.drain if args.drain is not None else max(min_drain, seconds),
    )


async def scenario_clinic(args: argparse.Namespace, targets: list[Target]) -> dict[str, Result]:
    load = load_from(args, args.sessions or 50, args.seconds or 20.0, min_drain=10.0)
    results: dict[str, Result] = {}
    for target in targets:
        progress(
            f"clinic: {target.name}, S={load.sessions} R={load.rate:g} W={load.watchers}"
            f" T={load.seconds:g}s …"
        )
        results[target.name] = r = await run_once(target, load, args)
        progress(f"  {describe(r)}")
    print_comparison(
        f"clinic: S={load.sessions} mirrors x R={load.rate:g} Hz, W={load.watchers} watchers"
        f" each, T={load.seconds:g} s{pin_note(args, targets)}",
        results,
    )
    if "hub" in results:
        ok = results["hub"].p99_ms < 20 and not failures(results["hub"])
        print(f"target: hub p99 < 20 ms with nothing lost: {'met' if ok else 'MISSED'}")
    return results


async def scenario_max(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    steps = [int(s) for s in args.steps.split(",")] if args.steps else list(MAX_STEPS)
    if args.sessions:
        steps = [s for s in steps if s <= args.sessions]
    summary: dict[str, Any] = {}
    for target in targets:
        results: list[Result] = []
        best: int | None = None
        limited = False
        for sessions in steps:
            load = load_from(args, sessions, args.seconds or 10.0, min_drain=5.0)
            progress(f"max: {target.name}, S={sessions} …")
            r = await run_once(target, load, args)
            results.append(r)
            progress(f"  {describe(r)}")
            if failures(r):
                break
            if r.generator_limited:
                limited = True  # the server kept up, but this generator could not load it more
                break
            best = sessions
        print_steps(target.name, results)
        more = " (stopped: the load generator, not the server, was the limit)" if limited else ""
        print(f"largest passing S for {target.name}: {best if best is not None else 'none'}{more}")
        summary[target.name] = {"best": best, "steps": results, "generator_limited": limited}
    if len(summary) > 1:
        print_max_side_by_side(summary)
    if "hub" in summary:
        best = summary["hub"]["best"] or 0
        print(
            f"target: hub max >= 200 sessions (aim 400+): {'met' if best >= 200 else 'MISSED'}"
            f" ({best})"
        )
    return summary


async def scenario_lobby(args: argparse.Namespace, targets: list[Target]) -> dict[str, Any]:
    """S sessions x R Hz with W full watchers each, plus 20 `/ws/watch` connections each
    subscribed to every session in overview mode (4 Hz): the hub's CPU and the overviews'
    staleness. The baselines (no `/ws/watch`) and scaled-out hubs are skipped; a `hub@REF`
    runs (its commit must have `/ws/watch`), to compare two versions in one run."""
    load = load_from(args, args.sessions or 100, args.seconds or 20.0, min_drain=10.0)
    if args.watchers is None:
        load.watchers = 1
    summary: dict[str, Any] = {}
    for target in targets:
        if target.variant.app != "hub" or target.variant.processes > 1:
            progress(f"lobby: {target.name} is not one hub process; skipped")
            continue
        lobbies = Lobbies(args.lobbies, args.overview_hz)
        progress(
            f"lobby: {target.name}, S={load.sessions} R={load.rate:g} W={load.watchers}"
            f" + {lobbies.count} lobbies x {load.sessions} overviews at {lobbies.hz} Hz …"
        )
        r = await run_once(target, load, args, lobbies)
        progress(f"  {describe(r)}")
        limit_ms = 2000 / lobbies.hz
        p99 = lobbies.p99_ms()
        print(
            f"lobby ({target.name}): hub CPU {r.server_cpu_util:.2f} s/s; full watchers p99"
            f" {r.p99_ms:.1f} ms, lost {r.lost}; overview updates {lobbies.updates}"
            f" ({lobbies.updates / max(r.wall_s, 1e-9):.0f}/s), errors {lobbies.errors};"
            f" staleness p99 {p99:.0f} ms (target <= {limit_ms:.0f} ms:"
            f" {'n/a' if not lobbies.count else 'met' if p99 <= limit_ms else 'MISSED'})"
        )
        summary[target.name] = {"result": r, "staleness_p99_ms": p99, "updates": lobbies.updates}
    return summary


Scenario = Callable[[argparse.Namespace, list[Target]], Awaitable[Any]]
SCENARIOS: dict[str, Scenario] = {
    "clinic": scenario_clinic,
    "max": scenario_max,
    "lobby": scenario_lobby,
}
# What each name on the command line runs, in order.
RUNS: dict[str, tuple[str, ...]] = {
    "clinic": ("clinic",),
    "max": ("max",),
    "lobby": ("lobby",),
    "all": ("clinic", "max"),
    "scaleout": ("clinic", "max"),
}
