"""Acceptance: the hub's log never carries a child's name or measures, nor a credential.

A full live run against a hub at HUB_LOG_LEVEL=debug (the most it ever logs): two mirrors
streaming with task events, watchers (live and resuming from storage), history reads, bad
input that echoes the data back to the client, and one erasure. Then its whole log is read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.live import (
    TOKENS,
    HubProcess,
    metrics_frame,
    new_task_id,
    open_client,
    recv,
    send,
    task_frame,
    wait_acked,
)

CHILDREN = [
    {
        "child_name": "Zebulon Quixote-Marchetti",
        "child_age": 11,
        "child_height_cm": 133.7,
        "child_weight_kg": 27.3,
    },
    {
        "child_name": "Philippa Oyelaran-Szczepanski",
        "child_age": 9,
        "child_height_cm": 128.9,
        "child_weight_kg": 25.1,
    },
]
# Strings that would only be in the log if a child's record were: the values, and the field
# names a dumped row or body would carry.
FIELD_NAMES = ["child_name", "child_age", "child_height_cm", "child_weight_kg"]


def number(value: float) -> re.Pattern[str]:
    """`value` as a number of its own, not a part of a longer one (133.7, not 1133.75)."""
    return re.compile(rf"(?<![\d.]){re.escape(str(value))}(?![\d])")


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> int:
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code


async def stream_session(
    hub: HubProcess, session_id: str, mirror_token: str, watcher_token: str
) -> str:
    """Mirror and watchers of one session: tasks with results, metrics; returns a task id."""
    task_id = new_task_id()
    async with (
        open_client(hub.ws, session_id, "mirror", token=mirror_token) as (mirror, _),
        open_client(hub.ws, session_id, "watch", token=watcher_token) as (watcher, welcome),
    ):
        assert welcome["role"] == "watcher"
        snapshot = await recv(watcher)
        assert snapshot["type"] == "snapshot"
        # The snapshot does carry the child's record to the watcher (that is its job).
        assert snapshot["session"]["child_name"] in {c["child_name"] for c in CHILDREN}
        await send(mirror, task_frame(1, task_id, "started", "in_progress"))
        for seq in range(2, 30):
            frame = metrics_frame(seq, accuracy=seq / 100, stability=0.5)
            frame["task_id"] = task_id
            await send(mirror, frame)
        await send(
            mirror,
            task_frame(
                30, task_id, "finished", "success", duration_seconds=4.5, metrics={"accuracy": 0.9}
            ),
        )
        await wait_acked(mirror, 30)
        # Read everything: a client closing with a full receive queue waits out its
        # close_timeout (websockets pauses reading), which would only slow the test.
        assert await watched(watcher) == list(range(1, 31))
    # A watcher resuming from the start reads back from storage and memory.
    async with open_client(hub.ws, session_id, "watch", token=watcher_token, since=0) as (
        resumed,
        _,
    ):
        assert await watched(resumed) == list(range(1, 31))
    return task_id


async def watched(watcher: ClientConnection, last: int = 30) -> list[int]:
    seqs: list[int] = []
    while not seqs or seqs[-1] < last:
        message = await recv(watcher)
        if message["type"] in ("metrics", "task"):
            seqs.append(message["seq"])
    return seqs


async def test_log_has_no_child_data_and_no_credentials(
    start_hub: Callable[..., Awaitable[HubProcess]],
) -> None:
    hub = await start_hub(HUB_LOG_LEVEL="debug")
    admin_token = TOKENS.issue("admin", "privacy-admin", 3600)
    therapist_token = TOKENS.issue("therapist", "privacy-therapist", 3600)
    secrets: list[str] = [admin_token, therapist_token]
    sessions: list[tuple[str, str]] = []
    async with httpx.AsyncClient(
        base_url=hub.http, headers={"Authorization": f"Bearer {therapist_token}"}
    ) as http:
        for child in CHILDREN:
            created = await http.post("/sessions", json=child)
            assert created.status_code == 201, created.text
            sessions.append((created.json()["id"], created.json()["mirror_token"]))
            secrets.append(created.json()["mirror_token"])
            # Refused input that names the child: the 422 echoes nothing into the log.
            bad: dict[str, Any] = {**child, "child_age": 99, "child_height_cm": -1}
            refused = await http.post("/sessions", json=bad)
            assert refused.status_code == 422, refused.text
            refused = await http.post("/sessions", content=str(child).encode())
            assert refused.status_code == 422, refused.text

        task_ids = await asyncio.gather(
            *(
                stream_session(hub, session_id, mirror_token, therapist_token)
                for session_id, mirror_token in sessions
            )
        )

        # History reads, by staff and by a session's own mirror.
        for (session_id, mirror_token), task_id in zip(sessions, task_ids, strict=True):
            own = {"Authorization": f"Bearer {mirror_token}"}
            session = await http.get(f"/sessions/{session_id}", headers=own)
            assert session.json()["child_name"] in {c["child_name"] for c in CHILDREN}
            assert (await http.get(f"/sessions/{session_id}/tasks")).status_code == 200
            assert (await http.get(f"/tasks/{task_id}/metrics", headers=own)).status_code == 200
            series = await http.get(f"/sessions/{session_id}/series", params={"metric": "accuracy"})
            assert len(series.json()["points"]) == 28 + 1  # the frames and the task's result
            # Writes over HTTP, and an update of the child's data that does not exist (405).
            task = await http.post(f"/sessions/{session_id}/tasks", json={"task_name": "jump"})
            assert task.status_code == 201
            assert (await http.put(f"/sessions/{session_id}", json=CHILDREN[0])).status_code == 405
        listed = await http.get("/sessions", params={"limit": 200})
        assert {c["child_name"] for c in CHILDREN} <= {
            s["child_name"] for s in listed.json()["items"]
        }
        # Refused credentials: their text must not be logged either.
        forged = admin_token[:-4] + ("AAAA" if not admin_token.endswith("AAAA") else "BBBB")
        secrets.append(forged)
        assert (
            await http.get("/sessions", headers={"Authorization": f"Bearer {forged}"})
        ).status_code == 401

        # One erasure while the session is live.
        erased_id, erased_mirror = sessions[0]
        async with (
            open_client(hub.ws, erased_id, "mirror", token=erased_mirror) as (mirror, _),
            open_client(hub.ws, erased_id, "watch", token=therapist_token) as (watcher, _),
        ):
            await send(mirror, metrics_frame(31))
            await wait_acked(mirror, 31)
            admin = {"Authorization": f"Bearer {admin_token}"}
            assert (await http.delete(f"/sessions/{erased_id}", headers=admin)).status_code == 200
            assert await closed_with(mirror) == 4004
            assert await closed_with(watcher) == 4004
        audit = await http.get("/audit", headers={"Authorization": f"Bearer {admin_token}"})
        assert audit.status_code == 200

    await hub.stop()  # everything it would log is written
    log = hub.logs()

    # The log is a real debug log of this run (so the checks below could fail).
    assert " DEBUG " in log and '< TEXT \'{"type":"hello"' in log, log[-2000:]
    assert f"mirror connected session={sessions[1][0]}" in log
    assert "GET /sessions/" in log and "/ws/sessions/" in log

    leaks = []
    for child in CHILDREN:
        name = str(child["child_name"])
        for needle in (name, *name.replace("-", " ").split()):
            if needle.lower() in log.lower():
                leaks.append(needle)
        for key in ("child_height_cm", "child_weight_kg"):
            if number(float(child[key])).search(log):
                leaks.append(str(child[key]))
    leaks += [f for f in FIELD_NAMES if f in log]
    for secret in secrets:
        if secret in log:
            leaks.append(f"a token ending {secret[-6:]}")
        signature = secret.rsplit(".", 1)[-1]
        if len(signature) > 20 and signature in log:
            leaks.append(f"the signature of a token ending {secret[-6:]}")
    context = {leak: _around(log, leak) for leak in leaks}
    assert not leaks, context


def _around(log: str, needle: str) -> str:
    at = log.find(needle)
    return log[max(0, at - 200) : at + 200] if at >= 0 else ""
