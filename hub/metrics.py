"""The hub's Prometheus metrics: every metric object lives here, and `/metrics` renders them.

Labelled children are bound once, at import, so an update is never a label lookup. What the
live path counts per frame, per watcher hand-off and per ack goes through a tally
(`CounterTally`, `HistogramTally`: plain numbers, folded into the metric before every render
and every `FOLD_INTERVAL_S`): an update of a prometheus-client metric takes a lock and several
calls, 2.5 µs for a hand-off's two histograms against 0.5 µs for the tallies, one hand-off per
frame per watcher. Several worker
processes (`hub serve --workers N`) report one total: `hub serve` then sets
PROMETHEUS_MULTIPROC_DIR to a fresh directory before the workers start, prometheus-client
keeps each process's values in a file there, and `/metrics` on any worker adds them up (gauges
of live processes only; another worker's tallies as of its last fold).
"""

from __future__ import annotations

import asyncio
import bisect
import os
import re
import time
from pathlib import Path

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub import closecodes

# Latency buckets from 100 µs to 10 s: the live path works in fractions of a millisecond,
# acks wait for a commit (tens of ms), a database outage stretches both to seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

CONNECTIONS = Gauge(
    "hub_connections",
    "Open WebSocket connections by role",
    ["role"],
    multiprocess_mode="livesum",
)
MIRROR_CONNECTIONS = CONNECTIONS.labels("mirror")
WATCHER_CONNECTIONS = CONNECTIONS.labels("watcher")

FRAMES_RECEIVED = Counter(
    "hub_frames_received", "Frames accepted from mirrors into the write buffer"
)
FRAMES_STORED = Counter("hub_frames_stored", "Frames committed to PostgreSQL")
FRAMES_REJECTED = Counter(
    "hub_frames_rejected",
    "Mirror messages answered with an error frame, by error code",
    ["code"],
)
ACKS_SENT = Counter("hub_acks_sent", "Cumulative acks sent to mirrors")

BUFFER_FRAMES = Gauge(
    "hub_write_buffer_frames", "Frames in the write buffer", multiprocess_mode="livesum"
)
BUFFER_MAX_FRAMES = Gauge(
    "hub_write_buffer_max_frames",
    "Bound of the write buffer in frames",
    multiprocess_mode="livesum",
)
FLUSH_BATCH_FRAMES = Histogram(
    "hub_flush_batch_frames", "Frames per committed batch", buckets=COUNT_BUCKETS
)
FLUSH_DURATION = Histogram(
    "hub_flush_duration_seconds",
    "Time to store one batch, retries during an outage included",
    buckets=LATENCY_BUCKETS,
)
STORAGE_FAILURES = Counter("hub_storage_failures", "Failed attempts to store a batch")

ACK_LATENCY = Histogram(
    "hub_ack_latency_seconds",
    "From a batch's commit to its ack handed to the mirror's socket",
    buckets=LATENCY_BUCKETS,
)
BROADCAST_LAG = Histogram(
    "hub_broadcast_lag_seconds",
    "From a frame's arrival at this hub to its hand-off to a watcher's socket writer "
    "(observed once per hand-off, for its oldest frame)",
    buckets=LATENCY_BUCKETS,
)
WATCHER_QUEUE_FRAMES = Histogram(
    "hub_watcher_queue_frames",
    "Messages waiting in a watcher's queue when its writer takes them",
    buckets=COUNT_BUCKETS,
)
CLOSES = Counter("hub_websocket_closes", "WebSocket closes sent by the hub, by code", ["code"])
_CLOSES_BY_CODE = {c.code: CLOSES.labels(str(c.code)) for c in closecodes.ALL}

BACKPLANE_MESSAGES_IN = Counter(
    "hub_backplane_messages_received", "Messages of other nodes received on the backplane"
)
BACKPLANE_RESETS = Counter("hub_backplane_resets", "Reconnections of the backplane link")

