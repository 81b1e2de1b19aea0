"""/metrics: Prometheus text that a real scraper parses, counting what the live path did, summed
over `hub serve --workers N`, and readable only by an admin unless HUB_PUBLIC_METRICS=true."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from hub import metrics
from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    open_client,
    recv,
    send,
    staff_headers,
    token,
    wait_acked,
)

StartHub = Callable[..., Awaitable[HubProcess]]


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(http: str, headers: dict[str, str] | None = None) -> dict[Any, float]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{http}/metrics", headers=headers or staff_headers("admin"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_streamed_frames_are_counted(hub_server: HubProcess) -> None:
    before = await scrape(hub_server.http)
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (mirror, _):
        async with open_client(hub_server.ws, session_id, "watch") as (watcher, _):
            assert (await recv(watcher))["type"] == "snapshot"
            during = await scrape(hub_server.http)
            assert value(during, "hub_connections", role="mirror") >= 1
            assert value(during, "hub_connections", role="watcher") >= 1
            for seq in range(1, 31):
                await send(mirror, metrics_frame(seq))
            await wait_acked(mirror, 30)
        await send(mirror, {"type": "metrics", "seq": 99, "ts": 1.0, "values": {"a": 1}})
        assert (await recv(mirror))["code"] == "seq_gap"
    after = await scrape(hub_server.http)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("hub_frames_received_total") == 30
    assert grew("hub_frames_stored_total") == 30
    assert grew("hub_flush_batch_frames_sum") == 30
    assert grew("hub_frames_rejected_total", code="seq_gap") == 1
    assert grew("hub_acks_sent_total") >= 1
    assert grew("hub_ack_latency_seconds_count") == grew("hub_acks_sent_total")
    assert grew("hub_broadcast_lag_seconds_count") >= 1
    assert grew("hub_watcher_queue_frames_sum") >= 30  # every frame went through the queue
    assert value(after, "hub_write_buffer_max_frames") == 50_000
    assert value(after, "hub_connections", role="mirror") == 0
    # HTTP requests are counted by route template, never by the raw path with its ids.
    assert grew("hub_http_requests_total", method="POST", route="/sessions", status="201") == 1
    routes = {dict(labels).get("route") for (name, labels) in after if name.startswith("hub_http")}
    assert not any(session_id in str(route) for route in routes)


async def test_metrics_need_an_admin_credential(hub_server: HubProcess) -> None:
    async with httpx.AsyncClient() as client:
        anonymous = await client.get(f"{hub_server.http}/metrics")
        therapist = await client.get(
            f"{hub_server.http}/metrics", headers=staff_headers("therapist")
        )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"
    assert therapist.status_code == 403


async def test_public_metrics_need_no_credential(start_hub: StartHub) -> None:
    hub = await start_hub(HUB_PUBLIC_METRICS="true")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{hub.http}/metrics")
    assert response.status_code == 200
    assert value(parse(response.text), "hub_write_buffer_max_frames") == 50_000


@pytest.mark.slow
async def test_workers_report_one_total(database_url: str, tmp_path: Path) -> None:
    """`hub serve --workers 2`: frames stored by either worker count in every scrape, and
    the per-run metrics directory is gone after the hub stopped."""
    temp = tmp_path / "tmp"  # where `hub serve` makes its metrics directory
    temp.mkdir()
    hub = HubProcess(
        database_url, tmp_path / "hub.log", workers=2, HUB_BACKPLANE="postgres", TMPDIR=str(temp)
    )
    await hub.start()
    try:
        nodes: set[str] = set()
        async with asyncio.timeout(30):  # until both workers answer (a new connection each)
            while len(nodes) < 2:
                async with httpx.AsyncClient() as client:
                    nodes.add((await client.get(f"{hub.http}/health")).json()["live"]["node"])
        before = await scrape(hub.http)
        # Each connection lands on whichever worker accepts it: hold mirrors open until
        # both workers have some, then stream on every one of them.
        frames_by_node: dict[str, int] = {}
        async with contextlib.AsyncExitStack() as stack, asyncio.timeout(60):
            mirrors = []
            while len(frames_by_node) < 2:
                session_id = await create_session(hub.http)
                opened = open_client(hub.ws, session_id, "mirror")
                mirror, welcome = await stack.enter_async_context(opened)
                mirrors.append(mirror)
                frames_by_node[welcome["node"]] = frames_by_node.get(welcome["node"], 0) + 20
            for mirror in mirrors:
                batch = [metrics_frame(seq) for seq in range(1, 21)]
                await send(mirror, {"type": "batch", "frames": batch})
            for mirror in mirrors:
                await wait_acked(mirror, 20)
        total = sum(frames_by_node.values())
        # Every scrape, whichever worker answers it, reports the sum of both.
        for _ in range(6):
            after = await scrape(hub.http)
            stored = value(after, "hub_frames_stored_total")
            assert stored - value(before, "hub_frames_stored_total") == total
            # A gauge of live workers only: both bounds count.
            assert value(after, "hub_write_buffer_max_frames") == 2 * 50_000
    finally:
        code = await hub.stop()
    assert code == 0, hub.logs()
    assert "Traceback" not in hub.logs()
    assert not list(temp.iterdir())


async def test_a_lagging_watcher_is_counted(start_hub: StartHub) -> None:
    """A watcher that stops reading is closed with 4008, and the close is counted by its code."""
    hub = await start_hub(HUB_WATCHER_QUEUE_FRAMES="50", HUB_WS_MAX_MESSAGES_PER_S="1000000")
    session_id = await create_session(hub.http)
    sock = socket.socket()  # a tiny receive buffer and a client that never reads
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    stalled = await connect(
        f"{hub.ws}/ws/sessions/{session_id}/watch", sock=sock, max_queue=1, compression=None
    )
    await send(stalled, {"type": "hello", "token": token("therapist")})
    # The welcome follows the join (after the watch's audit row commits): from then on every
    # frame is queued for this watcher. It is the last message this client reads.
    assert (await recv(stalled, timeout=10))["type"] == "welcome"
    try:
        values = {f"joint_{i}": float(i) for i in range(190)}  # ~5 KB frames fill buffers fast
        async with open_client(hub.ws, session_id, "mirror") as (mirror, _):
            for seq in range(1, 501):
                await send(mirror, metrics_frame(seq, **values))
            await wait_acked(mirror, 500, timeout=60)
        async with asyncio.timeout(10):
            while True:  # the close is sent by the watcher's own task: poll the hub's figures
                samples = await scrape(hub.http)
                if value(samples, "hub_websocket_closes_total", code="4008") == 1:
                    break
                await asyncio.sleep(0.05)
    finally:  # no closing handshake: it would wait for what it never read
        stalled.transport.abort()


def test_gauges_of_dead_workers_stop_counting(tmp_path: Path) -> None:
    """A worker killed without cleaning up leaves its live gauges behind; the next worker to
    start drops them (counters stay: their totals still happened)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    files = {
        "dead_gauge": tmp_path / f"gauge_livesum_{dead.pid}.db",
        "dead_counter": tmp_path / f"counter_{dead.pid}.db",
        "live_gauge": tmp_path / f"gauge_livesum_{os.getppid()}.db",
    }
    for path in files.values():
        path.write_bytes(b"")
    metrics.forget_dead_workers(tmp_path)
    assert not files["dead_gauge"].exists()
    assert files["dead_counter"].exists() and files["live_gauge"].exists()
