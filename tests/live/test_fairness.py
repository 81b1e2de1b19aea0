"""Acceptance: one hostile mirror cannot hurt another session (invariant 9).

Each test runs a well-behaved mirror (30 frames/s, two watchers) in one session while another
session's mirror attacks the hub, and measures the well-behaved session all along: its acks
and its watchers' latency. The attacks are those of the report that found the problem, at
least as large: task status frames adding 200 metric names each, 100,000 new task ids, and
batches at the message rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import orjson
import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    recv,
    send,
    staff_headers,
    token,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# The acceptance bounds, as stated for this hub; generous on purpose (a shared machine).
ACK_P99_S = 0.250
WATCH_P99_S = 0.050
RATE = 30  # frames a second of the well-behaved mirror
# The hub's memory budget with default settings (README, "Memory"): the process at rest, plus
# the write buffer's bytes, plus per live session its replay log, pending frames and state
# (5 MiB), plus per watcher its queue (1 MiB). Two sessions and two watchers here: 164 MiB.
MIB = 1 << 20
BUDGET = 120 * MIB + 32 * MIB + 2 * 5 * MIB + 2 * MIB


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else 0.0


class Neighbour:
    """The well-behaved session: a mirror at 30 frames/s and two watchers, measured."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        self.acks: list[float] = []  # send → ack covering it, per frame (s)
        self.watched: list[float] = []  # send → a watcher has it, per frame and watcher (s)
        self.ready = asyncio.Event()  # streaming, watched and acked
        self.stop = asyncio.Event()
        self.sent = 0
        # The seq of the last frame, set before it is sent: the readers end with it. (Ending
        # on `stop` and `sent` raced: a reader could see `stop` before the sender had counted
        # its last frame, and miss that frame's ack.)
        self.final_seq: int | None = None

    async def run(self) -> None:
        session_id = await create_session(self.hub.http)
        async with (
            open_client(self.hub.ws, session_id, "watch") as (w1, _),
            open_client(self.hub.ws, session_id, "watch") as (w2, _),
            open_client(self.hub.ws, session_id, "mirror") as (mirror, _),
        ):
            sent_at: dict[int, float] = {}
            counts = [0, 0]

            async def acks() -> None:
                acked = 0
                while self.final_seq is None or acked < self.final_seq:
                    message = await recv(mirror, 20)
                    if message["type"] != "ack":
                        continue
                    now = time.monotonic()
                    for seq in range(acked + 1, message["seq"] + 1):
                        self.acks.append(now - sent_at.pop(seq))
                    acked = message["seq"]
                    self.ready.set()

            async def watch(ws: ClientConnection, index: int) -> None:
                while self.final_seq is None or counts[index] < self.final_seq:
                    message = await recv(ws, 20)
                    if message["type"] == "metrics":
                        self.watched.append(time.time() - message["ts"])
                        counts[index] += 1
                        assert message["seq"] == counts[index], "a gap or a repeat"

            readers = [asyncio.create_task(acks())]
            readers += [asyncio.create_task(watch(ws, i)) for i, ws in enumerate((w1, w2))]
            start = time.monotonic()
            while True:  # a last frame after `stop`, which the readers end with
                seq = self.sent + 1
                last = self.stop.is_set()
                if last:
                    self.final_seq = seq
                sent_at[seq] = time.monotonic()
                self.sent = seq
                await send(mirror, metrics_frame(seq, accuracy=0.9, stability=0.8))
                if last:
                    break
                due = start + seq / RATE
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), max(0.0, due - time.monotonic()))
            async with asyncio.timeout(30):
                await asyncio.gather(*readers)

    def check(self) -> str:
        ack_p99, watch_p99 = p99(self.acks), p99(self.watched)
        summary = (
            f"neighbour: {self.sent} frames, ack p99 {ack_p99 * 1000:.0f} ms"
            f" (max {max(self.acks) * 1000:.0f}), watchers p99 {watch_p99 * 1000:.1f} ms"
            f" (max {max(self.watched) * 1000:.0f})"
        )
        print(summary)
        assert len(self.acks) == self.sent and len(self.watched) == 2 * self.sent
        return summary


class Memory:
    """Samples the hub's RSS while the test runs, and measures its CPU time."""

    def __init__(self, hub: HubProcess) -> None:
        assert hub.proc is not None
        self.process = psutil.Process(hub.proc.pid)
        self.at_rest = self.process.memory_info().rss
        self.peak = self.at_rest
        self.cpu = 0.0  # share of one core during the attack

    async def sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)


async def under_attack(
    hub: HubProcess, attack: Callable[[], Awaitable[None]]
) -> tuple[Neighbour, Memory]:
    """Run the neighbour, then `attack`, then stop the neighbour; every figure is taken from
    the neighbour's first ack to its last frame, so all of the attack is inside it."""
    neighbour, memory = Neighbour(hub), Memory(hub)
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(memory.sample(stop_sampling))
    running = asyncio.create_task(neighbour.run())
    async with asyncio.timeout(20):
        await neighbour.ready.wait()
    cpu, start = memory.cpu_seconds(), time.monotonic()
    try:
        await attack()
        memory.cpu = (memory.cpu_seconds() - cpu) / (time.monotonic() - start)
    finally:
        neighbour.stop.set()
        await running
        stop_sampling.set()
        await sampler
    print(
        f"hub RSS at rest {memory.at_rest / MIB:.0f} MiB, peak {memory.peak / MIB:.0f} MiB;"
        f" hub CPU during the attack {memory.cpu:.0%} of a core"
    )
    return neighbour, memory


class Attacker:
    """A hostile mirror of its own session: sends what `frames` makes, as fast as allowed,
    keeps its seq where the hub says it is, and reconnects whenever it is closed."""

    def __init__(self, hub: HubProcess, session_id: str) -> None:
        self.hub = hub
        self.session_id = session_id
        self.codes: Counter[str] = Counter()  # error codes and close codes it got
        self.messages = 0
        self.seq = 1

    async def run(
        self,
        make: Callable[[int], tuple[str, int]],
        messages: int,
        per_second: float,
        seconds: float = 600.0,
    ) -> None:
        """Send `messages` messages, or for `seconds` if that is shorter (the hub may hold
        the attacker back); `make(seq)` gives one (text, frames in it)."""
        start = time.monotonic()
        deadline = start + seconds
        while self.messages < messages and time.monotonic() < deadline:
            try:
                async with open_client(self.hub.ws, self.session_id, "mirror") as (ws, welcome):
                    self.seq = welcome["last_seq"] + 1
                    reader = asyncio.create_task(self._read(ws))
                    try:
                        while (
                            self.messages < messages
                            and not reader.done()
                            and time.monotonic() < deadline
                        ):
                            text, count = make(self.seq)
                            await ws.send(text)
                            self.seq += count
                            self.messages += 1
                            due = start + self.messages / per_second
                            await asyncio.sleep(max(0.0, due - time.monotonic()))
                    finally:
                        reader.cancel()
                        await asyncio.gather(reader, return_exceptions=True)
            except ConnectionClosed as exc:
                self.codes[f"close {exc.rcvd.code if exc.rcvd else 1006}"] += 1

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                message = orjson.loads(raw)
                if message["type"] == "error":
                    self.codes[message["code"]] += 1
                    if "expected_seq" in message:  # where the hub stands: go on from there
                        self.seq = message["expected_seq"]
        except ConnectionClosed as exc:
            self.codes[f"close {exc.rcvd.code if exc.rcvd else 1006}"] += 1


async def snapshot_bytes(hub: HubProcess, session_id: str) -> int:
    async with open_client(hub.ws, session_id, "watch") as (ws, _):
        raw = await asyncio.wait_for(ws.recv(), 10)
    assert orjson.loads(raw)["type"] == "snapshot"
    return len(raw)


async def all_tasks(hub: HubProcess, session_id: str) -> list[dict[str, object]]:
    tasks: list[dict[str, object]] = []
    url: str | None = f"{hub.http}/sessions/{session_id}/tasks?limit=1000"
    async with httpx.AsyncClient(headers=staff_headers()) as client:
        while url is not None:
            response = await client.get(url)
            response.raise_for_status()
            tasks += response.json()
            link = response.headers.get("link")
            url = f"{hub.http}{link[1 : link.index('>')]}" if link else None
    return tasks


