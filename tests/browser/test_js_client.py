"""The browser/Node client module (clients/js/mirror-hub.js) in Node, against real hubs.

Each test runs `node --test` on a file of clients/js/test/ with the hub's URL and credentials
in the environment, and asserts on Node's exit status (its output is shown on failure); the
hub side (kills, restarts, storage) is done here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.support import ROOT
from tests.support.js import CLIENT_DIR, node_command, run_node_tests, stored_seqs
from tests.support.live import HubProcess, create_session, staff_headers, token

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
async def test_node_mirror_survives_two_sigkills(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    hub = await start_hub()
    session_id = await create_session(hub.http)
    kills: list[str] = []
    restarts: list[asyncio.Task[HubProcess]] = []

    async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hub
        while line := await reader.readline():
            kills.append(line.decode().strip())
            hub.kill()  # SIGKILL: no flush, no goodbye
            restart = asyncio.create_task(start_hub(port=hub.port))
            restarts.append(restart)
            hub = await restart
        writer.close()

    control = await asyncio.start_server(on_control, "127.0.0.1", 0)
    port = control.sockets[0].getsockname()[1]
    try:
        output = await run_node_tests(
            CLIENT_DIR / "test" / "crash.live.test.mjs",
            env={
                "HUB_URL": hub.ws,
                "SESSION_ID": session_id,
                "MIRROR_TOKEN": token("mirror", session_id),
                "CONTROL_PORT": str(port),
                "FRAMES": "3000",
            },
            timeout=150,
        )
    finally:
        control.close()
        await control.wait_closed()
    print(output)
    assert len(kills) == 2, kills
    assert await stored_seqs(database_url, session_id) == list(range(1, 3001))
    assert "Traceback" not in hub.logs()


async def test_node_mirror_resends_only_after_welcome_last_seq(
    start_hub: Callable[..., Awaitable[HubProcess]], database_url: str
) -> None:
    # The hub commits (and acks) only every 1.5 s, so the client's reconnect finds frames
    # accepted but not committed: welcome.acked_seq < welcome.last_seq.
    hub = await start_hub(HUB_FLUSH_INTERVAL_MS="1500", HUB_FLUSH_MAX_FRAMES="100000")
    session_id = await create_session(hub.http)
    await run_node_tests(
        CLIENT_DIR / "test" / "resume.live.test.mjs",
        env={
            "HUB_URL": hub.ws,
            "SESSION_ID": session_id,
            "MIRROR_TOKEN": token("mirror", session_id),
        },
    )
    assert await stored_seqs(database_url, session_id) == list(range(1, 111))


async def test_node_contract(hub_server: HubProcess, database_url: str) -> None:
    """Bad use fails early; an expired token asks for a new one; backpressure never drops."""
    expired = await create_session(hub_server.http)
    output = await run_node_tests(
        CLIENT_DIR / "test" / "contract.live.test.mjs",
        env={
            "HUB_URL": hub_server.http,
            "STAFF_TOKEN": token("therapist"),
            "EXPIRED_SESSION_ID": expired,
            "EXPIRED_TOKEN": token("mirror", expired, ttl_s=-60),
            "FRESH_TOKEN": token("mirror", expired),
        },
    )
    print(output)
    async with httpx.AsyncClient(headers=staff_headers()) as http:
        ended = (await http.get(f"{hub_server.http}/sessions/{expired}")).json()
    assert ended["ended_at"] is not None, "the renewed token did not stream and end the session"
    assert await stored_seqs(database_url, expired) == [1, 2, 3]


async def test_declarations_match_the_module_and_the_served_copy() -> None:
    await run_node_tests(CLIENT_DIR / "test" / "exports.test.mjs", env={})


def test_declarations_compile_against_real_use() -> None:
    """`tsc --noEmit` over clients/js/test/types.check.ts (right use compiles, wrong use is an
    error). .ci/run installs TypeScript; elsewhere: cd clients/js && npm install --no-save
    typescript@5."""
    tsc = CLIENT_DIR / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        message = "TypeScript not installed in clients/js (npm install --no-save typescript@5)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [str(tsc), "-p", str(CLIENT_DIR)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_node_example_streams_and_ends_a_session(hub_server: HubProcess) -> None:
    """client_examples/mirror_client.mjs as the README shows it (creating the session)."""
    proc = await asyncio.create_subprocess_exec(
        *node_command(),
        str(ROOT / "client_examples" / "mirror_client.mjs"),
        *("--url", hub_server.http, "--token", token("therapist"), "--seconds", "1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "ended at seq 32" in text, text


async def test_hub_serves_the_module_and_its_types(hub_server: HubProcess) -> None:
    async with httpx.AsyncClient() as http:
        for name, media in (
            ("mirror-hub.js", "text/javascript"),
            ("mirror-hub.d.ts", "typescript"),
        ):
            response = await http.get(f"{hub_server.http}/client/{name}")
            assert response.status_code == 200
            assert media in response.headers["content-type"]  # browsers refuse other types
            assert response.content == (CLIENT_DIR / name).read_bytes()
        page = await http.get(f"{hub_server.http}/demo/mirror")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp
