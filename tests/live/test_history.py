"""What the stream writes, read back over HTTP while and after it runs; `end`; dead mirrors."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    HubProcess,
    create_session,
    metrics_frame,
    new_task_id,
    open_client,
    recv,
    recv_until,
    send,
    staff_headers,
    task_frame,
    token,
    wait_acked,
)


async def test_live_tasks_series_and_end(hub_server: HubProcess) -> None:
    session_id = await create_session(hub_server.http)
    task_id = new_task_id()
    async with httpx.AsyncClient(base_url=hub_server.http, headers=staff_headers()) as http:
        async with open_client(hub_server.ws, session_id, "mirror") as (mirror, welcome):
            assert welcome["acked_seq"] == 0
            await send(mirror, task_frame(1, task_id, "started", "in_progress"))
            for seq in range(2, 12):
                frame = metrics_frame(seq, accuracy=seq / 100)
                frame["task_id"] = task_id
                await send(mirror, frame)
            await wait_acked(mirror, 11)

            # While the session is live, its task is visible over HTTP.
            tasks = (await http.get(f"/sessions/{session_id}/tasks")).json()
            assert [(t["id"], t["status"]) for t in tasks] == [(task_id, "in_progress")]
            session = (await http.get(f"/sessions/{session_id}")).json()
            assert session["mirror_connected_at"] is not None and session["ended_at"] is None

            series = (
                await http.get(f"/sessions/{session_id}/series", params={"metric": "accuracy"})
            ).json()
            assert [p["seq"] for p in series["points"]] == list(range(2, 12))
            assert [p["value"] for p in series["points"]] == [s / 100 for s in range(2, 12)]
            bucketed = (
                await http.get(
                    f"/sessions/{session_id}/series",
                    params={"metric": "accuracy", "bucket_ms": "3600000"},
                )
            ).json()
            assert len(bucketed["points"]) in (1, 2)  # an hour bucket (2 if the hour turned)
            assert sum(p["value"] for p in bucketed["points"]) > 0

            await send(
                mirror,
                task_frame(
                    12,
                    task_id,
                    "finished",
                    "success",
                    duration_seconds=9.5,
                    metrics={"accuracy": 0.95},
                ),
            )
            await send(mirror, {"type": "end", "last_seq": 12})
            ended = await recv_until(mirror, "ended")
            assert ended["last_seq"] == 12
            try:
                await recv(mirror)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1000

        session = (await http.get(f"/sessions/{session_id}")).json()
        assert session["ended_at"] is not None
        (task,) = (await http.get(f"/sessions/{session_id}/tasks")).json()
        assert (task["status"], task["duration_seconds"]) == ("success", 9.5)
        assert task["metrics"] == {"accuracy": 0.95}
        results = (await http.get(f"/tasks/{task_id}/metrics")).json()
        assert [(m["name"], m["value"]) for m in results] == [("accuracy", 0.95)]

    # An ended session takes no more writing; a watcher gets its history and `ended`.
    async with connect(f"{hub_server.ws}/ws/sessions/{session_id}/mirror") as ws:
        await send(ws, {"type": "hello", "token": token("mirror", session_id)})
        try:
            await recv(ws)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4005
    async with open_client(hub_server.ws, session_id, "watch", since=0) as (watcher, _):
        seqs = []
        while (message := await recv(watcher))["type"] != "ended":
            seqs.append(message["seq"])
        assert seqs == list(range(1, 13))


async def test_dead_mirror_is_found_by_ping(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_WS_PING_INTERVAL_S="1", HUB_WS_PING_TIMEOUT_S="1")
    session_id = await create_session(hub.http)
    async with open_client(hub.ws, session_id, "watch") as (watcher, _):
        assert (await recv(watcher))["presence"]["mirror"] == "disconnected"
        # A mirror whose device froze: the socket stays open but nothing answers pings.
        sock = socket.create_connection(("127.0.0.1", hub.port))
        dead = await connect(f"{hub.ws}/ws/sessions/{session_id}/mirror", sock=sock)
        await send(dead, {"type": "hello", "token": token("mirror", session_id)})
        assert (await recv_until(watcher, "presence"))["mirror"] == "connected"
        dead.transport.pause_reading()  # stops reading, so no pong is ever sent
        presence = await recv_until(watcher, "presence", timeout=15)
        assert presence["mirror"] == "disconnected"
        dead.transport.abort()
