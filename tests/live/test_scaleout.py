"""Acceptance: several hub processes behind one backplane (PostgreSQL LISTEN/NOTIFY or Redis)
behave as one hub: every watcher on any node gets every frame once, in order; storage holds
each once; a node's death and a backplane restart lose nothing and leave no silent gap."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from hub import closecodes
from tests.support.live import (
    ROOT,
    HubProcess,
    RedisServer,
    balancer,
    closed_with,
    create_session,
    follow,
    metrics_frame,
    open_client,
    recv,
    recv_until,
    require_redis_server,
    send,
    staff_headers,
    token,
    wait_acked,
)
from tests.support.streams import FRAMES, TASKS, session_script, stream, watch

sys.path.insert(0, str(ROOT / "client_examples"))
from mirror_client import MirrorClient

HEARTBEAT_MS = 200
EXPIRY_S = 3 * HEARTBEAT_MS / 1000  # a silent node is dropped from presence after this

StartHub = Callable[..., Awaitable[HubProcess]]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["postgres", "redis"])
def backplane(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return "postgres"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


async def stored_seqs(database_url: str, session_id: str) -> list[int]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        rows = await conn.fetch(
            "SELECT seq FROM frames WHERE session_id = $1::uuid ORDER BY seq", session_id
        )
    finally:
        await conn.close()
    return [r["seq"] for r in rows]


async def health(http: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{http}/health")
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.timeout(180)
async def test_two_nodes_every_watcher_gets_every_frame_once(
    start_hub: StartHub, database_url: str, backplane: str
) -> None:
    env = {"HUB_BACKPLANE": backplane, "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    node_a = await start_hub(**env)
    node_b = await start_hub(**env)
    sessions = [await create_session(node_a.http) for _ in range(4)]
    scripts = {s: session_script([str(uuid.uuid4()) for _ in TASKS]) for s in sessions}
    # Two watchers per session on each node; the mirrors all stream into node A.
    readies = {s: [asyncio.Event() for _ in range(4)] for s in sessions}
    watchers = {
        s: [
            asyncio.create_task(watch(node, s, ready, FRAMES))
            for node, ready in zip((node_a, node_a, node_b, node_b), readies[s], strict=True)
        ]
        for s in sessions
    }
    async with asyncio.timeout(30):
        for events in readies.values():
            for event in events:
                await event.wait()
    await asyncio.gather(*(stream(node_a, s, scripts[s]) for s in sessions))
    async with asyncio.timeout(60):
        results = {s: await asyncio.gather(*tasks) for s, tasks in watchers.items()}

    for session_id, per_watcher in results.items():
        for i, seqs in enumerate(per_watcher):
            node = "A" if i < 2 else "B"
            assert seqs == list(range(1, FRAMES + 1)), f"{session_id} watcher on {node}"
        assert await stored_seqs(database_url, session_id) == list(range(1, FRAMES + 1))
    for node in (node_a, node_b):
        assert "Traceback" not in node.logs()
    stats_b = (await health(node_b.http))["live"]
    assert stats_b["backplane"] == ("postgres" if backplane == "postgres" else "redis")
    assert stats_b["mirrors"] == 0  # B only relayed: the mirrors were on A


async def wait_presence(
    ws: Any, want: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Read until a presence message satisfies `want`; frames in between are ignored."""
    async with asyncio.timeout(timeout):
        while True:
            message = orjson.loads(await ws.recv())
            if message["type"] == "presence" and want(message):
                return dict(message)
            if message["type"] == "snapshot" and want(message["presence"]):
                return dict(message["presence"])


