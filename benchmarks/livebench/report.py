"""What the benchmark prints: progress on stderr, the tables on stdout (clinic: the targets
side by side, with each one's figure over the hub's; max: one table of steps per target, then
all of them side by side), the setup line, and every figure as JSON."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from . import ROOT
from .results import Load, Result
from .targets import Target, ordered
from .verify import failures


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def process_shares(r: Result) -> str:
    """Each hub process's CPU, in % of one core: "A/B"."""
    return "/".join(fmt(u * 100, 0) for u in r.process_utils)


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
    Row("stored / sent", lambda r: r.stored_text()),
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
    targets = ordered(results)
    width = {t: max(16, len(t) + 2) for t in targets}  # 16 unless a name@REF is longer
    # Every other target against the single-process hub: how many times its figure.
    compared = [t for t in targets if t != "hub"] if "hub" in results else []
    widths = [max(14, len(t) + 6) for t in compared]
    header = f"{'':34}" + "".join(f"{t:>{width[t]}}" for t in targets)
    header += "".join(f"{t + '/hub':>{w}}" for t, w in zip(compared, widths, strict=True))
    print(header)
    print("-" * len(header))
    for row in shown(ROWS, results.values()):
        line = f"{row.name:34}" + "".join(f"{row.show(results[t]):>{width[t]}}" for t in targets)
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
    Column("stored/sent", 15, lambda r: r.stored_text()),
    Column("acked", 8, lambda r: str(r.acked == r.sent)),
    Column("CPU/1k", 7, lambda r: fmt(r.cpu_per_1000, 3)),
    Column("CPU%", 5, lambda r: fmt(r.server_cpu_util * 100, 0)),
    Column("A/B CPU%", 9, process_shares, scaled_out),
    Column("redis%", 6, lambda r: fmt(r.redis_cpu_util * 100, 0), with_redis),
    Column("PG%", 4, lambda r: fmt(r.db_cpu_util * 100, 0), scaled_out),
    Column("RSS MB", 7, lambda r: fmt(r.peak_rss_mb, 0)),
    Column("gen%", 5, lambda r: fmt(r.gen_cpu_util * 100, 0)),
    Column("other%", 6, lambda r: fmt(r.other_cpu_util * 100, 0)),
]


def verdict(r: Result, short: bool = False) -> str:
    found = failures(r)
    if short:
        return "FAIL" if found else "gen-limited" if r.generator_limited else "pass"
    text = "pass" if not found else "FAIL: " + ", ".join(found)
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
    targets = ordered(summary)
    widths = [max(26, len(t) + 2) for t in targets]
    steps = {t: {r.load.sessions: r for r in summary[t]["steps"]} for t in targets}
    sessions = sorted({s for by_s in steps.values() for s in by_s})
    print("\nmax, side by side: latency p99 ms / server CPU s per 1000 deliveries / verdict")
    header = f"{'S':>5}" + "".join(f"{t:>{w}}" for t, w in zip(targets, widths, strict=True))
    print(header)
    print("-" * len(header))
    for s in sessions:
        line = f"{s:>5}"
        for t, w in zip(targets, widths, strict=True):
            r = steps[t].get(s)
            cell = "" if r is None else f"{fmt(r.p99_ms, 1)} / {fmt(r.cpu_per_1000, 3)} / "
            line += f"{cell + (verdict(r, short=True) if r else ''):>{w}}"
        print(line)
    best = [f"{summary[t]['best'] or 'none'!s:>{w}}" for t, w in zip(targets, widths, strict=True)]
    print(f"{'best':>5}" + "".join(best))


def describe(r: Result) -> str:
    """A run in one progress line."""
    text = (
        f"p50 {fmt(r.p50_ms, 2)} ms, p99 {fmt(r.p99_ms, 2)} ms, lost {r.lost},"
        f" stored {r.stored_text()}, CPU {fmt(r.server_cpu_util * 100, 0)}%,"
        f" gen {fmt(r.gen_cpu_util * 100, 0)}%"
    )
    if scaled_out(r):
        text += f", A/B {process_shares(r)}%, PostgreSQL {fmt(r.db_cpu_util * 100, 0)}%"
    if with_redis(r):
        text += f", redis-server {fmt(r.redis_cpu_util * 100, 0)}%"
    if r.closes:
        text += f", server closed {r.closes_text()}"
    return text


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


def pin_note(args: argparse.Namespace, targets: Iterable[Target]) -> str:
    if args.server_cpus is None:
        return " (unpinned)"
    shared = ""
    if any(t.variant.processes > 1 for t in targets):
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


def describe_setup(args: argparse.Namespace, targets: Iterable[Target]) -> str:
    """The first line of the report: this checkout's commit and the machine; then, for every
    `@REF` target, the commit it runs."""
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = "?"
    text = (
        f"hub {rev or '?'}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]};"
        f" client {args.client}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    if getattr(args, "watcher_protocol", 1) == 2:
        text += "\nwatchers of every hub target speak protocol 2 (frames in batches)"
    if getattr(args, "watcher_max_delay_ms", 0):
        text += f"\nprotocol 2 watchers ask for max_delay_ms {args.watcher_max_delay_ms}"
    for t in targets:
        if t.commit is not None:
            text += f"\n{t.name}: commit {t.commit[:12]}, exported and run by the same interpreter"
    return text


def to_json(value: Any) -> Any:
    if isinstance(value, Result | Load):
        return {k: to_json(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value