HTTP_REQUESTS = Counter(
    "hub_http_requests",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "hub_http_request_duration_seconds",
    "HTTP request duration by method and route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)


# How often each process folds its tallies into its metrics (with several workers, what
# another worker's scrape shows of this one's live-path counts is at most this old).
FOLD_INTERVAL_S = 1.0


class CounterTally:
    """Increments of `counter` not yet added to it."""

    __slots__ = ("count", "counter")

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.count = 0

    def fold(self) -> None:
        if self.count:
            count, self.count = self.count, 0
            self.counter.inc(count)


class HistogramTally:
    """Observations of `histogram` not yet added to it: a count per bucket and their sum.

    Its buckets are the histogram's own, and folding adds them through the histogram's bucket
    and sum values (`_upper_bounds`, `_buckets`, `_sum`), which prometheus-client has no
    public call for; tests/unit/test_metrics_tally.py checks that the result renders exactly
    as the same `observe` calls would."""

    __slots__ = ("bounds", "counts", "histogram", "total")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        # The finite upper bounds; the last bucket (+Inf) takes the rest.
        self.bounds = tuple(histogram._upper_bounds[:-1])
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value, as Histogram.observe picks it.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def fold(self) -> None:
        counts, self.counts = self.counts, [0] * len(self.counts)
        if not any(counts):
            return
        total, self.total = self.total, 0.0
        buckets = self.histogram._buckets
        for index, count in enumerate(counts):
            if count:
                buckets[index].inc(count)
        self.histogram._sum.inc(total)


_RECEIVED = CounterTally(FRAMES_RECEIVED)
_ACKS = CounterTally(ACKS_SENT)
_ACK_LATENCY = HistogramTally(ACK_LATENCY)
_BROADCAST_LAG = HistogramTally(BROADCAST_LAG)
_QUEUE_FRAMES = HistogramTally(WATCHER_QUEUE_FRAMES)
TALLIES = (_RECEIVED, _ACKS, _ACK_LATENCY, _BROADCAST_LAG, _QUEUE_FRAMES)


def fold() -> None:
    """Add what the tallies hold to their metrics."""
    for tally in TALLIES:
        tally.fold()


async def fold_periodically() -> None:
    """Fold every FOLD_INTERVAL_S, and once more when cancelled (the process is stopping)."""
    try:
        while True:
            await asyncio.sleep(FOLD_INTERVAL_S)
            fold()
    finally:
        fold()


def received() -> None:
    """A frame was accepted into the write buffer."""
    _RECEIVED.count += 1


def flushed(frames: int, seconds: float) -> None:
    """A batch of `frames` committed after `seconds` (its retries included)."""
    FRAMES_STORED.inc(frames)
    FLUSH_BATCH_FRAMES.observe(frames)
    FLUSH_DURATION.observe(seconds)


def acked(committed_at: float) -> None:
    """An ack went to a mirror; `committed_at` (perf_counter) is when its commit was seen."""
    _ACKS.count += 1
    if committed_at:
        _ACK_LATENCY.observe(time.perf_counter() - committed_at)


def handed_off(queued: int, oldest_at: float) -> None:
    """A watcher's writer takes `queued` messages, the oldest queued at `oldest_at`. Frames
    are queued the moment they reach the hub (fan-out never waits), so this is the lag from
    arrival to the socket writer."""
    _QUEUE_FRAMES.observe(queued)
    _BROADCAST_LAG.observe(time.perf_counter() - oldest_at)


def closed(code: closecodes.CloseCode) -> None:
    _CLOSES_BY_CODE[code.code].inc()


def rejected(code: str) -> None:
    # Error path only: the label lookup is fine here. Codes come from the hub's own table.
    FRAMES_REJECTED.labels(code).inc()


def forget_dead_workers(directory: Path | None) -> None:
    """Drop the live gauges of workers that died without cleaning up (killed, crashed), so
    the connections and buffer they held stop counting. Each worker runs it as it starts."""
    if directory is None:
        return
    pids = set()
    for path in directory.glob("gauge_live*_*.db"):
        match = re.fullmatch(r"gauge_live\w+_(\d+)\.db", path.name)
        if match:
            pids.add(int(match.group(1)))
    for pid in pids - {os.getpid()}:
        if not psutil.pid_exists(pid):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def worker_exiting(directory: Path | None) -> None:
    """This process stops serving: its live gauges stop counting (counters stay summed)."""
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]


def render(directory: Path | None) -> bytes:
    """The text exposition: this process's metrics, or with `directory` every worker's."""
    fold()
    if directory is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


async def metrics_endpoint(request: Request) -> Response:
    directory = request.app.state.hub.settings.prometheus_multiproc_dir
    return Response(render(directory), media_type=CONTENT_TYPE_LATEST)


class HTTPMetrics:
    """ASGI middleware counting HTTP requests by route template (never the raw path: ids
    would make a series per session) and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_DURATION.labels(method, template).observe(time.perf_counter() - started)