async def test_presence_counts_watchers_on_every_node(start_hub: StartHub, backplane: str) -> None:
    env = {"HUB_BACKPLANE": backplane, "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    node_a = await start_hub(**env)
    node_b = await start_hub(**env)
    session_id = await create_session(node_a.http)
    async with (
        open_client(node_b.ws, session_id, "watch") as (on_b, _),
        open_client(node_a.ws, session_id, "mirror"),
        open_client(node_a.ws, session_id, "watch"),
    ):
        seen = await wait_presence(
            on_b, lambda p: p["mirror"] == "connected" and p["watchers"] == 2, timeout=10
        )
        assert seen == {"type": "presence", "mirror": "connected", "watchers": 2}
        async with open_client(node_a.ws, session_id, "watch"):
            await wait_presence(on_b, lambda p: p["watchers"] == 3, timeout=10)
        await wait_presence(on_b, lambda p: p["watchers"] == 2, timeout=10)


async def send_frames(client: MirrorClient, count: int) -> None:
    for i in range(count):
        await client.send_metrics({"accuracy": (i % 100) / 100, "stability": 0.7})


@pytest.mark.timeout(180)
async def test_kill9_node_holding_mirrors(
    start_hub: StartHub, database_url: str, backplane: str
) -> None:
    """Mirrors reach the hubs through a load balancer; the node holding them is SIGKILLed.
    They reconnect to the other node and resend; nothing is lost or doubled, and presence on
    the surviving node is right again within the heartbeat bound."""
    env = {"HUB_BACKPLANE": backplane, "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    node_a = await start_hub(**env)
    node_b = await start_hub(**env)
    proxy = balancer([node_a.port, node_b.port])  # A while it is up, then B
    await proxy.start()
    through_proxy = f"http://127.0.0.1:{proxy.port}"
    total = 600
    sessions = [await create_session(node_a.http) for _ in range(3)]
    clients = {
        s: MirrorClient(through_proxy, s, token=token("mirror", s), backoff_max=0.2)
        for s in sessions
    }
    # Followers on sessions 1 and 2: one watching on B, one on A (via the balancer: after
    # A's death it resumes on B). Session 0 has two probes for presence, one on each node.
    followed = sessions[1:]
    seen: dict[str, list[list[int]]] = {s: [[], []] for s in followed}
    closes: list[int] = []
    followers = [
        asyncio.create_task(follow(url, s, total, seen[s][i], closes))
        for s in followed
        for i, url in enumerate((node_b.ws, through_proxy.replace("http", "ws", 1)))
    ]
    try:
        async with (
            open_client(node_b.ws, sessions[0], "watch") as (probe_b, _),
            open_client(node_a.ws, sessions[0], "watch"),
        ):
            for client in clients.values():
                await client.start()
            await wait_presence(
                probe_b, lambda p: p["mirror"] == "connected" and p["watchers"] == 2, timeout=10
            )
            await asyncio.gather(*(send_frames(c, total // 2) for c in clients.values()))
            for client in clients.values():
                await client.wait_acked(total // 4, timeout=30)
            assert (await health(node_a.http))["live"]["mirrors"] == len(sessions)

            node_a.kill()  # SIGKILL: frames broadcast but not stored are gone with it
            await asyncio.gather(*(send_frames(c, total - total // 2) for c in clients.values()))
            for client in clients.values():
                await client.wait_acked(total, timeout=60)
                assert client.reconnects >= 1
            assert (await health(node_b.http))["live"]["mirrors"] == len(sessions)
            # Presence on B: the mirror back (on B now), and A's watcher no longer counted
            # once A's heartbeats have expired.
            await wait_presence(
                probe_b,
                lambda p: p["mirror"] == "connected" and p["watchers"] == 1,
                timeout=EXPIRY_S + 10,
            )
        async with asyncio.timeout(60):
            await asyncio.gather(*followers)
    finally:
        for client in clients.values():
            await client.close()
        for task in followers:
            task.cancel()
        await proxy.stop()

    for session_id in sessions:
        assert await stored_seqs(database_url, session_id) == list(range(1, total + 1))
    for session_id in followed:
        for watcher in seen[session_id]:
            assert watcher == list(range(1, total + 1))
    assert "Traceback" not in node_b.logs()


async def test_presence_shows_mirror_gone_when_its_node_dies(
    start_hub: StartHub, backplane: str
) -> None:
    env = {"HUB_BACKPLANE": backplane, "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    node_a = await start_hub(**env)
    node_b = await start_hub(**env)
    session_id = await create_session(node_a.http)
    async with open_client(node_b.ws, session_id, "watch") as (on_b, _):
        async with open_client(node_a.ws, session_id, "mirror"):
            await wait_presence(on_b, lambda p: p["mirror"] == "connected", timeout=10)
            node_a.kill()  # no goodbye: only the missing heartbeats tell
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await wait_presence(on_b, lambda p: p["mirror"] == "disconnected", timeout=10)
            took = loop.time() - killed_at
    # Expiry is 3 heartbeats; a heartbeat sweep runs every heartbeat: at most 4 in all.
    assert took <= 4 * HEARTBEAT_MS / 1000 + 2.0, f"presence corrected after {took:.2f} s"


async def test_a_lobby_on_another_node_sees_the_session_until_its_node_dies(
    start_hub: StartHub, backplane: str
) -> None:
    """The lobby feed across nodes: a lobby on B hears of a mirror connecting to A, and when A
    dies (no goodbye) it hears the mirror is disconnected once A's repeats stop."""
    env = {"HUB_BACKPLANE": backplane, "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    node_a = await start_hub(**env)
    node_b = await start_hub(**env)
    session_id = await create_session(node_a.http)
    async with connect(f"{node_b.ws}/ws/watch", compression=None) as lobby:
        await send(lobby, {"type": "hello", "token": token("therapist"), "protocol": 2})
        assert (await recv(lobby))["type"] == "welcome"
        await send(lobby, {"type": "subscribe", "session_id": "*", "mode": "overview"})
        assert (await recv(lobby))["type"] == "subscribed"
        async with open_client(node_a.ws, session_id, "mirror"):
            live = await recv_until(lobby, "session_live")
            assert live["session_id"] == session_id
            assert live["presence"]["mirror"] == "connected"
            node_a.kill()
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            gone = await recv_until(lobby, "session_presence")
            took = loop.time() - killed_at
    assert gone["session_id"] == session_id and gone["mirror"] == "disconnected"
    assert took <= 4 * HEARTBEAT_MS / 1000 + 2.0, f"lobby corrected after {took:.2f} s"
    assert "Traceback" not in node_b.logs()


@pytest.mark.timeout(180)
async def test_redis_restart_mid_stream(
    start_hub: StartHub, database_url: str, redis_server: RedisServer
) -> None:
    """Redis dies and comes back while a mirror on A streams to watchers on B: the watchers
    get every frame (from storage, or after a close that tells them to resume), no gap."""
    env = {"HUB_BACKPLANE": redis_server.url, "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    node_a = await start_hub(**env)
    node_b = await start_hub(**env)
    session_id = await create_session(node_a.http)
    total = 600
    watchers: list[list[int]] = [[], []]
    closes: list[int] = []
    followers = [
        asyncio.create_task(follow(node_b.ws, session_id, total, seen, closes)) for seen in watchers
    ]
    client = MirrorClient(node_a.http, session_id, token=token("mirror", session_id))
    await client.start()
    try:
        await send_frames(client, 200)
        await client.wait_acked(200, timeout=30)
        redis_server.kill()
        await send_frames(client, 200)  # published into the void; stored all the same
        await client.wait_acked(400, timeout=30)  # acks do not wait for the backplane
        restarted = RedisServer(redis_server.port)
        restarted.start()
        try:
            await send_frames(client, total - 400)
            await client.wait_acked(total, timeout=30)
            async with asyncio.timeout(60):
                await asyncio.gather(*followers)
        finally:
            restarted.kill()
    finally:
        await client.close()
        for task in followers:
            task.cancel()

    for seen in watchers:
        assert seen == list(range(1, total + 1))
    assert await stored_seqs(database_url, session_id) == list(range(1, total + 1))
    assert (await health(node_b.http))["live"]["backplane_resets"] >= 1
    assert client.reconnects == 0  # the mirror never noticed
    for node in (node_a, node_b):
        assert "Traceback" not in node.logs()


@pytest.mark.timeout(180)
async def test_workers_share_sessions_through_postgres(database_url: str, tmp_path: Any) -> None:
    """`hub serve --workers 4` with the PostgreSQL backplane: connections land on different
    workers, and watchers still get every frame of a mirror on another worker."""
    hub = HubProcess(
        database_url,
        tmp_path / "hub.log",
        workers=4,
        HUB_BACKPLANE="postgres",
        HUB_BACKPLANE_HEARTBEAT_MS=str(HEARTBEAT_MS),
    )
    await hub.start()
    try:
        # `start` returns once one worker answers; until the others do, it takes every
        # connection. Wait until all four have answered (/health names the node).
        ready_workers: set[str] = set()
        async with asyncio.timeout(30):
            while len(ready_workers) < 4:
                ready_workers.add((await health(hub.http))["live"]["node"])
        sessions = [await create_session(hub.http) for _ in range(4)]
        scripts = {s: session_script([str(uuid.uuid4()) for _ in TASKS]) for s in sessions}
        watchers: list[asyncio.Task[list[int]]] = []
        watcher_nodes: dict[str, list[str]] = {}
        for session_id in sessions:
            readies = [asyncio.Event() for _ in range(3)]
            welcomes: list[dict[str, Any]] = []
            watchers += [
                asyncio.create_task(watch(hub, session_id, ready, FRAMES, welcomes))
                for ready in readies
            ]
            async with asyncio.timeout(30):
                for ready in readies:
                    await ready.wait()
            watcher_nodes[session_id] = [w["node"] for w in welcomes]
        mirror_welcomes: dict[str, list[dict[str, Any]]] = {s: [] for s in sessions}
        streams = [stream(hub, s, scripts[s], mirror_welcomes[s]) for s in sessions]
        await asyncio.gather(*streams)
        async with asyncio.timeout(60):
            results = await asyncio.gather(*watchers)
        for seqs in results:
            assert seqs == list(range(1, FRAMES + 1))
        for session_id in sessions:
            assert await stored_seqs(database_url, session_id) == list(range(1, FRAMES + 1))
        # The welcome names the worker: connections were spread, and some watchers got every
        # frame of a mirror on another worker (through the backplane).
        mirror_nodes = {s: mirror_welcomes[s][0]["node"] for s in sessions}
        all_nodes = set(mirror_nodes.values()) | {n for ns in watcher_nodes.values() for n in ns}
        assert len(all_nodes) >= 2, "all connections landed on one worker"
        across = sum(n != mirror_nodes[s] for s, ns in watcher_nodes.items() for n in ns)
        assert across >= 1, "no watcher was on another worker than its mirror"
    finally:
        code = await hub.stop()
    assert code == 0, hub.logs()
    assert "Traceback" not in hub.logs()


async def test_workers_refuse_the_memory_backplane(database_url: str, tmp_path: Any) -> None:
    hub = HubProcess(database_url, tmp_path / "hub.log", workers=2, HUB_BACKPLANE="memory")
    with pytest.raises(RuntimeError, match="HUB_BACKPLANE=postgres"):
        await hub.start()
    assert hub.proc is not None and hub.proc.returncode == 2


async def test_welcome_names_the_node(hub_server: HubProcess) -> None:
    session_id = await create_session(hub_server.http)
    async with open_client(hub_server.ws, session_id, "mirror") as (_, welcome):
        assert welcome["node"] == (await health(hub_server.http))["live"]["node"]
    async with open_client(hub_server.ws, session_id, "watch") as (ws, welcome):
        assert welcome["node"]
        assert (await recv(ws))["type"] == "snapshot"


@pytest.fixture
async def two_nodes(start_hub: StartHub) -> tuple[HubProcess, HubProcess]:
    env = {"HUB_BACKPLANE": "postgres", "HUB_BACKPLANE_HEARTBEAT_MS": str(HEARTBEAT_MS)}
    return await start_hub(**env), await start_hub(**env)


async def test_end_reaches_watchers_on_other_nodes_after_every_frame(
    two_nodes: tuple[HubProcess, HubProcess],
) -> None:
    node_a, node_b = two_nodes
    session_id = await create_session(node_a.http)
    async with open_client(node_b.ws, session_id, "watch") as (on_b, _):
        assert (await recv(on_b))["type"] == "snapshot"
        async with open_client(node_a.ws, session_id, "mirror") as (mirror, _):
            frames = [metrics_frame(seq, accuracy=seq / 100) for seq in range(1, 51)]
            await send(mirror, {"type": "batch", "frames": frames})
            await send(mirror, {"type": "end", "last_seq": 50})
            code, _ = await closed_with(mirror)
            assert code == 1000
        code, messages = await closed_with(on_b)
    assert code == 1000
    seqs = [m["seq"] for m in messages if m["type"] == "metrics"]
    assert seqs == list(range(1, 51))
    assert messages[-1] == {"type": "ended", "last_seq": 50}
    # Ended everywhere: a late watcher on B gets the whole story and the end at once.
    async with open_client(node_b.ws, session_id, "watch", since=0) as (late, _):
        code, messages = await closed_with(late)
    assert code == 1000 and messages[-1]["type"] == "ended"
    assert [m["seq"] for m in messages if m["type"] == "metrics"] == list(range(1, 51))


async def test_erasure_on_one_node_closes_clients_on_every_node(
    two_nodes: tuple[HubProcess, HubProcess],
) -> None:
    node_a, node_b = two_nodes
    session_id = await create_session(node_a.http)
    async with (
        open_client(node_a.ws, session_id, "mirror") as (mirror, _),
        open_client(node_b.ws, session_id, "watch") as (on_b, _),
    ):
        await wait_presence(on_b, lambda p: p["mirror"] == "connected", timeout=10)
        async with httpx.AsyncClient(headers=staff_headers("admin")) as client:
            response = await client.delete(f"{node_b.http}/sessions/{session_id}")
        assert response.status_code == 200, response.text
        assert (await closed_with(mirror))[0] == 4004
        assert (await closed_with(on_b))[0] == 4004


async def test_mirror_moving_to_another_node_replaces_its_old_connection(
    two_nodes: tuple[HubProcess, HubProcess], database_url: str
) -> None:
    """A device reconnects through the balancer to B while its old socket on A is still
    open: the old one is closed as replaced, the new one continues after what is stored."""
    node_a, node_b = two_nodes
    session_id = await create_session(node_a.http)
    async with open_client(node_b.ws, session_id, "watch") as (on_b, _):
        async with open_client(node_a.ws, session_id, "mirror") as (old, _):
            await send(old, {"type": "batch", "frames": [metrics_frame(s) for s in range(1, 31)]})
            await wait_acked(old, 30)
            async with open_client(node_b.ws, session_id, "mirror") as (new, welcome):
                assert welcome["last_seq"] == 30 and welcome["acked_seq"] == 30
                assert (await closed_with(old))[0] == 4001
                frames = [metrics_frame(s) for s in range(31, 61)]
                await send(new, {"type": "batch", "frames": frames})
                await wait_acked(new, 60)
        seqs: list[int] = []
        async with asyncio.timeout(10):
            while len(seqs) < 60:
                message = await recv(on_b)
                if message["type"] == "metrics":
                    seqs.append(message["seq"])
    assert seqs == list(range(1, 61))
    assert await stored_seqs(database_url, session_id) == list(range(1, 61))


@pytest.mark.parametrize("lost", ["frame", "heartbeat"])
async def test_a_gap_that_storage_cannot_fill_closes_watchers_to_resume(
    start_hub: StartHub, database_url: str, lost: str
) -> None:
    """A node hears of frames that never reach storage (here: a publisher announces seqs up
    to 1000 that nobody stores). It must not leave its watchers silently behind: after the
    gap timeout they are closed with 4009, and a resume works."""
    node_b = await start_hub(
        HUB_BACKPLANE="postgres",
        HUB_BACKPLANE_HEARTBEAT_MS=str(HEARTBEAT_MS),
        HUB_BACKPLANE_GAP_TIMEOUT_MS="500",
    )
    session_id = await create_session(node_b.http)
    channel = "mh_" + uuid.UUID(session_id).hex
    frame = orjson.dumps(metrics_frame(1000)).decode()
    message = f"f elsewhere 1000 {frame}" if lost == "frame" else "p elsewhere 1000 0 0 1.0"
    async with open_client(node_b.ws, session_id, "watch") as (on_b, _):
        assert (await recv(on_b))["type"] == "snapshot"
        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            await conn.execute("SELECT pg_notify($1, $2)", channel, message)
        finally:
            await conn.close()
        code, messages = await closed_with(on_b, timeout=10)
    assert code == closecodes.RESYNC.code
    assert not [m for m in messages if m["type"] == "metrics"]  # nothing out of order either
    async with open_client(node_b.ws, session_id, "watch", since=0) as (_again, welcome):
        assert welcome["last_seq"] == 0  # a fresh start from storage
    assert "Traceback" not in node_b.logs()
