"""Drive N simulated mirrors against a hub: one session each, realistic tasks and metrics.

    .venv/bin/python client_examples/simulate.py --mirrors 20 --rate 30 --seconds 60

Each mirror creates its session over HTTP, then runs raise_hand → squat → balance (a `started`
event, a mid-task `status` event, metrics at --rate Hz tagged with the task, a `finished`
event with the duration and summary metrics), and finally ends the session. Values drift
smoothly (mean-reverting random walks), like a real pose tracker's. With --watchers N, N
watchers follow each session and check that they saw every frame once, in order. Exits 0 when
every frame of every mirror was acked, every session ended, and no watcher saw a gap, a
duplicate or a missing frame.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import urllib.error
import uuid
from dataclasses import dataclass, field

from mirror_client import HubClosed, MirrorClient, create_session_with_token
from watcher_client import WatcherClient

# Per task: extra metric → (mean, spread, low, high); every task also has accuracy, stability.
TASKS = {
    "raise_hand": {"max_angle": (150.0, 15.0, 0.0, 180.0)},
    "squat": {"knee_angle": (95.0, 20.0, 40.0, 180.0)},
    "balance": {"sway_cm": (2.5, 1.5, 0.0, 15.0)},
}
COMMON = {"accuracy": (0.85, 0.08, 0.0, 1.0), "stability": (0.8, 0.1, 0.0, 1.0)}
NAMES = ["Ada", "Ben", "Chloe", "Dani", "Eli", "Farah", "Gus", "Hana", "Ivo", "Juno"]


@dataclass
class Drift:
    """A mean-reverting random walk (Ornstein-Uhlenbeck): smooth, bounded, never stuck."""

    mean: float
    spread: float
    low: float
    high: float
    value: float = field(init=False)

    def __post_init__(self) -> None:
        self.value = random.gauss(self.mean, self.spread / 2)

    def step(self, dt: float, reversion: float = 0.5) -> float:
        noise = self.spread * math.sqrt(2 * reversion * dt) * random.gauss(0, 1)
        self.value += reversion * (self.mean - self.value) * dt + noise
        self.value = min(self.high, max(self.low, self.value))
        return round(self.value, 4)


async def run_mirror(client: MirrorClient, rate: float, seconds: float) -> None:
    """Produce one session's frames at `rate` Hz; send_* waits when the hub is behind."""
    per_task, dt = seconds / len(TASKS), 1 / rate
    await asyncio.sleep(random.uniform(0, dt))  # do not run every mirror in lockstep
    for name, extra in TASKS.items():
        task_id, drifts = str(uuid.uuid4()), {**COMMON, **extra}
        walks = {metric: Drift(*params) for metric, params in drifts.items()}
        await client.send_task(task_id, name, "started", "in_progress")
        start, history = time.monotonic(), []
        for i in range(max(1, round(per_task * rate))):
            await asyncio.sleep(max(0.0, start + i * dt - time.monotonic()))
            values = {metric: walk.step(dt) for metric, walk in walks.items()}
            history.append(values)
            await client.send_metrics(values, task_id)
            if i == round(per_task * rate / 2):
                await client.send_task(task_id, name, "status", "in_progress", metrics=values)
        summary = {m: round(sum(v[m] for v in history) / len(history), 4) for m in drifts}
        status = "success" if summary["accuracy"] >= 0.7 else "failed"
        duration = round(time.monotonic() - start, 3)
        await client.send_task(task_id, name, "finished", status, duration, summary)


class Progress:
    """sent / acked per second and unacked, one line refreshed in place on a terminal."""

    def __init__(self, clients: list[MirrorClient]) -> None:
        self.clients, self.tty = clients, sys.stdout.isatty()
        self.start = self.last_time = time.monotonic()
        self.last_sent = self.last_acked = 0

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        sent = sum(c.last_seq for c in self.clients)
        acked = sum(c.acked_seq for c in self.clients)
        span = max(now - self.last_time, 1e-9)
        line = (
            f"{now - self.start:6.1f}s  sent {sent} ({(sent - self.last_sent) / span:.0f}/s)"
            f"  acked {acked} ({(acked - self.last_acked) / span:.0f}/s)"
            f"  unacked {sum(c.unacked for c in self.clients)}"
            f"  connected {sum(c.connected.is_set() for c in self.clients)}/{len(self.clients)}"
            f"  reconnects {sum(c.reconnects for c in self.clients)}"
        )
        self.last_time, self.last_sent, self.last_acked = now, sent, acked
        if self.tty:
            print(f"\r\x1b[K{line}", end="\n" if final else "", flush=True)
        else:
            print(line, flush=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.show()


async def main(args: argparse.Namespace) -> int:
    def new_session(i: int) -> tuple[str, str | None]:
        return create_session_with_token(
            args.url,
            f"{random.choice(NAMES)} (sim {i})",
            token=args.token,
            child_age=random.randint(4, 14),
            child_height_cm=round(random.uniform(100, 165), 1),
            child_weight_kg=round(random.uniform(15, 55), 1),
        )

    try:
        created = await asyncio.gather(
            *(asyncio.to_thread(new_session, i) for i in range(args.mirrors))
        )
    except urllib.error.HTTPError as exc:
        print(
            f"FAILED: POST /sessions answered HTTP {exc.code}; --token must be an admin or"
            " therapist token"
        )
        return 1
    ids = [session_id for session_id, _ in created]
    # Where to watch each session in a browser (the token stays in the URL fragment).
    fragment = f"#token={args.token}" if args.token else ""
    for session_id in ids:
        print(f"session {session_id}  {args.url.rstrip('/')}/watch?session={session_id}{fragment}")
    # Each mirror streams with its session's own mirror token; the watchers with --token.
    clients = [
        MirrorClient(args.url, session_id, mirror_token or args.token)
        for session_id, mirror_token in created
    ]
    # on_message: count and check seqs only, queue nothing.
    watchers = {
        session_id: [
            WatcherClient(args.url, session_id, args.token, on_message=_ignore)
            for _ in range(args.watchers)
        ]
        for session_id in ids
    }
    print(
        f"{len(clients)} sessions created; {args.rate:g} Hz for {args.seconds:g}s each"
        f", {args.watchers} watcher(s) each"
    )
    for watcher in (w for ws in watchers.values() for w in ws):
        await watcher.start()
    try:  # so they see each session from its first frame
        async with asyncio.timeout(30):
            await asyncio.gather(*(w.connected.wait() for ws in watchers.values() for w in ws))
    except TimeoutError:
        print("FAILED: watchers could not connect within 30 s")
        return 1
    progress = Progress(clients)
    reporter = asyncio.create_task(progress.run())
    for client in clients:
        await client.start()

    async def one(client: MirrorClient) -> str | None:
        try:
            await run_mirror(client, args.rate, args.seconds)
            await client.end(timeout=args.end_timeout)
        except (HubClosed, TimeoutError) as exc:
            for watcher in watchers[client.session_id]:
                await watcher.close()
            return f"session {client.session_id}: {exc!r}, {client.unacked} frames unacked"
        finally:
            await client.close()
        problems = []
        for i, watcher in enumerate(watchers[client.session_id]):
            try:
                await watcher.wait_closed(timeout=10)  # `ended`, then close 1000
            except TimeoutError:
                problems.append(f"watcher {i} did not see `ended`")
            finally:
                await watcher.close()
            if watcher.gaps or watcher.duplicates or watcher.last_seq != client.last_seq:
                problems.append(
                    f"watcher {i}: last seq {watcher.last_seq} of {client.last_seq},"
                    f" {watcher.gaps} gaps ({watcher.missing} frames),"
                    f" {watcher.duplicates} duplicates"
                )
        return f"session {client.session_id}: {'; '.join(problems)}" if problems else None

    try:
        failures = [f for f in await asyncio.gather(*(one(c) for c in clients)) if f]
    finally:
        reporter.cancel()
        progress.show(final=True)
    for failure in failures:
        print(failure)
    total = sum(c.last_seq for c in clients)
    all_watchers = [w for ws in watchers.values() for w in ws]
    seen = sum(w.last_seq or 0 for w in all_watchers)
    print(
        f"{'FAILED' if failures else 'OK'}: {total} frames, {len(failures)} failed sessions;"
        f" {len(all_watchers)} watchers saw {seen} frames,"
        f" {sum(w.gaps for w in all_watchers)} gaps, "
        f"{sum(w.duplicates for w in all_watchers)} duplicates,"
        f" {sum(w.reconnects for w in all_watchers)} reconnects"
    )
    return 1 if failures else 0


def _ignore(message: dict[str, object]) -> None:
    pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Simulate mirrors streaming to Mirror Hub.")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--mirrors", type=int, default=5)
    parser.add_argument(
        "--watchers", type=int, default=1, help="watchers per session, checking every frame"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="metrics frames/s per mirror")
    parser.add_argument("--seconds", type=float, default=30.0, help="session length")
    parser.add_argument(
        "--token", help="admin or therapist token: creates the sessions and watches them"
    )
    parser.add_argument("--end-timeout", type=float, default=60.0, help="seconds to drain")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