async def test_growing_task_metrics_and_new_task_ids_do_not_hurt_another_session(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_LOG_LEVEL="warning")
    session_id = await create_session(hub.http)
    grower, spawner = Attacker(hub, session_id), Attacker(hub, session_id)
    task_id = str(uuid.uuid4())
    names = iter(range(10**9))

    def growing_status(seq: int) -> tuple[str, int]:
        # One task's status, each frame with 200 metric names it never had.
        batch = next(names)
        metrics = {f"m{batch}_{i}": 0.5 for i in range(200)}
        frame = {"type": "task", "seq": seq, "ts": time.time(), "task_id": task_id}
        frame |= {"task_name": "raise_hand", "event": "status", "status": "in_progress"}
        return orjson.dumps({**frame, "metrics": metrics}).decode(), 1

    def new_tasks(seq: int) -> tuple[str, int]:
        # 400 tasks never seen before in one batch (about 60 KB).
        frames = [
            {"type": "task", "seq": seq + i, "ts": time.time(), "task_id": str(uuid.uuid4()),
             "task_name": "t", "event": "started", "status": "pending"}
            for i in range(400)
        ]  # fmt: skip
        return orjson.dumps({"type": "batch", "frames": frames}).decode(), 400

    async def attack() -> None:
        # 200 frames a second for 15 s (the rate limit allows 200 messages a second)...
        await grower.run(growing_status, messages=15 * 190, per_second=190)
        # ...then 100,000 new task ids, 400 to a message.
        await spawner.run(new_tasks, messages=250, per_second=40)

    neighbour, memory = await under_attack(hub, attack)
    print("grower got", dict(grower.codes), "spawner got", dict(spawner.codes))
    neighbour.check()

    assert grower.codes["too_many_metric_names"] > 100
    assert spawner.codes["too_many_tasks"] > 100
    errors = {c for c in grower.codes | spawner.codes if not c.startswith("close")}
    assert errors <= {"too_many_metric_names", "too_many_tasks", "seq_gap"}, errors
    assert p99(neighbour.acks) < ACK_P99_S
    assert p99(neighbour.watched) < WATCH_P99_S
    assert memory.peak < BUDGET, f"peak RSS {memory.peak / MIB:.0f} MiB"

    # What the attacker's session holds is within its limits, in memory and in storage.
    tasks = await all_tasks(hub, session_id)
    assert len(tasks) == 500
    assert max(len(t["metrics"]) for t in tasks) <= 256  # type: ignore[arg-type]
    assert await snapshot_bytes(hub, session_id) <= 1 << 20
    assert "Traceback" not in hub.logs()


async def test_a_mirror_flooding_at_its_rate_limit_does_not_delay_another_sessions_acks(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_LOG_LEVEL="warning")
    flooder = Attacker(hub, await create_session(hub.http))
    values = ',"values":{"accuracy":0.5,"stability":0.25,"max_angle":152.0}}'

    def full_batch(seq: int) -> tuple[str, int]:
        ts = time.time()
        frames = ",".join(
            f'{{"type":"metrics","seq":{seq + i},"ts":{ts}{values}' for i in range(500)
        )
        return f'{{"type":"batch","frames":[{frames}]}}', 500

    stored: dict[str, float] = {}

    async def attack() -> None:
        # Just under the rate limit (200 a second), for 10 s: 95,000 frames a second offered.
        start = time.monotonic()
        await flooder.run(full_batch, messages=1_900, per_second=190, seconds=10)
        async with httpx.AsyncClient(headers=staff_headers(), timeout=60) as client:
            report = await client.get(f"{hub.http}/sessions/{flooder.session_id}/report")
        stored["frames"] = report.json()["completeness"]["frames_stored"]
        stored["seconds"] = time.monotonic() - start

    neighbour, memory = await under_attack(hub, attack)
    print("flooder got", dict(flooder.codes), "sent up to", flooder.seq - 1)
    print(f"flooder: {stored['frames']:.0f} frames stored in the {stored['seconds']:.1f} s attack")
    neighbour.check()
    assert not flooder.codes, "the flood is valid: no errors, no closes"
    assert p99(neighbour.acks) < ACK_P99_S
    assert memory.peak < BUDGET, f"peak RSS {memory.peak / MIB:.0f} MiB"
    # The flooder held no more than its share of the write buffer (HUB_BUFFER_SESSION_MAX_
    # FRAMES), and was stored no faster than a flush's worth (500) per flush interval (50 ms):
    # the hub's core was not its to take. That bound holds whatever the machine's speed; the
    # CPU share the flood costs is printed, not asserted (measured: 11-13 % of a core, 28 %
    # once on a loaded machine; without the pacing 58 %, with three times the bound stored).
    async with httpx.AsyncClient() as client:
        live = (await client.get(f"{hub.http}/health")).json()["live"]
    assert live["buffer_peak_frames"] <= 5_000 + 100
    assert stored["frames"] <= 500 * (stored["seconds"] / 0.050 + 1)
    assert "Traceback" not in hub.logs()


@pytest.fixture(autouse=True)
def _token_is_importable() -> None:
    assert token("therapist")
